//! The fuzz harnesses of wasmesh, one per decoder that faces the network (and one for
//! the sandbox): each takes arbitrary bytes and panics only on a finding. The
//! cargo-fuzz targets in `fuzz/fuzz_targets` call them; `tests/corpus.rs` replays the
//! seed corpus in `fuzz/corpus/<target>/` through them in every `cargo test`.
//! See FUZZING.md for running them longer.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, header};
use serde_json::Value;
use wasmesh_host::api::AppState;
use wasmesh_host::api::auth::Auth;
use wasmesh_host::cluster::groups::{RouteSpec, matches, route as first_route};
use wasmesh_host::engine::{ActionSubmission, Engine, NodeConfig};
use wasmesh_host::model::{HashHex, WorkerDescriptor, canonical_json, content_id, output_refs};
use wasmesh_host::webhooks::{sign, verify};
use wasmesh_runtime::{Config, Limits, Outcome, RunSpec, RuntimeError, Sandbox};

/// A harness: arbitrary bytes in, a panic only on a finding.
pub type Harness = fn(&[u8]);

/// The harnesses by target name (the corpus folder names).
pub const TARGETS: &[(&str, Harness)] = &[
    ("package", package),
    ("action", action),
    ("route", route),
    ("webhook", webhook),
    ("sandbox", sandbox),
];

/// One node in a temporary directory, and a runtime to drive its async readers.
struct NodeUnderTest {
    state: AppState,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn harness() -> &'static NodeUnderTest {
    static HARNESS: OnceLock<NodeUnderTest> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut config = NodeConfig::new(dir.path().to_path_buf());
        config.slots = 1;
        // Small limits, so a body that would pass them is found quickly.
        config.max_blob_bytes = 1 << 20;
        config.max_request_bytes = 4 << 20;
        config.max_json_bytes = 64 << 10;
        let engine = Engine::open(config).expect("opening a node");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        NodeUnderTest {
            state: AppState::new(engine, std::sync::Arc::new(Auth::open())),
            runtime,
            _dir: dir,
        }
    })
}

/// The multipart package reader: any body is a descriptor or a 4xx, never a panic or
/// a 5xx, and a chunk is stored only under the hash of its bytes.
pub fn package(data: &[u8]) {
    let h = harness();
    let request = Request::builder()
        .method(Method::POST)
        .uri("/compute/workers")
        .header(header::CONTENT_TYPE, "multipart/form-data; boundary=fuzz")
        .body(Body::from(data.to_vec()))
        .expect("a request");
    let read = h.runtime.block_on(wasmesh_host::api::body::descriptor(
        &h.state, "fuzz", request,
    ));
    match read {
        Ok(_) => {}
        Err(e) => assert!(
            e.status_code().is_client_error(),
            "a package got {}: {e:?}",
            e.status_code()
        ),
    }
    // Whatever was stored is stored under its own hash.
    for part in data.split(|&b| b == b'"') {
        if let Ok(text) = std::str::from_utf8(part)
            && let Ok(hash) = text.parse::<HashHex>()
            && let Ok(bytes) = h.state.engine.cas().read(&hash)
        {
            assert_eq!(
                HashHex::of(&bytes),
                hash,
                "a blob stored under another hash"
            );
        }
    }
}

/// Descriptor and action JSON: canonical JSON is a fixed point, ids are the hash of
/// it, and output references parse the same way wherever they are found.
pub fn action(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    if let Ok(canonical) = canonical_json(&value) {
        let reparsed: Value = serde_json::from_slice(&canonical).expect("canonical JSON parses");
        assert_eq!(
            canonical_json(&reparsed).expect("canonical JSON is canonical"),
            canonical,
            "canonical JSON is not a fixed point"
        );
        assert_eq!(content_id(&value).expect("an id"), HashHex::of(&canonical));
    }
    if let Ok(submission) = ActionSubmission::parse(value.clone()) {
        assert_eq!(submission.id, HashHex::of(submission.canonical.as_bytes()));
        assert_eq!(
            output_refs(&value).expect("references parsed once parse again"),
            submission.refs
        );
        let round: Value = serde_json::to_value(&submission.action).expect("serializes");
        let again: wasmesh_host::model::ActionDescriptor =
            serde_json::from_value(round).expect("a parsed action parses again");
        assert_eq!(again.worker, submission.action.worker);
    }
    if let Ok(worker) = serde_json::from_value::<WorkerDescriptor>(value) {
        let round = serde_json::to_value(&worker).expect("serializes");
        let again: WorkerDescriptor = serde_json::from_value(round).expect("parses again");
        assert_eq!(again.module, worker.module);
    }
}

/// The obvious matcher: `*` is special only as the whole rest of a pattern.
fn naive_matches(pattern: &[char], event: &[char]) -> bool {
    match pattern {
        [] => event.is_empty(),
        ['*'] => true,
        [c, rest @ ..] => event.first() == Some(c) && naive_matches(rest, &event[1..]),
    }
}

/// The route pattern matcher against a naive one, and first-match routing against a
/// plain loop.
pub fn route(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut fields = text.split('\n');
    let event = fields.next().unwrap_or_default();
    let patterns: Vec<&str> = fields.collect();
    let event_chars: Vec<char> = event.chars().collect();
    for pattern in &patterns {
        let chars: Vec<char> = pattern.chars().collect();
        assert_eq!(
            matches(pattern, event),
            naive_matches(&chars, &event_chars),
            "pattern {pattern:?}, event {event:?}"
        );
    }
    let routes: Vec<RouteSpec> = patterns
        .iter()
        .enumerate()
        .map(|(i, pattern)| RouteSpec {
            from: if i % 3 == 2 {
                "h0".into()
            } else {
                "_external".into()
            },
            to: format!("h{i}"),
            event_types: pattern.split(',').map(String::from).collect(),
        })
        .collect();
    let expected = routes
        .iter()
        .find(|r| {
            r.from == "_external"
                && r.event_types
                    .iter()
                    .any(|p| naive_matches(&p.chars().collect::<Vec<_>>(), &event_chars))
        })
        .map(|r| r.to.as_str());
    assert_eq!(first_route(&routes, "_external", event), expected);
}

/// Standard Webhooks signing and verification: a signature verifies, any change to
/// the id, timestamp or body does not, and no header makes the verifier panic.
pub fn webhook(data: &[u8]) {
    use base64::Engine;
    let (key, rest) = data.split_at(data.len().min(24));
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    let text = String::from_utf8_lossy(rest);
    let (id, body) = text.split_once('\n').unwrap_or(("msg_fuzz", &text));
    let timestamp = i64::from(key.first().copied().unwrap_or(0)) * 1_000_003;
    let signature = sign(&secret, id, timestamp, body);
    assert!(signature.starts_with("v1,"));
    assert!(verify(&secret, id, timestamp, body, &signature));
    assert!(!verify(&secret, id, timestamp + 1, body, &signature));
    assert!(!verify(
        &secret,
        &format!("{id}x"),
        timestamp,
        body,
        &signature
    ));
    assert!(!verify(
        &secret,
        id,
        timestamp,
        &format!("{body} "),
        &signature
    ));
    // Arbitrary header text: an answer, never a panic.
    let _ = verify(&secret, id, timestamp, body, &text);
}

/// `(module (func (export "_start")))`: wasm-smith makes every module export this.
const START_EXPORT: &[u8] = &[
    0, 97, 115, 109, 1, 0, 0, 0, // magic, version
    1, 4, 1, 0x60, 0, 0, // type section: () -> ()
    3, 2, 1, 0, // function section
    7, 10, 1, 6, b'_', b's', b't', b'a', b'r', b't', 0, 0, // export "_start"
    10, 4, 1, 2, 0, 0x0b, // code section
];

/// The sandbox's limits for generated modules.
const LIMITS: Limits = Limits {
    fuel: 50_000_000,
    memory_bytes: 16 << 20,
    timeout_ms: 1000,
    output_bytes: 64 << 10,
};

fn sandbox_under_test() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        Sandbox::new(Config {
            limits: LIMITS,
            max_instances: 4,
            ..Config::default()
        })
        .expect("a sandbox")
    })
}

/// wasm-smith modules through the sandbox under small limits: the host never
/// crashes, never runs past its deadline and never lets a run past a limit.
pub fn sandbox(data: &[u8]) {
    let mut u = arbitrary::Unstructured::new(data);
    let config = wasm_smith::Config {
        exports: Some(START_EXPORT.to_vec()),
        max_imports: 0,
        max_funcs: 20,
        max_instructions: 200,
        max_memory32_bytes: 32 << 20,
        threads_enabled: false,
        shared_everything_threads_enabled: false,
        exceptions_enabled: false,
        gc_enabled: false,
        memory64_enabled: false,
        custom_page_sizes_enabled: false,
        wide_arithmetic_enabled: false,
        ..wasm_smith::Config::default()
    };
    let Ok(module) = wasm_smith::Module::new(config, &mut u) else {
        return;
    };
    let wasm = module.to_bytes();
    let sandbox = sandbox_under_test();
    let compiled = match sandbox.load(&wasm) {
        Ok(compiled) => compiled,
        Err(RuntimeError::InvalidModule(_)) => return,
        Err(e) => panic!("loading a generated module: {e}"),
    };
    let started = Instant::now();
    let report = sandbox
        .run(&compiled, RunSpec::new().without_tmp())
        .unwrap_or_else(|e| panic!("running a generated module: {e}"));
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(LIMITS.timeout_ms) + Duration::from_secs(2),
        "a run took {took:?} with a {} ms deadline ({:?})",
        LIMITS.timeout_ms,
        report.outcome
    );
    assert!(
        report.usage.peak_memory_bytes <= LIMITS.memory_bytes,
        "{} bytes of memory under a {} byte limit",
        report.usage.peak_memory_bytes,
        LIMITS.memory_bytes
    );
    assert!(report.stdout.len() as u64 <= LIMITS.output_bytes);
    if let Outcome::Exited(_) = report.outcome {
        assert!(
            report.usage.fuel <= LIMITS.fuel,
            "ran on more fuel than it had"
        );
    }
}
