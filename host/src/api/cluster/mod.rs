//! The cluster's HTTP side on a coordinator: node routes (`nodes.rs`, behind the node
//! key middleware of `node_auth.rs`), fleet administration (`admin.rs`) and groups
//! (`groups.rs`), merged by [`crate::api::app_with`] into the client router.

mod admin;
mod groups;
pub mod node_auth;
mod nodes;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

use crate::api::auth::Auth;
use crate::api::json::JsonLimits;
use crate::cluster::Fleet;
use crate::engine::Engine;

/// What the cluster handlers reach.
#[derive(Clone, Debug)]
pub struct CoordinatorState {
    /// The engine (journal, store, scheduler) whose jobs the fleet runs.
    pub engine: Arc<Engine>,
    /// The registered nodes and their leases.
    pub fleet: Arc<Fleet>,
    /// Client keys (the cluster's client routes).
    pub auth: Arc<Auth>,
    /// Node keys (the node-facing routes).
    pub node_auth: Arc<node_auth::NodeAuth>,
    /// The autoscaler.
    pub autoscaling: Arc<crate::cluster::autoscale::Autoscaling>,
}

impl axum::extract::FromRef<CoordinatorState> for JsonLimits {
    fn from_ref(state: &CoordinatorState) -> Self {
        let config = state.engine.config();
        JsonLimits {
            json: config.max_json_bytes,
            request: usize::try_from(config.max_request_bytes).unwrap_or(usize::MAX),
        }
    }
}

/// The cluster routes (merged by [`crate::api::app_with`] into the node's router).
pub fn routes(state: CoordinatorState) -> Router {
    let node_routes = Router::new()
        .route("/api/v1/cluster/nodes/register", post(nodes::register))
        .route(
            "/api/v1/cluster/nodes/{id}/heartbeat",
            post(nodes::heartbeat),
        )
        .route("/api/v1/cluster/nodes/{id}/work", post(nodes::work))
        .route("/api/v1/cluster/nodes/{id}/results", post(nodes::results))
        .route("/api/v1/cluster/nodes/{id}/leave", post(nodes::leave))
        .route(
            "/api/v1/cluster/blobs/{hash}",
            get(nodes::get_blob).put(nodes::put_blob),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            node_auth::require_node_key,
        ));
    let app_state = crate::api::AppState {
        engine: state.engine.clone(),
        auth: state.auth.clone(),
        fleet: Some(state.fleet.clone()),
    };
    let client_routes = Router::new()
        .route("/api/v1/cluster/nodes", get(admin::list))
        .route(
            "/api/v1/cluster/nodes/{id}",
            get(admin::details).delete(admin::deregister),
        )
        .route("/api/v1/cluster/nodes/{id}/drain", post(admin::drain))
        .route("/api/v1/cluster/topology", get(admin::topology))
        .route("/api/v1/cluster/autoscaler", get(admin::autoscaler))
        .route_layer(axum::middleware::from_fn_with_state(
            app_state.clone(),
            crate::api::idempotency::idempotency,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            app_state.clone(),
            crate::api::auth::require_tenant,
        ));
    let group_routes = groups::routes()
        .route_layer(axum::middleware::from_fn_with_state(
            app_state.clone(),
            crate::api::idempotency::idempotency,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            app_state,
            crate::api::auth::require_tenant,
        ));
    Router::new()
        .merge(node_routes)
        .merge(client_routes)
        .merge(group_routes)
        .with_state(state)
}
