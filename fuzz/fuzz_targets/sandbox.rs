//! Fuzz target `sandbox`: see `wasmesh_fuzz::sandbox` (run: `cargo fuzz run sandbox --sanitizer none`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmesh_fuzz::sandbox(data));
