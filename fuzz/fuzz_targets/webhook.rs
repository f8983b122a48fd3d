//! Fuzz target `webhook`: see `wasmesh_fuzz::webhook` (run: `cargo fuzz run webhook --sanitizer none`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmesh_fuzz::webhook(data));
