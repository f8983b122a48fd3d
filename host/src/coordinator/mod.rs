//! The coordinator: the registry of node hosts (this file), with heartbeats, node
//! states and drain. Scheduling jobs across the registered nodes builds on it.
//!
//! Membership is soft state: a restarted coordinator starts empty and nodes register
//! again when a heartbeat gets 404.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{Path, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::auth::Auth;
use crate::api::error::{ApiError, ApiResult};

/// Coordinator settings.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// How often nodes heartbeat.
    pub heartbeat_interval: Duration,
    /// A node whose last heartbeat is older than this is unhealthy (its leases expire).
    pub lease: Duration,
}

impl Default for CoordinatorConfig {
    /// One heartbeat a second; five missed seconds make a node unhealthy, long enough
    /// to ride out a GC-free hiccup, short enough to requeue its work promptly.
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(1),
            lease: Duration::from_secs(5),
        }
    }
}

/// A registered node.
#[derive(Clone, Debug)]
struct Member {
    address: String,
    slots: u64,
    running: u64,
    labels: BTreeMap<String, String>,
    last_heartbeat: Instant,
    draining: bool,
}

/// The registry of nodes.
#[derive(Debug)]
pub struct Registry {
    config: CoordinatorConfig,
    members: Mutex<HashMap<String, Member>>,
}

impl Registry {
    /// An empty registry.
    pub fn new(config: CoordinatorConfig) -> Self {
        Self {
            config,
            members: Mutex::new(HashMap::new()),
        }
    }

    fn members(&self) -> MutexGuard<'_, HashMap<String, Member>> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn state(&self, member: &Member) -> &'static str {
        if member.last_heartbeat.elapsed() > self.config.lease {
            "unhealthy"
        } else if member.draining {
            "draining"
        } else if member.running >= member.slots {
            "busy"
        } else {
            "ready"
        }
    }

    fn describe(&self, id: &str, member: &Member) -> Value {
        json!({
            "id": id,
            "address": member.address,
            "state": self.state(member),
            "slots": member.slots,
            "running": member.running,
            "labels": member.labels,
            "last_heartbeat_ms_ago": member.last_heartbeat.elapsed().as_millis() as u64,
        })
    }
}

/// What the coordinator's handlers reach.
#[derive(Clone, Debug)]
pub struct CoordinatorState {
    /// The node registry.
    pub registry: Arc<Registry>,
    /// Client keys.
    pub auth: Arc<Auth>,
    /// Node keys (for the node-facing routes).
    pub node_auth: Arc<Auth>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Registration {
    id: String,
    address: String,
    slots: u64,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Heartbeat {
    running: Option<u64>,
    slots: Option<u64>,
}

async fn body<T: for<'de> Deserialize<'de> + Default>(
    request: Request,
    allow_empty: bool,
) -> ApiResult<T> {
    let bytes = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .map_err(|_| ApiError::TooLarge("cluster bodies are limited to 1 MiB".into()))?;
    if allow_empty && bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(ApiError::json)
}

async fn register(State(state): State<CoordinatorState>, request: Request) -> ApiResult<Response> {
    let registration: Registration = body(request, false).await?;
    if registration.id.is_empty() || registration.id.len() > 128 {
        return Err(ApiError::BadRequest(
            "invalid_request",
            "a node id is 1 to 128 characters".into(),
        ));
    }
    if !registration.address.starts_with("http://") && !registration.address.starts_with("https://")
    {
        return Err(ApiError::BadRequest(
            "invalid_request",
            "a node address is an http(s) URL".into(),
        ));
    }
    let registry = &state.registry;
    let mut members = registry.members();
    let draining = members.get(&registration.id).is_some_and(|m| m.draining);
    tracing::info!(node = %registration.id, address = %registration.address, "node registered");
    members.insert(
        registration.id,
        Member {
            address: registration.address,
            slots: registration.slots,
            running: 0,
            labels: registration.labels,
            last_heartbeat: Instant::now(),
            draining,
        },
    );
    Ok(Json(json!({
        "heartbeat_interval_ms": registry.config.heartbeat_interval.as_millis() as u64,
        "lease_ms": registry.config.lease.as_millis() as u64,
    }))
    .into_response())
}

async fn heartbeat(
    State(state): State<CoordinatorState>,
    Path(id): Path<String>,
    request: Request,
) -> ApiResult<Response> {
    let beat: Heartbeat = body(request, true).await?;
    let mut members = state.registry.members();
    let member = members.get_mut(&id).ok_or_else(|| {
        ApiError::NotFound(format!("node {id} is not registered; register again"))
    })?;
    member.last_heartbeat = Instant::now();
    if let Some(running) = beat.running {
        member.running = running;
    }
    if let Some(slots) = beat.slots {
        member.slots = slots;
    }
    let draining = member.draining;
    Ok(Json(json!({"id": id, "draining": draining})).into_response())
}

async fn list(State(state): State<CoordinatorState>) -> Json<Value> {
    let registry = &state.registry;
    let members = registry.members();
    let mut ids: Vec<&String> = members.keys().collect();
    ids.sort();
    let nodes: Vec<Value> = ids
        .into_iter()
        .map(|id| registry.describe(id, &members[id]))
        .collect();
    Json(json!({"nodes": nodes}))
}

async fn details(
    State(state): State<CoordinatorState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let members = state.registry.members();
    let member = members
        .get(&id)
        .ok_or_else(|| ApiError::NotFound(format!("node {id} not found")))?;
    Ok(Json(state.registry.describe(&id, member)))
}

async fn deregister(
    State(state): State<CoordinatorState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    state
        .registry
        .members()
        .remove(&id)
        .ok_or_else(|| ApiError::NotFound(format!("node {id} not found")))?;
    Ok(Json(json!({"id": id, "deregistered": true})))
}

async fn drain(
    State(state): State<CoordinatorState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let mut members = state.registry.members();
    let member = members
        .get_mut(&id)
        .ok_or_else(|| ApiError::NotFound(format!("node {id} not found")))?;
    member.draining = true;
    let described = state.registry.describe(&id, member);
    Ok(Json(described))
}

async fn health() -> Json<Value> {
    Json(json!({"role": "coordinator", "status": "healthy", "version": crate::api::info_version()}))
}

fn presented_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        })
        .map(|key| key.trim().to_string())
}

fn check(auth: &Auth, headers: &HeaderMap) -> ApiResult<()> {
    if !auth.required() {
        return Ok(());
    }
    let key = presented_key(headers).ok_or(ApiError::Unauthorized)?;
    auth.tenant(&key).map(|_| ()).ok_or(ApiError::Unauthorized)
}

async fn require_node_key(
    State(state): State<CoordinatorState>,
    request: Request,
    next: Next,
) -> ApiResult<Response> {
    check(&state.node_auth, request.headers())?;
    Ok(next.run(request).await)
}

async fn require_client_key(
    State(state): State<CoordinatorState>,
    request: Request,
    next: Next,
) -> ApiResult<Response> {
    check(&state.auth, request.headers())?;
    Ok(next.run(request).await)
}

/// The coordinator's router.
pub fn app(state: CoordinatorState) -> Router {
    let node_routes = Router::new()
        .route("/api/v1/cluster/nodes/register", post(register))
        .route("/api/v1/cluster/nodes/{id}/heartbeat", post(heartbeat))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_node_key,
        ));
    let client_routes = Router::new()
        .route("/api/v1/cluster/nodes", get(list))
        .route(
            "/api/v1/cluster/nodes/{id}",
            get(details).delete(deregister),
        )
        .route("/api/v1/cluster/nodes/{id}/drain", post(drain))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_client_key,
        ));
    Router::new()
        .route("/health", get(health))
        .merge(node_routes)
        .merge(client_routes)
        .fallback(crate::api::not_found)
        .with_state(state)
}
