//! Filesystem isolation: preopens only, read-only files, a fresh `/tmp`, no escapes.

use std::sync::Arc;

use wasmesh_runtime::{Config, FileSource, Mount, Outcome, RunSpec, RuntimeError, Sandbox};
use wasmesh_test_support::{TEST_GUEST, guest_bytes};

use crate::{guest, guest_with, sandbox, stderr, stdout};

fn input_files() -> Mount {
    Mount::files(
        "/input",
        vec![
            ("a.txt".into(), FileSource::Bytes(Arc::from(&b"alpha"[..]))),
            (
                "nested/deeper/b.txt".into(),
                FileSource::Bytes(Arc::from(&b"beta"[..])),
            ),
        ],
    )
}

#[test]
fn mounted_files_are_readable_where_they_were_put() {
    let spec = RunSpec::new().mount(input_files());
    assert_eq!(
        stdout(&guest_with(&["read-file", "/input/a.txt"], spec.clone())),
        "alpha"
    );
    assert_eq!(
        stdout(&guest_with(
            &["read-file", "/input/nested/deeper/b.txt"],
            spec.clone()
        )),
        "beta"
    );
    assert_eq!(
        stdout(&guest_with(&["list-dir", "/input"], spec)),
        "a.txt\nnested\n"
    );
}

#[test]
fn mounted_files_are_read_only() {
    let report = guest_with(
        &["write-file", "/input/a.txt", "overwritten"],
        RunSpec::new().mount(input_files()),
    );
    assert_eq!(report.outcome, Outcome::Exited(3), "{}", stdout(&report));
    let again = guest_with(
        &["read-file", "/input/a.txt"],
        RunSpec::new().mount(input_files()),
    );
    assert_eq!(stdout(&again), "alpha");
}

#[test]
fn host_files_are_linked_in_without_being_changed() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.bin");
    std::fs::write(&source, b"from the store").unwrap();
    let mount = Mount::files(
        "/worker",
        vec![("data/source.bin".into(), FileSource::Path(source.clone()))],
    );
    let spec = RunSpec::new().mount(mount);
    assert_eq!(
        stdout(&guest_with(
            &["read-file", "/worker/data/source.bin"],
            spec.clone()
        )),
        "from the store"
    );
    let write = guest_with(&["write-file", "/worker/data/source.bin", "changed"], spec);
    assert_eq!(write.outcome, Outcome::Exited(3));
    assert_eq!(std::fs::read(&source).unwrap(), b"from the store");
}

#[test]
fn nothing_outside_the_preopens_is_reachable() {
    for path in [
        "/etc/passwd",
        "../etc/passwd",
        "/tmp/../../etc/passwd",
        "/input/../../../etc/passwd",
        "/proc/self/environ",
    ] {
        let report = guest_with(&["read-file", path], RunSpec::new().mount(input_files()));
        assert_eq!(
            report.outcome,
            Outcome::Exited(3),
            "{path} was readable: {}",
            stdout(&report)
        );
        assert!(report.stdout.is_empty());
    }
    let listing = guest(&["list-dir", "/"]);
    assert_eq!(
        listing.outcome,
        Outcome::Exited(3),
        "the root is not a preopen: {}",
        stdout(&listing)
    );
}

#[test]
fn symlinks_cannot_lead_out_of_tmp() {
    // A link to an absolute host path, and one climbing out with `..`: each may be
    // created, but following it must fail.
    for (target, read) in [
        ("/etc/passwd", "/tmp/link"),
        ("../../../../etc", "/tmp/link/passwd"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let spec = RunSpec::new()
            .without_tmp()
            .mount(Mount::dir(dir.path(), "/tmp", true));
        let _ = guest_with(&["symlink", target, "link"], spec.clone());
        let report = guest_with(&["read-file", read], spec);
        assert_eq!(
            report.outcome,
            Outcome::Exited(3),
            "{read} -> {target} escaped: {}",
            stdout(&report)
        );
        assert!(stderr(&report).contains("read"), "{}", stderr(&report));
    }
}

#[test]
fn a_reused_tmp_is_emptied_of_nested_directories_and_links() {
    // Runs share pooled /tmp directories one at a time, so whatever one leaves must be
    // gone before the next. /tmp is the first (fd 3) preopen when there are no mounts.
    let report = guest(&["write-file", "/tmp/keep", "x"]);
    assert_eq!(report.outcome, Outcome::Exited(0));
    let link = guest(&["symlink", "keep", "link"]);
    assert_eq!(link.outcome, Outcome::Exited(0), "{}", stderr(&link));
    for _ in 0..4 {
        assert_eq!(stdout(&guest(&["list-dir", "/tmp"])), "\n");
    }
}

#[test]
fn tmp_is_writable_and_fresh_for_every_run() {
    let write = guest(&["write-file", "/tmp/state.txt", "left behind"]);
    assert_eq!(write.outcome, Outcome::Exited(0), "{}", stderr(&write));
    let listing = guest(&["list-dir", "/tmp"]);
    assert_eq!(listing.outcome, Outcome::Exited(0));
    assert_eq!(stdout(&listing), "\n", "a later run sees an empty /tmp");
}

#[test]
fn scratch_space_is_emptied_after_each_run_and_removed_with_the_sandbox() {
    let scratch = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(Config {
        scratch_dir: Some(scratch.path().to_path_buf()),
        max_instances: 2,
        ..Config::default()
    })
    .unwrap();
    let module = sandbox.load(&guest_bytes(TEST_GUEST)).unwrap();
    let files_in =
        |dir: &std::path::Path| -> usize { walk(dir).into_iter().filter(|p| p.is_file()).count() };
    for _ in 0..3 {
        let spec = RunSpec::new()
            .mount(input_files())
            .args(["write-file", "/tmp/x", "y"]);
        let report = sandbox.run(&module, spec).unwrap();
        assert_eq!(report.outcome, Outcome::Exited(0));
        assert_eq!(
            files_in(scratch.path()),
            0,
            "no file of the run is left behind"
        );
    }
    drop(sandbox);
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        }
        found.push(path);
    }
    found
}

#[test]
fn a_writable_host_directory_is_shared_with_the_host() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.txt"), "host data").unwrap();
    let spec = RunSpec::new().mount(Mount::dir(dir.path(), "/data", true));
    assert_eq!(
        stdout(&guest_with(&["read-file", "/data/in.txt"], spec.clone())),
        "host data"
    );
    assert_eq!(
        guest_with(&["write-file", "/data/out.txt", "guest data"], spec).outcome,
        Outcome::Exited(0)
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.txt")).unwrap(),
        "guest data"
    );
}

#[test]
fn a_read_only_host_directory_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let spec = RunSpec::new().mount(Mount::dir(dir.path(), "/data", false));
    assert_eq!(
        guest_with(&["write-file", "/data/out.txt", "x"], spec).outcome,
        Outcome::Exited(3)
    );
    assert!(!dir.path().join("out.txt").exists());
}

#[test]
fn bad_mounts_are_refused_before_running() {
    let module = crate::module(TEST_GUEST);
    let escaping = Mount::files(
        "/input",
        vec![(
            "../escape.txt".into(),
            FileSource::Bytes(Arc::from(&b"x"[..])),
        )],
    );
    for (mount, why) in [
        (escaping, "climbs out"),
        (
            Mount::files(
                "/input",
                vec![("/abs.txt".into(), FileSource::Bytes(Arc::from(&b"x"[..])))],
            ),
            "absolute",
        ),
        (Mount::files("relative", vec![]), "not absolute"),
        (Mount::files("/tmp", vec![]), "mounted twice"),
    ] {
        let err = sandbox()
            .run(&module, RunSpec::new().mount(mount).arg("noop"))
            .unwrap_err();
        assert!(
            matches!(&err, RuntimeError::InvalidMount(m) if m.contains(why)),
            "{err}"
        );
    }
    let missing = Mount::files(
        "/input",
        vec![("a".into(), FileSource::Path("/definitely/not/here".into()))],
    );
    let err = sandbox()
        .run(&module, RunSpec::new().mount(missing).arg("noop"))
        .unwrap_err();
    assert!(matches!(err, RuntimeError::InvalidMount(_)), "{err}");
}

#[test]
fn filling_tmp_past_its_quota_is_output_exceeded() {
    let unlimited_fuel = wasmesh_runtime::LimitsRequest {
        fuel: Some(u64::MAX),
        timeout_ms: Some(5_000),
        ..Default::default()
    };
    let over = crate::roomy_guest(
        &["fill-tmp", &(8u64 << 20).to_string()],
        RunSpec::new().limits(unlimited_fuel),
    );
    assert_eq!(over.outcome, Outcome::OutputExceeded, "{}", stderr(&over));
    assert!(
        over.usage.wall < std::time::Duration::from_secs(5),
        "stopped by the quota, not the clock"
    );

    let short = wasmesh_runtime::LimitsRequest {
        timeout_ms: Some(300),
        ..unlimited_fuel
    };
    let under = crate::roomy_guest(
        &["fill-tmp", &(1u64 << 20).to_string()],
        RunSpec::new().limits(short),
    );
    assert_eq!(
        under.outcome,
        Outcome::TimedOut,
        "1 MiB is within the 4 MiB quota"
    );
    let listing = crate::roomy_guest(&["list-dir", "/tmp"], RunSpec::new());
    assert_eq!(stdout(&listing), "\n", "the filled /tmp was emptied");
}

/// Regression (issue 10, item 6): the `/tmp` walk went by path, so a subtree nested
/// past PATH_MAX counted as 0 bytes and a guest wrote past its quota unhindered.
#[test]
fn a_tree_nested_past_path_max_counts_against_the_tmp_quota() {
    let unlimited_fuel = wasmesh_runtime::LimitsRequest {
        fuel: Some(u64::MAX),
        timeout_ms: Some(5_000),
        ..Default::default()
    };
    // 30 levels of 200-byte names (6,000 bytes of path) and 8 MiB at the bottom.
    let over = crate::roomy_guest(
        &["deep-tmp", "30", &(8u64 << 20).to_string()],
        RunSpec::new().limits(unlimited_fuel),
    );
    assert_eq!(over.outcome, Outcome::OutputExceeded, "{}", stderr(&over));
    assert!(
        over.usage.wall < std::time::Duration::from_secs(5),
        "stopped by the quota, not the clock"
    );
    // Nesting deeper than the walk goes is itself a breach, whatever the bytes.
    let deep = crate::roomy_guest(
        &["deep-tmp", "100", "1"],
        RunSpec::new().limits(unlimited_fuel),
    );
    assert_eq!(deep.outcome, Outcome::OutputExceeded, "{}", stderr(&deep));
    let listing = crate::roomy_guest(&["list-dir", "/tmp"], RunSpec::new());
    assert_eq!(stdout(&listing), "\n", "the deep /tmp was emptied");
}
