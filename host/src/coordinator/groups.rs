//! Event-handler groups: handlers (workers) placed on nodes, and ordered routes that
//! send events to them by pattern. An injected event runs the handler its first
//! matching `_external` route names, on that handler's node, with the event JSON on
//! stdin; the events it emits are routed on by the routes whose `from` is that
//! handler, up to [`MAX_HOPS`] handlers deep.
//!
//! Every handler run is an ordinary job of the group's tenant (visible in
//! `/compute/jobs`, retried, fenced) pinned to the handler's node; a handler whose node
//! is gone is placed again.
//!
//! One inject (one event or one batch) has a budget of handler runs and of bytes of
//! events routed on ([`crate::coordinator::budget::InjectBudget`]): the hop limit
//! bounds how deep a chain goes, the budget how wide. What is over it is dropped and
//! logged once as `"dropped": "budget"`. The event log stores each event once: the
//! injected ones in their entry, emitted ones as a reference to the run that emitted
//! them (its job's result has them), expanded when the log is read.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::CoordinatorState;
use super::budget::Budget;
use super::placement::Demand;
use crate::api::auth::Tenant;
use crate::api::error::{ApiError, ApiResult};
use crate::model::{HashHex, JobResult};
use crate::node::db::Db;
use crate::node::{ActionSubmission, Node};

/// Handlers one injected event may run through, counting the first.
pub const MAX_HOPS: usize = 8;

/// Entries kept per group in its event log.
const LOG_ENTRIES: usize = 1000;

/// How long one handler run may take before `inject` gives up waiting.
const HANDLER_WAIT: Duration = Duration::from_secs(120);

/// Events per batch inject.
const MAX_BATCH: usize = 1000;

/// A group as deployed.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    /// Its name.
    pub name: String,
    /// Its handlers.
    pub handlers: Vec<HandlerSpec>,
    /// Its routes, tried in order.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
}

/// One handler.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerSpec {
    /// Its name (unique in the group).
    pub name: String,
    /// The worker it runs.
    pub worker: HashHex,
    /// The node it prefers (placement chooses when that node is unavailable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_affinity: Option<String>,
}

/// One route.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// `_external` or a handler's name.
    pub from: String,
    /// A handler's name.
    pub to: String,
    /// Patterns: an exact name, a prefix ending in `*`, or `*`.
    pub event_types: Vec<String>,
}

/// An event as injected or emitted.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventIn {
    /// Its type.
    pub event_type: String,
    /// Its fields.
    #[serde(default)]
    pub fields: serde_json::Map<String, Value>,
}

/// Whether `event_type` matches `pattern` (exact, trailing `*` prefix, or `*`).
pub fn matches(pattern: &str, event_type: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => event_type.starts_with(prefix),
        None => pattern == event_type,
    }
}

/// The handler the first route from `from` matching `event_type` names.
pub fn route<'a>(routes: &'a [RouteSpec], from: &str, event_type: &str) -> Option<&'a str> {
    routes
        .iter()
        .filter(|r| r.from == from)
        .find(|r| r.event_types.iter().any(|p| matches(p, event_type)))
        .map(|r| r.to.as_str())
}

fn validate(spec: &GroupSpec) -> Result<(), String> {
    if spec.name.trim().is_empty() {
        return Err("a group needs a name".into());
    }
    if spec.handlers.is_empty() {
        return Err("a group needs at least one handler".into());
    }
    let mut names = std::collections::HashSet::new();
    for handler in &spec.handlers {
        if handler.name.is_empty() || handler.name == "_external" {
            return Err(format!("invalid handler name {:?}", handler.name));
        }
        if !names.insert(handler.name.as_str()) {
            return Err(format!("handler {:?} is named twice", handler.name));
        }
    }
    for (i, route) in spec.routes.iter().enumerate() {
        if route.from != "_external" && !names.contains(route.from.as_str()) {
            return Err(format!("route {i}: `from` {:?} is no handler", route.from));
        }
        if !names.contains(route.to.as_str()) {
            return Err(format!("route {i}: `to` {:?} is no handler", route.to));
        }
        if route.event_types.is_empty() {
            return Err(format!("route {i} has no event_types"));
        }
        for pattern in &route.event_types {
            let star = pattern.find('*');
            if pattern.is_empty() || star.is_some_and(|at| at != pattern.len() - 1) {
                return Err(format!(
                    "route {i}: pattern {pattern:?} (an exact name, a prefix ending in `*`, or `*`)"
                ));
            }
        }
    }
    Ok(())
}

/// The groups' event logs are in the journal: the latest `LOG_ENTRIES` handler runs
/// per group survive a coordinator restart.
impl Db {
    fn log_group_event(&self, group: &str, entry: &str) -> rusqlite::Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.prepare_cached("INSERT INTO group_events (group_id, entry) VALUES (?1, ?2)")?
            .execute(rusqlite::params![group, entry])?;
        let seq = tx.last_insert_rowid();
        tx.prepare_cached("DELETE FROM group_events WHERE group_id = ?1 AND seq <= ?2")?
            .execute(rusqlite::params![group, seq - LOG_ENTRIES as i64])?;
        tx.commit()
    }

    fn group_events(&self, group: &str) -> rusqlite::Result<Vec<Value>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT entry FROM group_events WHERE group_id = ?1 ORDER BY seq DESC LIMIT ?2",
        )?;
        let mut entries: Vec<Value> = stmt
            .query_map(rusqlite::params![group, LOG_ENTRIES as i64], |row| {
                row.get::<_, String>(0)
            })?
            .filter_map(|entry| entry.ok().and_then(|e| serde_json::from_str(&e).ok()))
            .collect();
        entries.reverse();
        Ok(entries)
    }

    fn forget_group_events(&self, group: &str) -> rusqlite::Result<()> {
        self.conn()
            .prepare_cached("DELETE FROM group_events WHERE group_id = ?1")?
            .execute(rusqlite::params![group])?;
        Ok(())
    }
}

fn demand_for(node: &Node, tenant: &str, worker: &HashHex) -> ApiResult<Demand> {
    let descriptor = node
        .worker(tenant, worker)?
        .ok_or_else(|| ApiError::NotFound(format!("worker {worker} is not registered")))?;
    Ok(Demand {
        requires: descriptor.requires.clone(),
        limits: descriptor.limits,
        module: descriptor.module,
        inputs: Vec::new(),
    })
}

fn load(
    state: &CoordinatorState,
    tenant: &str,
    id: &str,
) -> ApiResult<(GroupSpec, BTreeMap<String, String>)> {
    let (spec, placements) = state
        .node
        .db
        .group(tenant, id)?
        .ok_or_else(|| ApiError::NotFound(format!("group {id} not found")))?;
    let spec = serde_json::from_str(&spec).map_err(|e| ApiError::Internal(e.to_string()))?;
    let placements =
        serde_json::from_str(&placements).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((spec, placements))
}

fn describe(id: &str, spec: &GroupSpec, placements: &BTreeMap<String, String>) -> Value {
    let placements: Vec<Value> = spec
        .handlers
        .iter()
        .map(|h| json!({"handler": h.name, "node": placements.get(&h.name)}))
        .collect();
    json!({
        "id": id,
        "name": spec.name,
        "handlers": spec.handlers,
        "routes": spec.routes,
        "placements": placements,
    })
}

/// `POST /api/v1/cluster/groups`.
async fn deploy(
    State(state): State<CoordinatorState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    request: Request,
) -> ApiResult<Response> {
    let spec: GroupSpec = super::body(request, 1 << 20, false).await?;
    validate(&spec).map_err(|m| ApiError::BadRequest("invalid_request", m))?;
    let mut placements = BTreeMap::new();
    for handler in &spec.handlers {
        let demand = demand_for(&state.node, &tenant, &handler.worker)?;
        let node = state
            .fleet
            .pick(&demand, handler.node_affinity.as_deref())
            .ok_or_else(|| {
                ApiError::Unavailable(format!("no node can run handler {:?} now", handler.name))
            })?;
        placements.insert(handler.name.clone(), node);
    }
    let id = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
    let spec_json = serde_json::to_string(&spec).expect("specs serialize");
    let placements_json = serde_json::to_string(&placements).expect("placements serialize");
    state
        .node
        .db
        .put_group(&tenant, &id, &spec_json, &placements_json)?;
    tracing::info!(group = %id, name = %spec.name, "group deployed");
    let mut answer = describe(&id, &spec, &placements);
    answer["id"] = json!(id);
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// `GET /api/v1/cluster/groups/{id}`.
async fn get(
    State(state): State<CoordinatorState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let (spec, placements) = load(&state, &tenant, &id)?;
    Ok(Json(describe(&id, &spec, &placements)))
}

/// `DELETE /api/v1/cluster/groups/{id}`.
async fn delete(
    State(state): State<CoordinatorState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    if !state.node.db.delete_group(&tenant, &id)? {
        return Err(ApiError::NotFound(format!("group {id} not found")));
    }
    state.node.db.forget_group_events(&id)?;
    Ok(Json(json!({"id": id, "deleted": true})))
}

/// `GET /api/v1/cluster/groups/{id}/events`: the latest routed events, oldest first.
async fn events(
    State(state): State<CoordinatorState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    load(&state, &tenant, &id)?;
    let mut entries = state.node.db.group_events(&id)?;
    // Events are stored once, in the results of the runs that emitted them.
    let events_of = |lsn: &Value| -> Vec<Value> {
        lsn.as_u64()
            .and_then(|lsn| state.node.db.job(&tenant, lsn).ok().flatten())
            .and_then(|job| job.result)
            .map(|result| result.events)
            .unwrap_or_default()
    };
    for entry in &mut entries {
        if entry.get("lsn").is_none() {
            continue;
        }
        if let Some(source) = entry.get("source").cloned() {
            let index = source["index"].as_u64().unwrap_or(0) as usize;
            entry["event"] = events_of(&source["lsn"])
                .get(index)
                .cloned()
                .unwrap_or(Value::Null);
        }
        entry["output_events"] = Value::Array(events_of(&entry["lsn"]));
    }
    Ok(Json(json!({"id": id, "events": entries})))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Injection {
    Batch { events: Vec<EventIn> },
    One(EventIn),
}

/// `POST /api/v1/cluster/groups/{id}/inject`: one event, or `{"events": [...]}`.
async fn inject(
    State(state): State<CoordinatorState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(id): Path<String>,
    request: Request,
) -> ApiResult<Response> {
    let value: Value = super::body(request, 16 << 20, false).await?;
    let injection: Injection = serde_json::from_value(value).map_err(|e| {
        ApiError::BadRequest(
            "invalid_request",
            format!("an event is {{\"event_type\",\"fields\"}}, a batch {{\"events\":[...]}}: {e}"),
        )
    })?;
    let (spec, placements) = load(&state, &tenant, &id)?;
    let mut group = Running {
        state: &state,
        tenant: &tenant,
        id: &id,
        spec,
        placements,
        budget: Budget::new(state.fleet.config.inject_budget),
    };
    match injection {
        Injection::One(event) => Ok(Json(group.inject(event).await?).into_response()),
        Injection::Batch { events } => {
            if events.len() > MAX_BATCH {
                return Err(ApiError::TooLarge(format!(
                    "at most {MAX_BATCH} events per batch"
                )));
            }
            // Route everything first: a batch with an unroutable event runs nothing.
            for event in &events {
                if route(&group.spec.routes, "_external", &event.event_type).is_none() {
                    return Err(no_route(&event.event_type));
                }
            }
            let runs = events.into_iter().map(|e| {
                let mut one = group.fork();
                async move { one.inject(e).await }
            });
            let answers = futures_util::future::try_join_all(runs).await?;
            Ok(Json(json!({"results": answers})).into_response())
        }
    }
}

fn no_route(event_type: &str) -> ApiError {
    ApiError::Unprocessable(
        "no_route",
        format!("no route from _external matches event type {event_type:?}"),
    )
}

/// One inject in progress.
struct Running<'a> {
    state: &'a CoordinatorState,
    tenant: &'a str,
    id: &'a str,
    spec: GroupSpec,
    placements: BTreeMap<String, String>,
    budget: Arc<Budget>,
}

/// An event waiting for its handler: the handler, the event, its hop, and the run
/// that emitted it (its job's LSN and the event's index there), none when injected.
type Hop = (String, EventIn, usize, Option<(u64, usize)>);

impl<'a> Running<'a> {
    /// Appends to the group's event log.
    fn record(&self, entry: &Value) {
        if let Err(e) = self
            .state
            .node
            .db
            .log_group_event(self.id, &entry.to_string())
        {
            tracing::error!(group = self.id, error = %e, "writing a group's event log");
        }
    }

    fn fork(&self) -> Running<'a> {
        Running {
            state: self.state,
            tenant: self.tenant,
            id: self.id,
            spec: self.spec.clone(),
            placements: self.placements.clone(),
            budget: self.budget.clone(),
        }
    }

    async fn inject(&mut self, event: EventIn) -> ApiResult<Value> {
        let first = route(&self.spec.routes, "_external", &event.event_type)
            .ok_or_else(|| no_route(&event.event_type))?
            .to_string();
        let mut answer = Value::Null;
        let mut chain = Vec::new();
        let mut over_budget = 0u64;
        let mut pending: VecDeque<Hop> = VecDeque::from([(first, event, 1usize, None)]);
        while let Some((handler, event, hop, source)) = pending.pop_front() {
            if hop > MAX_HOPS {
                self.record(&json!({"handler": handler, "event_type": event.event_type, "source": source_json(source), "dropped": format!("hop limit {MAX_HOPS} reached")}));
                chain.push(json!({"handler": handler, "event_type": event.event_type, "dropped": "hop_limit"}));
                continue;
            }
            if !self.budget.take_run() {
                over_budget += 1 + pending.len() as u64;
                pending.clear();
                break;
            }
            let (node, result) = self.run(&handler, &event).await?;
            let mut entry = json!({
                "handler": handler, "node": node, "lsn": result.lsn, "state": result.state,
            });
            match source {
                Some(source) => entry["source"] = source_json(Some(source)),
                None => entry["event"] = json!(event),
            }
            self.record(&entry);
            if answer.is_null() {
                answer = json!({
                    "routed_to": handler, "node": node, "lsn": result.lsn,
                    "state": result.state, "output": result.output,
                    "output_events": result.events,
                });
            }
            chain.push(json!({"handler": handler, "node": node, "lsn": result.lsn, "event_type": event.event_type}));
            for (index, raw) in result.events.iter().enumerate() {
                let Ok(out) = serde_json::from_value::<EventIn>(raw.clone()) else {
                    continue;
                };
                let Some(next) = route(&self.spec.routes, &handler, &out.event_type) else {
                    continue;
                };
                let size = serde_json::to_vec(raw).map_or(0, |b| b.len() as u64);
                if !self.budget.take_bytes(size) {
                    over_budget += 1;
                    continue;
                }
                pending.push_back((next.to_string(), out, hop + 1, Some((result.lsn, index))));
            }
        }
        if over_budget > 0 {
            let budget = self.state.fleet.config.inject_budget;
            self.record(&json!({"dropped": "budget", "events": over_budget,
                "budget": {"runs": budget.runs, "bytes": budget.bytes}}));
            chain.push(json!({"dropped": "budget", "events": over_budget}));
        }
        answer["chain"] = Value::Array(chain);
        Ok(answer)
    }

    /// Runs one handler on its node (placing it again when that node is gone) and
    /// waits for the result.
    async fn run(&mut self, handler: &str, event: &EventIn) -> ApiResult<(String, JobResult)> {
        let spec = self
            .spec
            .handlers
            .iter()
            .find(|h| h.name == handler)
            .cloned()
            .ok_or_else(|| ApiError::Internal(format!("route to unknown handler {handler}")))?;
        let state = self.state;
        let placed = self.placements.get(handler).cloned();
        let node_id = match placed.filter(|n| state.fleet.available(n)) {
            Some(node) => node,
            None => {
                let demand = demand_for(&state.node, self.tenant, &spec.worker)?;
                let node = state
                    .fleet
                    .pick(&demand, spec.node_affinity.as_deref())
                    .ok_or_else(|| {
                        ApiError::Unavailable(format!("no node can run handler {handler:?} now"))
                    })?;
                tracing::info!(group = %self.id, handler, node = %node, "handler placed again");
                self.place(handler, &node)?;
                node
            }
        };
        let stdin = serde_json::to_vec(event).expect("events serialize");
        let input = state.node.cas.put_own(&stdin)?;
        state
            .node
            .db
            .own_blob(self.tenant, &input, stdin.len() as u64)?;
        // A fresh id per delivery, so an identical event runs again instead of being
        // answered from the result cache.
        let action = json!({
            "worker": spec.worker,
            "input": input,
            "env": {"WASMESH_EVENT_ID": uuid::Uuid::new_v4().simple().to_string(), "WASMESH_GROUP": self.id},
        });
        let submission = ActionSubmission::parse(action).map_err(ApiError::Internal)?;
        state.fleet.pin(submission.id, &node_id);
        let node = state.node.clone();
        let tenant = self.tenant.to_string();
        let submitted = tokio::task::spawn_blocking(move || {
            node.submit(
                &tenant,
                vec![submission],
                Some(crate::node::scheduler::PRIORITY_MAX),
                None,
            )
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
        let lsn = match submitted {
            crate::node::Submitted::Jobs(jobs) => jobs[0].0,
            crate::node::Submitted::Needs(needs) => {
                return Err(ApiError::Internal(format!(
                    "handler inputs missing: {needs:?}"
                )));
            }
        };
        let result = wait_result(&state.node, self.tenant, lsn).await?;
        // A run leaves its pinned node only when that node went away meanwhile: the
        // handler now lives where it ran.
        if !result.node.is_empty() && result.node != node_id && result.state != "cancelled" {
            tracing::info!(group = %self.id, handler, from = %node_id, to = %result.node, "handler moved with its run");
            self.place(handler, &result.node)?;
        }
        Ok((result.node.clone(), result))
    }

    /// Records that `handler` now lives on `node`, in memory and in the journal.
    fn place(&mut self, handler: &str, node: &str) -> ApiResult<()> {
        self.placements
            .insert(handler.to_string(), node.to_string());
        let spec_json = serde_json::to_string(&self.spec).expect("specs serialize");
        let placements = serde_json::to_string(&self.placements).expect("serialize");
        self.state
            .node
            .db
            .put_group(self.tenant, self.id, &spec_json, &placements)?;
        Ok(())
    }
}

/// A log entry's reference to the run that emitted its event.
fn source_json(source: Option<(u64, usize)>) -> Value {
    source.map_or(
        Value::Null,
        |(lsn, index)| json!({"lsn": lsn, "index": index}),
    )
}

async fn wait_result(node: &Arc<Node>, tenant: &str, lsn: u64) -> ApiResult<JobResult> {
    let deadline = tokio::time::Instant::now() + HANDLER_WAIT;
    let result = node
        .when_finished(
            || Ok::<_, ApiError>(node.db.job(tenant, lsn)?.and_then(|j| j.result)),
            Option::is_some,
            Some(deadline),
            None,
        )
        .await?;
    result.ok_or_else(|| {
        ApiError::Unavailable(format!(
            "handler job {lsn} did not finish within {HANDLER_WAIT:?}"
        ))
    })
}

/// Groups of every tenant with their placements, for the topology route.
/// The groups of the topology: every tenant's (`tenant: None`, for the operator) or
/// one tenant's own.
pub fn topology(node: &Node, tenant: Option<&str>) -> Vec<Value> {
    node.db
        .groups()
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, owner, _, _)| tenant.is_none_or(|t| t == owner))
        .filter_map(|(id, tenant, spec, placements)| {
            let spec: GroupSpec = serde_json::from_str(&spec).ok()?;
            let placements: BTreeMap<String, String> = serde_json::from_str(&placements).ok()?;
            let mut described = describe(&id, &spec, &placements);
            described["tenant"] = json!(tenant);
            Some(described)
        })
        .collect()
}

/// The group routes (tenant-scoped; the caller adds the tenant middleware).
pub fn routes() -> Router<CoordinatorState> {
    use axum::routing::{get as get_route, post};
    Router::new()
        .route("/api/v1/cluster/groups", post(deploy))
        .route("/api/v1/cluster/groups/{id}", get_route(get).delete(delete))
        .route("/api/v1/cluster/groups/{id}/inject", post(inject))
        .route("/api/v1/cluster/groups/{id}/events", get_route(events))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(from: &str, to: &str, types: &[&str]) -> RouteSpec {
        RouteSpec {
            from: from.into(),
            to: to.into(),
            event_types: types.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn patterns_and_first_match_wins() {
        assert!(matches("Temp*", "TempHigh"));
        assert!(matches("Temp*", "Temp"));
        assert!(!matches("Temp*", "Humidity"));
        assert!(matches("*", "anything"));
        assert!(matches("Reading", "Reading"));
        assert!(!matches("Reading", "Readings"));
        let routes = vec![
            r("_external", "a", &["Temp*"]),
            r("_external", "b", &["*"]),
            r("a", "b", &["Alert"]),
        ];
        assert_eq!(route(&routes, "_external", "TempHigh"), Some("a"));
        assert_eq!(route(&routes, "_external", "Other"), Some("b"));
        assert_eq!(route(&routes, "a", "Alert"), Some("b"));
        assert_eq!(route(&routes, "a", "Nope"), None);
        assert_eq!(route(&routes, "b", "Alert"), None);
    }

    #[test]
    fn specs_are_validated() {
        let handler = |name: &str| HandlerSpec {
            name: name.into(),
            worker: HashHex([1; 32]),
            node_affinity: None,
        };
        let spec = |handlers: Vec<HandlerSpec>, routes: Vec<RouteSpec>| GroupSpec {
            name: "g".into(),
            handlers,
            routes,
        };
        assert!(validate(&spec(vec![handler("a")], vec![r("_external", "a", &["*"])])).is_ok());
        assert!(validate(&spec(vec![], vec![])).is_err());
        assert!(validate(&spec(vec![handler("a"), handler("a")], vec![])).is_err());
        assert!(validate(&spec(vec![handler("a")], vec![r("x", "a", &["*"])])).is_err());
        assert!(validate(&spec(vec![handler("a")], vec![r("_external", "b", &["*"])])).is_err());
        assert!(
            validate(&spec(
                vec![handler("a")],
                vec![r("_external", "a", &["T*x"])]
            ))
            .is_err()
        );
        assert!(validate(&spec(vec![handler("a")], vec![r("_external", "a", &[])])).is_err());
    }
}
