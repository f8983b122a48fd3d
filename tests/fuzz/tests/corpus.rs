//! Replays the seed corpus of every fuzz target (`fuzz/corpus/<target>/*`) through its
//! harness, so CI runs what the fuzzers found interesting, and fails on a finding.

use std::path::Path;

#[test]
fn the_seed_corpus_passes_every_harness() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    for (target, harness) in wasmesh_fuzz::TARGETS {
        let dir = root.join(target);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{target} has no seed corpus");
        for input in inputs {
            let bytes = std::fs::read(&input).unwrap();
            let outcome = std::panic::catch_unwind(|| harness(&bytes));
            assert!(
                outcome.is_ok(),
                "{target}: {} is a finding",
                input.display()
            );
        }
    }
}
