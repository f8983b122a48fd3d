//! Compiles every guest job (the `examples/` workspace, which includes the test guest)
//! for wasm32-wasip1 so that tests and benchmarks run real modules built from source.
//!
//! The nested cargo uses its own target directory (`target/guests`), so it never waits
//! on the lock of the build that runs this script.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest
        .ancestors()
        .nth(2)
        .expect("tests/support sits two levels below the root")
        .to_path_buf();
    let examples = root.join("examples");
    let target_dir = root.join("target").join("guests");

    watch(&root.join("guest-sdk"));
    watch(&root.join("tests").join("guest"));
    println!(
        "cargo:rerun-if-changed={}",
        examples.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        examples.join("Cargo.lock").display()
    );
    for entry in std::fs::read_dir(&examples)
        .expect("examples/ exists")
        .flatten()
    {
        if entry.path().join("Cargo.toml").exists() {
            watch(&entry.path());
        }
    }

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip1",
            "--manifest-path",
        ])
        .arg(examples.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    // What cargo sets for this build script describes the host build (flags, wrappers
    // such as clippy-driver); none of it applies to the guests.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        command.env_remove(var);
    }
    let status = command.status().expect("running cargo to build the guests");
    if !status.success() {
        let hint = if target_installed() {
            ""
        } else {
            "\nThe wasm32-wasip1 target is missing: run `rustup target add wasm32-wasip1`."
        };
        panic!("building the guest jobs in examples/ failed ({status}){hint}");
    }
    let out = target_dir.join("wasm32-wasip1").join("release");
    println!("cargo:rustc-env=WASMESH_GUEST_DIR={}", out.display());
}

/// Re-runs this script when anything under a crate's manifest or sources changes.
fn watch(package: &Path) {
    println!(
        "cargo:rerun-if-changed={}",
        package.join("Cargo.toml").display()
    );
    println!("cargo:rerun-if-changed={}", package.join("src").display());
}

fn target_installed() -> bool {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        .is_some_and(|sysroot| sysroot.join("lib/rustlib/wasm32-wasip1").exists())
}
