//! `wasmesh exec`: exit codes, stdin, --dir, --env, limits and --json, on real guests.

use serde_json::Value;
use wasmesh_test_support::{TEST_GUEST, guest_path};

use crate::{err, out, wasmesh};

fn guest() -> String {
    guest_path(TEST_GUEST).display().to_string()
}

#[test]
fn stdout_stderr_and_exit_code_pass_through() {
    let echo = wasmesh(&["exec", &guest(), "echo"], b"piped in");
    assert_eq!(echo.status.code(), Some(0), "{}", err(&echo));
    assert_eq!(out(&echo), "piped in");

    let exit = wasmesh(&["exec", &guest(), "exit", "42"], b"");
    assert_eq!(exit.status.code(), Some(42));

    let failing = wasmesh(&["exec", &guest(), "read-file", "/etc/passwd"], b"");
    assert_eq!(failing.status.code(), Some(3));
    assert!(
        err(&failing).contains("read /etc/passwd"),
        "{}",
        err(&failing)
    );
}

#[test]
fn input_comes_from_a_file_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.bin");
    std::fs::write(&file, b"from a file").unwrap();
    let output = wasmesh(
        &["exec", &guest(), "echo", "--input", file.to_str().unwrap()],
        b"ignored stdin",
    );
    assert_eq!(out(&output), "from a file");
}

#[test]
fn guest_arguments_with_dashes_go_after_a_double_dash() {
    let output = wasmesh(&["exec", &guest(), "--", "args", "--verbose", "-x"], b"");
    assert_eq!(out(&output), "--verbose\n-x\n");
}

#[test]
fn dir_preopens_a_host_directory_read_write() {
    let dir = tempfile::tempdir().unwrap();
    let mapping = format!("{}::/data", dir.path().display());
    let output = wasmesh(
        &[
            "exec",
            &guest(),
            "--dir",
            &mapping,
            "write-file",
            "/data/out.txt",
            "written by the guest",
        ],
        b"",
    );
    assert_eq!(output.status.code(), Some(0), "{}", err(&output));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.txt")).unwrap(),
        "written by the guest"
    );

    let bad = wasmesh(&["exec", &guest(), "--dir", "no-such-dir", "noop"], b"");
    assert_eq!(bad.status.code(), Some(2));
    assert!(err(&bad).contains("not a directory"), "{}", err(&bad));
}

/// Regression (issue 10, WASI conformance): `--dir HOST::/` was refused ("not a plain
/// absolute path"), which is how conformance suites mount a test's directory.
#[test]
fn a_directory_can_be_preopened_at_the_root() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), b"at the root").unwrap();
    let mapping = format!("{}::/", dir.path().display());
    let read = wasmesh(
        &["exec", &guest(), "--dir", &mapping, "read-file", "/a.txt"],
        b"",
    );
    assert_eq!(read.status.code(), Some(0), "{}", err(&read));
    assert_eq!(out(&read), "at the root");
    let listed = wasmesh(&["exec", &guest(), "--dir", &mapping, "list-dir", "/"], b"");
    assert_eq!(out(&listed).trim(), "a.txt", "{}", err(&listed));
    // `--dir HOST` alone mounts it under its own name, as `wasmtime run` does.
    let same = dir.path().display().to_string();
    let plain = wasmesh(
        &[
            "exec",
            &guest(),
            "--dir",
            &same,
            "read-file",
            &format!("{same}/a.txt"),
        ],
        b"",
    );
    assert_eq!(out(&plain), "at the root", "{}", err(&plain));
}

/// Regression (issue 10, WASI conformance): `exec` always preopened a scratch `/tmp`
/// as descriptor 3, so a program probing descriptor 3 found a directory there.
#[test]
fn no_preopen_is_added_that_was_not_asked_for() {
    let bare = wasmesh(&["exec", &guest(), "probe-fd", "3"], b"");
    assert_eq!(out(&bare).trim(), "8", "fd 3 must be EBADF: {}", err(&bare));
    let with_tmp = wasmesh(&["exec", &guest(), "--tmp", "probe-fd", "3"], b"");
    assert_eq!(out(&with_tmp).trim(), "0", "--tmp preopens /tmp as fd 3");
    let written = wasmesh(
        &["exec", &guest(), "--tmp", "write-file", "/tmp/x", "y"],
        b"",
    );
    assert_eq!(written.status.code(), Some(0), "{}", err(&written));
    let refused = wasmesh(&["exec", &guest(), "write-file", "/tmp/x", "y"], b"");
    assert_ne!(refused.status.code(), Some(0), "no /tmp without --tmp");
}

#[test]
fn env_sets_only_what_is_given() {
    let output = wasmesh(
        &["exec", &guest(), "--env", "MODE=fast", "env", "MODE"],
        b"",
    );
    assert_eq!(out(&output), "fast\n");
    let count = wasmesh(&["exec", &guest(), "--env", "A=1", "env-count"], b"");
    assert_eq!(out(&count), "1\n");
}

#[test]
fn limits_end_runs_with_their_own_status_and_message() {
    let fuel = wasmesh(&["exec", &guest(), "--fuel", "1000000", "spin"], b"");
    assert_eq!(fuel.status.code(), Some(125));
    assert!(err(&fuel).contains("ran out of fuel"), "{}", err(&fuel));

    let time = wasmesh(
        &["exec", &guest(), "--timeout", "300ms", "sleep", "60000"],
        b"",
    );
    assert_eq!(time.status.code(), Some(125));
    assert!(err(&time).contains("timed out"), "{}", err(&time));

    let memory = wasmesh(
        &["exec", &guest(), "--memory", "8MiB", "alloc", "33554432"],
        b"",
    );
    assert_eq!(memory.status.code(), Some(125));
    assert!(err(&memory).contains("memory limit"), "{}", err(&memory));

    let trap = wasmesh(&["exec", &guest(), "panic", "oh no"], b"");
    assert_eq!(trap.status.code(), Some(134));
    assert!(err(&trap).contains("oh no"), "{}", err(&trap));
}

#[test]
fn json_reports_outcome_and_usage() {
    let output = wasmesh(
        &[
            "exec",
            &guest(),
            "--json",
            "--output-limit",
            "100",
            "big-output",
            "101",
        ],
        b"",
    );
    assert_eq!(output.status.code(), Some(125));
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    assert_eq!(report["outcome"], "output_exceeded");
    assert_eq!(report["success"], false);
    assert!(report["usage"]["fuel"].as_u64().unwrap() > 0);
    assert!(report["usage"]["peak_memory_bytes"].as_u64().unwrap() > 0);

    let ok = wasmesh(
        &[
            "exec",
            &guest(),
            "--json",
            "emit",
            "Alert",
            r#"{"level":3}"#,
        ],
        b"",
    );
    let report: Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(report["outcome"], "exited");
    assert_eq!(report["exit_code"], 0);
    assert_eq!(report["stdout"], "emitted Alert\n");
    assert_eq!(report["events"][0]["event_type"], "Alert");
    assert_eq!(report["events"][0]["fields"]["level"], 3);
}

#[test]
fn the_sieve_example_counts_primes() {
    let sieve = wasmesh_test_support::guest_path("sieve");
    for (n, primes) in [("100", "25\n"), ("1000000", "78498\n")] {
        let output = wasmesh(&["exec", sieve.to_str().unwrap(), n], b"");
        assert!(output.status.success(), "{}", err(&output));
        assert_eq!(out(&output), primes);
    }
    let bad = wasmesh(&["exec", sieve.to_str().unwrap(), "lots"], b"");
    assert_eq!(bad.status.code(), Some(2));
}

/// Regression (issue 13): `wasmesh exec` compiled the module on every run; like
/// `wasmtime run` it now keeps compiled modules in a cache directory.
#[test]
fn exec_keeps_compiled_modules_between_runs() {
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().to_str().unwrap();
    let run = |extra: &[&str]| -> Value {
        let mut args = vec!["exec", "--json", "--cache-dir", dir];
        args.extend_from_slice(extra);
        let guest = guest();
        args.extend([guest.as_str(), "args", "cached"]);
        let output = wasmesh(&args, b"");
        assert!(output.status.success(), "{}", err(&output));
        serde_json::from_slice(&output.stdout).unwrap()
    };
    assert_eq!(run(&[])["module_cache"], "compiled");
    let again = run(&[]);
    assert_eq!(again["module_cache"], "disk_hit");
    assert_eq!(again["stdout"], "cached\n");
    assert_eq!(run(&["--no-cache"])["module_cache"], "off");
    // A corrupted artifact is thrown away and the module compiled again.
    for entry in walk(cache.path()) {
        std::fs::write(entry, b"not an artifact").unwrap();
    }
    assert_eq!(run(&[])["module_cache"], "compiled");
    assert_eq!(run(&[])["module_cache"], "disk_hit");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn bad_modules_and_flags_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"definitely not wasm").unwrap();
    let output = wasmesh(&["exec", junk.to_str().unwrap()], b"");
    assert_eq!(output.status.code(), Some(2));
    assert!(err(&output).contains("invalid module"), "{}", err(&output));

    let missing = wasmesh(&["exec", "/no/such/module.wasm"], b"");
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        err(&missing).contains("/no/such/module.wasm"),
        "{}",
        err(&missing)
    );

    let bad_size = wasmesh(&["exec", &guest(), "--memory", "lots", "noop"], b"");
    assert_eq!(bad_size.status.code(), Some(2));
    assert!(err(&bad_size).contains("not a size"), "{}", err(&bad_size));
}

#[test]
fn ordinary_wasi_programs_run_unchanged() {
    // The hash example reads files by path through a preopened directory.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), b"abc").unwrap();
    let mapping = format!("{}::/files", dir.path().display());
    let hash = guest_path("hash").display().to_string();
    let output = wasmesh(&["exec", &hash, "--dir", &mapping, "/files/a.txt"], b"");
    assert_eq!(output.status.code(), Some(0), "{}", err(&output));
    assert_eq!(
        out(&output),
        format!("{}  /files/a.txt\n", blake3::hash(b"abc").to_hex())
    );
}
