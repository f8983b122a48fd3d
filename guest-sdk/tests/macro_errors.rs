//! Misuse of `#[job]` fails to compile with a message that points at the mistake.

#[test]
fn job_attribute_misuse_is_reported_clearly() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
