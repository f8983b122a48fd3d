//! Health, readiness, sysinfo and metrics.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::engine::metrics::Gauges;

/// The version every node and coordinator reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

fn role(state: &AppState) -> &'static str {
    if state.fleet.is_some() {
        "coordinator"
    } else {
        "node"
    }
}

/// `GET /health`: always 200 while the process serves.
pub async fn health(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({"role": role(&state), "status": "healthy", "version": VERSION}))
}

/// `GET /compute/ready`: 200 when accepting work, else 503.
pub async fn ready(State(state): State<AppState>) -> Response {
    if state.engine.ready() {
        Json(json!({"ready": true})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false})),
        )
            .into_response()
    }
}

fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map_or(0, |kib| kib * 1024)
}

/// `GET /compute/sysinfo`.
pub async fn sysinfo(State(state): State<AppState>) -> Json<serde_json::Value> {
    let (queued, mut running) = state.engine.load();
    let config = state.engine.config();
    let mut slots = config.slots as u64;
    if let Some(fleet) = &state.fleet {
        // A coordinator's capacity is its healthy nodes'; its running jobs are leased.
        slots = fleet.slots();
        running = fleet.leases();
    }
    let limits = config.limits;
    Json(json!({
        "id": config.id,
        "role": role(&state),
        "version": VERSION,
        "cpus": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "memory_bytes": memory_bytes(),
        "slots": slots,
        "running": running,
        "queued": queued,
        "limits": {
            "max_blob_bytes": config.max_blob_bytes,
            "max_request_bytes": config.max_request_bytes,
            "fuel": limits.fuel,
            "memory_bytes": limits.memory_bytes,
            "timeout_ms": limits.timeout_ms,
            "output_bytes": limits.output_bytes,
        },
        "labels": config.labels,
        // Whether the journal is shared with other coordinators (`--shared`), and
        // whether this process runs the duties that run once (always, unshared).
        "journal": {
            "shared": state.engine.store().is_shared(),
            "leader": state.engine.store().leads(),
        },
    }))
}

/// `GET /metrics`: Prometheus text format, for the operator (Prometheus scrapes with
/// the operator's key): it names every tenant and shows the whole fleet.
pub async fn metrics(
    State(state): State<AppState>,
    _: crate::api::auth::Operator,
) -> Result<Response, ApiError> {
    let (queued, running) = state.engine.load();
    let gauges = Gauges {
        queued,
        running,
        slots: state.engine.config().slots,
        cache: state.engine.sandbox().cache().stats(),
        shares: state.engine.shares(),
        nodes: state.engine.nodes_by_state(),
    };
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.engine.metrics().render(&gauges) + &state.engine.extra_metrics(),
    )
        .into_response())
}

/// Any other path.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}
