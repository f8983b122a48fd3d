//! Integration tests of the sandbox, driven by real guests compiled from `examples/` and
//! `tests/guest` (one test binary with a module per area).

mod abi;
mod cache;
mod examples;
mod fs;
mod outcomes;

use std::sync::OnceLock;

use wasmesh_runtime::{CompiledModule, Config, Limits, RunReport, RunSpec, Sandbox};
use wasmesh_test_support::{TEST_GUEST, guest_bytes};

/// Ceilings of the shared test sandbox: small enough that limit tests are quick.
pub const CEILINGS: Limits = Limits {
    fuel: 2_000_000_000,
    memory_bytes: 64 << 20,
    timeout_ms: 20_000,
    output_bytes: 1 << 20,
};

/// One sandbox for the whole test binary, so each guest compiles once.
pub fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        Sandbox::new(Config {
            limits: CEILINGS,
            stderr_bytes: 64 << 10,
            max_events: 16,
            max_checkpoint_bytes: 1 << 16,
            tmp_bytes: 4 << 20,
            max_instances: 32,
            ..Config::default()
        })
        .expect("test sandbox")
    })
}

/// A second shared sandbox whose fuel ceiling (10^13, hours of work) can never run
/// out before a test's wall-clock limit or cancellation does: tests that wait for the
/// clock use it, so they cannot race fuel exhaustion on a loaded machine.
pub fn roomy() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        Sandbox::new(Config {
            limits: Limits {
                fuel: 10_000_000_000_000,
                ..CEILINGS
            },
            tmp_bytes: 4 << 20,
            max_instances: 16,
            ..Config::default()
        })
        .expect("roomy test sandbox")
    })
}

/// Runs the test guest on the roomy sandbox.
pub fn roomy_guest(args: &[&str], spec: RunSpec) -> RunReport {
    let module = roomy()
        .load(&guest_bytes(TEST_GUEST))
        .expect("guest compiles");
    roomy()
        .run(&module, spec.args(args.iter().copied()))
        .expect("run")
}

/// A compiled guest from the shared sandbox.
pub fn module(name: &str) -> CompiledModule {
    sandbox().load(&guest_bytes(name)).expect("guest compiles")
}

/// Runs the test guest with these arguments.
pub fn guest(args: &[&str]) -> RunReport {
    guest_with(args, RunSpec::new())
}

/// Runs the test guest with these arguments on top of `spec`.
pub fn guest_with(args: &[&str], spec: RunSpec) -> RunReport {
    sandbox()
        .run(&module(TEST_GUEST), spec.args(args.iter().copied()))
        .expect("run")
}

/// The report's stdout as text.
pub fn stdout(report: &RunReport) -> String {
    String::from_utf8_lossy(&report.stdout).into_owned()
}

/// The report's stderr as text.
pub fn stderr(report: &RunReport) -> String {
    String::from_utf8_lossy(&report.stderr).into_owned()
}
