//! Fuzz target `action`: see `wasmesh_fuzz::action` (run: `cargo fuzz run action --sanitizer none`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmesh_fuzz::action(data));
