//! Fuzz target `route`: see `wasmesh_fuzz::route` (run: `cargo fuzz run route --sanitizer none`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmesh_fuzz::route(data));
