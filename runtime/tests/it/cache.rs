//! The module cache: memory hits, single-flight compiles, disk artifacts, corruption.

use std::sync::{Arc, Barrier};

use wasmesh_runtime::{Config, Outcome, RunSpec, Sandbox};
use wasmesh_test_support::{TEST_GUEST, guest_bytes};

fn fresh(cache_dir: Option<&std::path::Path>) -> Sandbox {
    Sandbox::new(Config {
        cache_dir: cache_dir.map(Into::into),
        max_instances: 4,
        ..Config::default()
    })
    .unwrap()
}

fn runs(sandbox: &Sandbox, wasm: &[u8]) {
    let module = sandbox.load(wasm).unwrap();
    let report = sandbox.run(&module, RunSpec::new().arg("noop")).unwrap();
    assert_eq!(report.outcome, Outcome::Exited(0));
}

#[test]
fn a_second_load_is_a_memory_hit() {
    let sandbox = fresh(None);
    let wasm = guest_bytes(TEST_GUEST);
    let first = sandbox.load(&wasm).unwrap();
    assert!(sandbox.cache().contains(&first.hash()));
    let second = sandbox.load(&wasm).unwrap();
    assert_eq!(first.hash(), second.hash());
    let stats = sandbox.cache().stats();
    assert_eq!((stats.compiles, stats.memory_hits), (1, 1), "{stats:?}");
}

#[test]
fn concurrent_loads_of_one_module_compile_it_once() {
    let sandbox = fresh(None);
    let wasm = Arc::new(guest_bytes(TEST_GUEST));
    let barrier = Arc::new(Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (sandbox, wasm, barrier) = (sandbox.clone(), wasm.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                sandbox.load(&wasm).unwrap().hash()
            })
        })
        .collect();
    let hashes: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(hashes.windows(2).all(|w| w[0] == w[1]));
    let stats = sandbox.cache().stats();
    assert_eq!((stats.compiles, stats.memory_hits), (1, 7), "{stats:?}");
}

#[test]
fn artifacts_on_disk_skip_compilation_in_a_new_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = guest_bytes(TEST_GUEST);
    let first = fresh(Some(dir.path()));
    runs(&first, &wasm);
    assert_eq!(first.cache().stats().compiles, 1);
    let path = first.cache().artifact_path(&blake3::hash(&wasm)).unwrap();
    assert!(path.exists(), "{} was written", path.display());

    let second = fresh(Some(dir.path()));
    runs(&second, &wasm);
    let stats = second.cache().stats();
    assert_eq!((stats.compiles, stats.disk_hits), (0, 1), "{stats:?}");
}

#[test]
fn a_corrupted_artifact_is_recompiled_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = guest_bytes(TEST_GUEST);
    let first = fresh(Some(dir.path()));
    runs(&first, &wasm);
    let path = first.cache().artifact_path(&blake3::hash(&wasm)).unwrap();

    for corrupt in [
        |bytes: &mut Vec<u8>| {
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0xff;
        },
        |bytes: &mut Vec<u8>| bytes.truncate(bytes.len() / 3),
        |bytes: &mut Vec<u8>| bytes.clear(),
    ] {
        let mut bytes = std::fs::read(&path).unwrap();
        corrupt(&mut bytes);
        std::fs::write(&path, &bytes).unwrap();

        let next = fresh(Some(dir.path()));
        runs(&next, &wasm);
        let stats = next.cache().stats();
        assert_eq!(
            (stats.rejected_artifacts, stats.compiles, stats.disk_hits),
            (1, 1, 0),
            "{stats:?}"
        );
        // The recompile wrote a good artifact back.
        let after = fresh(Some(dir.path()));
        runs(&after, &wasm);
        assert_eq!(after.cache().stats().disk_hits, 1);
    }
}

#[test]
fn artifacts_are_keyed_by_engine_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let hash = blake3::hash(b"any module");
    let default = fresh(Some(dir.path()));
    let other = Sandbox::new(Config {
        cache_dir: Some(dir.path().into()),
        fuel_metering: false,
        max_instances: 4,
        ..Config::default()
    })
    .unwrap();
    assert_ne!(
        default.cache().artifact_path(&hash),
        other.cache().artifact_path(&hash)
    );
}

#[test]
fn an_invalid_module_error_is_cached_too() {
    let sandbox = fresh(None);
    assert!(sandbox.load(b"\0asm garbage").is_err());
    assert!(sandbox.load(b"\0asm garbage").is_err());
    assert_eq!(sandbox.cache().stats().compiles, 1);
}
