//! Fuzz target `package`: see `wasmesh_fuzz::package` (run: `cargo fuzz run package --sanitizer none`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmesh_fuzz::package(data));
