//! Every outcome variant from a real guest, and the limits behind them.

use std::sync::Arc;
use std::time::Duration;

use wasmesh_runtime::{
    CancellationToken, LimitsRequest, Outcome, RunObserver, RunSpec, RuntimeError,
};

use crate::{CEILINGS, guest, guest_with, sandbox, stderr, stdout};

fn limits(f: impl FnOnce(&mut LimitsRequest)) -> RunSpec {
    let mut request = LimitsRequest::default();
    f(&mut request);
    RunSpec::new().limits(request)
}

#[test]
fn a_clean_return_is_exited_zero_with_usage() {
    let report = guest(&["noop"]);
    assert_eq!(report.outcome, Outcome::Exited(0));
    assert!(report.outcome.is_success());
    assert!(report.usage.fuel > 0, "fuel is metered: {:?}", report.usage);
    assert!(
        report.usage.peak_memory_bytes >= 64 << 10,
        "{:?}",
        report.usage
    );
    assert!(report.usage.instantiate <= report.usage.wall);
}

#[test]
fn exit_codes_pass_through() {
    assert_eq!(guest(&["exit", "7"]).outcome, Outcome::Exited(7));
    assert_eq!(guest(&["exit", "0"]).outcome, Outcome::Exited(0));
}

#[test]
fn stdin_args_and_env_reach_the_guest_and_nothing_else() {
    let echoed = guest_with(&["echo"], RunSpec::new().stdin(b"hello\0bytes".to_vec()));
    assert_eq!(echoed.stdout, b"hello\0bytes");
    assert_eq!(stdout(&guest(&["args", "a b", "--c"])), "a b\n--c\n");
    let env = RunSpec::new().env("GREETING", "hi");
    assert_eq!(
        stdout(&guest_with(&["env", "GREETING"], env.clone())),
        "hi\n"
    );
    // The host's environment (PATH, HOME, ...) is never inherited.
    assert_eq!(stdout(&guest_with(&["env-count"], env.clone())), "1\n");
    assert_eq!(stdout(&guest_with(&["env", "PATH"], env)), "<unset>\n");
}

#[test]
fn a_panic_traps_with_its_message_on_stderr() {
    let report = guest(&["panic", "boom at the gate"]);
    let Outcome::Trapped(message) = &report.outcome else {
        panic!("expected a trap, got {:?}", report.outcome);
    };
    assert!(message.contains("unreachable"), "{message}");
    assert!(
        stderr(&report).contains("boom at the gate"),
        "{}",
        stderr(&report)
    );
}

#[test]
fn an_explicit_trap_is_trapped() {
    assert!(matches!(guest(&["trap"]).outcome, Outcome::Trapped(_)));
}

#[test]
fn runaway_recursion_in_rust_is_a_trap_not_a_crash() {
    // Rust keeps its stack frames in linear memory, so overflowing it is an
    // out-of-bounds access rather than wasm call-stack exhaustion.
    let report = guest(&["stack-overflow"]);
    assert!(
        matches!(report.outcome, Outcome::Trapped(_)),
        "{:?}",
        report.outcome
    );
    assert_eq!(
        guest(&["noop"]).outcome,
        Outcome::Exited(0),
        "the sandbox keeps working"
    );
}

#[test]
fn wasm_call_stack_exhaustion_is_a_trap() {
    let wasm = wat::parse_str(r#"(module (func $f (call $f)) (func (export "_start") (call $f)))"#)
        .unwrap();
    let module = sandbox().load(&wasm).unwrap();
    let report = sandbox().run(&module, RunSpec::new()).unwrap();
    let Outcome::Trapped(message) = &report.outcome else {
        panic!("expected a trap, got {:?}", report.outcome);
    };
    assert!(message.contains("call stack exhausted"), "{message}");
}

#[test]
fn fuel_runs_out_at_the_limit() {
    let report = guest_with(&["spin"], limits(|l| l.fuel = Some(5_000_000)));
    assert_eq!(report.outcome, Outcome::OutOfFuel);
    assert_eq!(report.usage.fuel, 5_000_000);
}

#[test]
fn fuel_requests_are_clamped_to_the_ceiling() {
    let report = guest_with(&["spin"], limits(|l| l.fuel = Some(u64::MAX)));
    assert_eq!(report.outcome, Outcome::OutOfFuel);
    assert_eq!(report.usage.fuel, CEILINGS.fuel);
}

#[test]
fn fuel_used_grows_with_work() {
    let small = guest(&["burn", "1000"]).usage.fuel;
    let large = guest(&["burn", "1000000"]).usage.fuel;
    assert!(large > small + 1_000_000, "small {small}, large {large}");
}

#[test]
fn a_busy_loop_times_out() {
    let report = crate::roomy_guest(
        &["spin"],
        limits(|l| {
            l.timeout_ms = Some(200);
            l.fuel = Some(u64::MAX);
        }),
    );
    assert_eq!(report.outcome, Outcome::TimedOut);
    assert!(
        report.usage.wall >= Duration::from_millis(200),
        "{:?}",
        report.usage.wall
    );
    assert!(
        report.usage.wall < Duration::from_secs(5),
        "{:?}",
        report.usage.wall
    );
}

#[test]
fn a_guest_blocked_in_sleep_still_times_out() {
    let report = guest_with(&["sleep", "60000"], limits(|l| l.timeout_ms = Some(200)));
    assert_eq!(report.outcome, Outcome::TimedOut);
    assert!(
        report.usage.wall < Duration::from_secs(5),
        "{:?}",
        report.usage.wall
    );
}

#[test]
fn a_short_sleep_finishes() {
    assert_eq!(guest(&["sleep", "1"]).outcome, Outcome::Exited(0));
}

#[test]
fn memory_bombs_end_as_memory_exceeded() {
    let spec = limits(|l| l.memory_bytes = Some(16 << 20));
    let report = guest_with(&["alloc", &(64u64 << 20).to_string()], spec.clone());
    assert_eq!(report.outcome, Outcome::MemoryExceeded);
    assert!(
        report.usage.peak_memory_bytes <= 16 << 20,
        "{:?}",
        report.usage
    );

    let fits = guest_with(&["alloc", &(4u64 << 20).to_string()], spec);
    assert_eq!(fits.outcome, Outcome::Exited(0), "{}", stderr(&fits));
    assert!(fits.usage.peak_memory_bytes >= 4 << 20, "{:?}", fits.usage);
}

#[test]
fn memory_requests_are_clamped_to_the_ceiling() {
    let spec = limits(|l| l.memory_bytes = Some(u64::MAX));
    let report = guest_with(
        &["alloc", &(CEILINGS.memory_bytes + (1 << 20)).to_string()],
        spec,
    );
    assert_eq!(report.outcome, Outcome::MemoryExceeded);
}

#[test]
fn a_module_whose_initial_memory_is_over_the_run_limit_is_memory_exceeded() {
    // 500 pages = 31.25 MiB: within the ceiling, over this run's 16 MiB.
    let wasm =
        wat::parse_str(r#"(module (memory (export "memory") 500) (func (export "_start")))"#)
            .unwrap();
    let module = sandbox().load(&wasm).unwrap();
    let report = sandbox()
        .run(&module, limits(|l| l.memory_bytes = Some(16 << 20)))
        .unwrap();
    assert_eq!(report.outcome, Outcome::MemoryExceeded);
    let roomy = sandbox().run(&module, RunSpec::new()).unwrap();
    assert_eq!(roomy.outcome, Outcome::Exited(0));
}

#[test]
fn a_module_that_needs_more_memory_than_the_ceiling_is_refused_at_load() {
    // 2000 pages = 125 MiB, over the 64 MiB ceiling: it could never run here.
    let wasm =
        wat::parse_str(r#"(module (memory (export "memory") 2000) (func (export "_start")))"#)
            .unwrap();
    let err = sandbox().load(&wasm).unwrap_err();
    assert!(
        matches!(&err, RuntimeError::InvalidModule(m) if m.contains("minimum byte size")),
        "{err}"
    );
}

#[test]
fn stdout_is_capped_exactly() {
    let spec = limits(|l| l.output_bytes = Some(1000));
    let at_cap = guest_with(&["big-output", "1000"], spec.clone());
    assert_eq!(at_cap.outcome, Outcome::Exited(0));
    assert_eq!(at_cap.stdout.len(), 1000);
    let over = guest_with(&["big-output", "1001"], spec);
    assert_eq!(over.outcome, Outcome::OutputExceeded);
    assert!(over.stdout.len() <= 1000);
}

#[test]
fn huge_output_is_output_exceeded_at_the_ceiling() {
    let report = guest(&["big-output", &(64u64 << 20).to_string()]);
    assert_eq!(report.outcome, Outcome::OutputExceeded);
    assert!(report.stdout.len() as u64 <= CEILINGS.output_bytes);
}

#[test]
fn stderr_is_capped_too() {
    let report = guest(&["big-stderr", &(1u64 << 20).to_string()]);
    assert_eq!(report.outcome, Outcome::OutputExceeded);
    assert!(report.stderr.len() <= 64 << 10);
}

/// Cancels the run as soon as the guest reports progress, i.e. once it is surely running.
struct CancelOnProgress(CancellationToken);

impl RunObserver for CancelOnProgress {
    fn progress(&self, _fraction: f32) {
        self.0.cancel();
    }
}

fn cancelled_run(args: &[&str]) -> wasmesh_runtime::RunReport {
    let token = CancellationToken::new();
    let spec = limits(|l| l.fuel = Some(u64::MAX))
        .cancel(token.clone())
        .observer(Arc::new(CancelOnProgress(token)));
    crate::roomy_guest(args, spec)
}

#[test]
fn cancel_stops_a_computing_guest() {
    let report = cancelled_run(&["progress-then", "spin"]);
    assert_eq!(report.outcome, Outcome::Cancelled);
    assert!(report.usage.wall < Duration::from_secs(5));
}

#[test]
fn cancel_stops_a_sleeping_guest() {
    let report = cancelled_run(&["progress-then", "sleep", "60000"]);
    assert_eq!(report.outcome, Outcome::Cancelled);
    assert!(report.usage.wall < Duration::from_secs(5));
}

#[test]
fn a_token_cancelled_before_the_start_never_runs_the_guest() {
    let token = CancellationToken::new();
    token.cancel();
    let report = guest_with(&["big-output", "10"], RunSpec::new().cancel(token));
    assert_eq!(report.outcome, Outcome::Cancelled);
    assert!(report.stdout.is_empty());
}

#[test]
fn invalid_modules_are_refused_with_a_reason() {
    let garbage = sandbox().load(b"not wasm at all").unwrap_err();
    assert!(
        matches!(garbage, RuntimeError::InvalidModule(_)),
        "{garbage}"
    );

    let no_start = sandbox()
        .load(&wat::parse_str("(module)").unwrap())
        .unwrap_err();
    assert!(no_start.to_string().contains("_start"), "{no_start}");

    let unknown_import =
        wat::parse_str(r#"(module (import "env" "open_socket" (func)) (func (export "_start")))"#)
            .unwrap();
    let err = sandbox().load(&unknown_import).unwrap_err();
    assert!(
        matches!(&err, RuntimeError::InvalidModule(m) if m.contains("open_socket")),
        "{err}"
    );
}

#[test]
fn text_format_is_not_accepted_as_a_module() {
    // Only binary wasm is content-addressed and run; WAT text would hash differently
    // from the module that actually runs.
    let err = sandbox()
        .load(br#"(module (func (export "_start")))"#)
        .unwrap_err();
    assert!(matches!(err, RuntimeError::InvalidModule(_)), "{err}");
}

/// Without epoch interruption (`Config::epoch_interruption = false`) a computing
/// guest still stops at its deadline and on cancel: it yields to the executor every
/// `FUEL_YIELD_INTERVAL` units of fuel, where both are checked. Without fuel either,
/// nothing could stop it, so that configuration is refused.
#[test]
fn without_epoch_checks_deadlines_and_cancels_act_at_fuel_yields() {
    use wasmesh_runtime::{Config, Limits};
    let sandbox = wasmesh_runtime::Sandbox::new(Config {
        limits: Limits {
            fuel: u64::MAX,
            ..CEILINGS
        },
        epoch_interruption: false,
        tmp_bytes: 1 << 20,
        max_instances: 4,
        ..Config::default()
    })
    .unwrap();
    let module = sandbox
        .load(&wasmesh_test_support::guest_bytes(
            wasmesh_test_support::TEST_GUEST,
        ))
        .unwrap();
    let report = sandbox
        .run(&module, limits(|l| l.timeout_ms = Some(200)).args(["spin"]))
        .unwrap();
    assert_eq!(report.outcome, Outcome::TimedOut);
    assert!(
        report.usage.wall < Duration::from_secs(5),
        "{:?}",
        report.usage.wall
    );
    // Cancelled from its progress report, while it then spins.
    let token = CancellationToken::new();
    let spec = RunSpec::new()
        .cancel(token.clone())
        .observer(Arc::new(CancelOnProgress(token)))
        .args(["progress-then", "spin"]);
    let report = sandbox.run(&module, spec).unwrap();
    assert_eq!(report.outcome, Outcome::Cancelled);
    assert!(
        report.usage.wall < Duration::from_secs(5),
        "{:?}",
        report.usage.wall
    );
    // The sieve still counts right.
    let sieve = sandbox
        .load(&wasmesh_test_support::guest_bytes("sieve"))
        .unwrap();
    let counted = sandbox.run(&sieve, RunSpec::new().arg("1000000")).unwrap();
    assert_eq!(counted.stdout, b"78498\n");
    // /tmp past its quota is caught when the run ends.
    let filled = sandbox
        .run(&module, RunSpec::new().args(["write-tmp", "2097152"]))
        .unwrap();
    assert_eq!(filled.outcome, Outcome::OutputExceeded);
    let within = sandbox
        .run(&module, RunSpec::new().args(["write-tmp", "1000"]))
        .unwrap();
    assert_eq!(within.outcome, Outcome::Exited(0));
    let refused = wasmesh_runtime::Sandbox::new(Config {
        epoch_interruption: false,
        fuel_metering: false,
        ..Config::default()
    });
    assert!(refused.is_err());
}
