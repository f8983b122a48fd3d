//! Where the guest jobs built from `examples/` (and the test guest) are, for tests and
//! benchmarks. The build script compiles them from source; nothing prebuilt is checked in.

use std::path::{Path, PathBuf};

/// The purpose-built test guest's module name.
pub const TEST_GUEST: &str = "test-guest";

/// Every example job's module name.
pub const EXAMPLES: &[&str] = &[
    "mandelbrot",
    "wordcount",
    "montecarlo-pi",
    "sensor-alerts",
    "hash",
    "sieve",
];

/// The directory holding the compiled `.wasm` files.
pub fn guest_dir() -> &'static Path {
    Path::new(env!("WASMESH_GUEST_DIR"))
}

/// The path of the compiled guest `name` (e.g. `"mandelbrot"`).
pub fn guest_path(name: &str) -> PathBuf {
    guest_dir().join(format!("{name}.wasm"))
}

/// The bytes of the compiled guest `name`.
pub fn guest_bytes(name: &str) -> Vec<u8> {
    let path = guest_path(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}
