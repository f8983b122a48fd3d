//! The HTTP API of `../shared/design/API.md`: `fn app(state) -> Router` and `serve`.
//! One module per resource; handlers translate and delegate to [`crate::engine::Engine`]
//! (with the caller's tenant). `cluster/` holds a coordinator's routes. This is the only
//! module that knows axum.

pub mod auth;
pub mod body;
mod cas;
pub mod cluster;
pub mod error;
mod events;
pub mod exposure;
mod gc;
pub mod idempotency;
mod info;
mod jobs;
pub mod json;
mod listing;
mod queues;
mod record;
mod serve;
pub mod session;
pub mod throttle;
mod ui;
mod usage;
mod webhooks;
mod workers;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};

use crate::cluster::Fleet;
use crate::engine::Engine;
use auth::Auth;

/// The version every node and coordinator reports.
pub fn info_version() -> &'static str {
    info::VERSION
}

/// The answer for any unknown route.
pub async fn not_found() -> error::ApiError {
    info::not_found().await
}

/// What every handler can reach.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The engine requests are served by.
    pub engine: Arc<Engine>,
    /// API keys.
    pub auth: Arc<Auth>,
    /// On a coordinator, the fleet its jobs run on (sysinfo reports its capacity).
    pub fleet: Option<Arc<Fleet>>,
}

impl axum::extract::FromRef<AppState> for json::JsonLimits {
    fn from_ref(state: &AppState) -> Self {
        let config = state.engine.config();
        json::JsonLimits {
            json: config.max_json_bytes,
            request: usize::try_from(config.max_request_bytes).unwrap_or(usize::MAX),
        }
    }
}

impl AppState {
    /// The state of a node serving `engine` with `auth`.
    pub fn new(engine: Arc<Engine>, auth: Arc<Auth>) -> Self {
        Self {
            engine,
            auth,
            fleet: None,
        }
    }
}

/// The router with every route of the node.
pub fn app(state: AppState) -> Router {
    app_with(state, Router::new())
}

/// The node's routes plus `extra` (a coordinator's cluster routes), sharing the body
/// limit and the JSON 404.
pub fn app_with(state: AppState, extra: Router) -> Router {
    let limit = usize::try_from(state.engine.config().max_request_bytes).unwrap_or(usize::MAX);
    let protected = Router::new()
        .route("/compute/sysinfo", get(info::sysinfo))
        .route("/metrics", get(info::metrics))
        .route("/compute/events", get(events::feed))
        .route("/cas/needs", post(cas::needs))
        .route(
            "/cas/{hash}",
            get(cas::get_blob).head(cas::head_blob).put(cas::put_blob),
        )
        .route(
            "/compute/workers",
            post(workers::register).get(workers::list),
        )
        .route(
            "/compute/workers/{id}",
            post(workers::register_id).get(workers::get),
        )
        .route("/compute/jobs", post(jobs::submit).get(listing::jobs))
        .route("/compute/jobs/completed", get(jobs::completed))
        .route(
            "/compute/jobs/{id}",
            post(jobs::submit_for_worker)
                .get(jobs::get)
                .delete(jobs::retire),
        )
        .route("/compute/jobs/{id}/cancel", post(jobs::cancel))
        .route("/compute/jobs/{id}/details", get(jobs::details))
        .route("/compute/jobs/{id}/priority", post(jobs::priority))
        .route("/compute/jobs/{id}/reschedule", post(jobs::reschedule))
        .route("/compute/jobs/{id}/{action}", get(jobs::cached))
        .route(
            "/compute/queues",
            post(queues::create_local).get(listing::queues),
        )
        .route("/compute/queues/remote", post(queues::create_remote))
        .route(
            "/compute/queues/{q}",
            get(queues::get).delete(queues::cancel),
        )
        .route("/compute/queues/{q}/drain", post(queues::drain))
        .route("/compute/queues/{q}/completed", get(queues::completed))
        .route("/compute/queues/{q}/events", get(queues::events))
        .route("/compute/queues/{q}/jobs", post(queues::submit))
        .route(
            "/compute/queues/{q}/jobs/{id}",
            post(queues::submit_for_worker).get(queues::job),
        )
        .route("/compute/usage", get(usage::get))
        .route("/compute/gc", post(gc::collect))
        .route("/compute/record/start", post(record::start))
        .route("/compute/record/stop", post(record::stop))
        .route(
            "/compute/record/{id}",
            axum::routing::delete(record::delete),
        )
        .route(
            "/api/v1/webhooks",
            post(webhooks::create).get(webhooks::list),
        )
        .route(
            "/api/v1/webhooks/{id}",
            get(webhooks::get).delete(webhooks::delete),
        )
        .route("/api/v1/webhooks/{id}/enable", post(webhooks::enable))
        .route(
            "/api/v1/webhooks/{id}/deliveries",
            get(webhooks::deliveries),
        )
        // Layers run bottom-up: the tenant is resolved before the key is looked up.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            idempotency::idempotency,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_tenant,
        ));
    Router::new()
        .route("/health", get(info::health))
        // Readiness says nothing but yes or no: probes (Kubernetes, Nomad) need no key.
        .route("/compute/ready", get(info::ready))
        .route("/ui", get(ui::index))
        .route("/ui/", get(ui::index))
        .route("/ui/login", post(session::login))
        .route("/ui/logout", post(session::logout))
        .route("/ui/session", get(session::whoami))
        .route("/ui/{*path}", get(ui::path))
        .merge(protected)
        .with_state(state)
        .merge(extra)
        .fallback(info::not_found)
        .layer(DefaultBodyLimit::max(limit))
}

pub use serve::{Limits, serve};
