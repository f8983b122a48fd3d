struct Custom;

#[wasmesh_guest::job]
fn run(input: Custom) {
    let _ = input;
}
