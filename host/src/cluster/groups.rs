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
//! events routed on ([`crate::cluster::budget::InjectBudget`]): the hop limit
//! bounds how deep a chain goes, the budget how wide. What is over it is dropped and
//! logged once as `"dropped": "budget"`. The event log stores each event once: the
//! injected ones in their entry, emitted ones as a reference to the run that emitted
//! them (its job's result has them), expanded when the log is read.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::budget::Budget;
use super::fleet::Fleet;
use super::placement::Demand;
use crate::engine::scheduler::PRIORITY_MAX;
use crate::engine::{ActionSubmission, Engine, EngineError, Submitted};
use crate::model::{HashHex, JobResult, JobState};

/// Handlers one injected event may run through, counting the first.
pub const MAX_HOPS: usize = 8;

/// Entries kept per group in its event log.
pub const LOG_ENTRIES: usize = 1000;

/// How long one handler run may take before `inject` gives up waiting.
const HANDLER_WAIT: Duration = Duration::from_secs(120);

/// Events per batch inject.
pub const MAX_BATCH: usize = 1000;

/// Why a group request failed. The API maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// The tenant has no such group (or worker).
    #[error("{0}")]
    NotFound(String),
    /// No node can run a handler now.
    #[error("{0}")]
    Unavailable(String),
    /// No route from `_external` matches this event type.
    #[error("no route from _external matches event type {0:?}")]
    NoRoute(String),
    /// The engine refused (a submission).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Something failed on the host.
    #[error("{0}")]
    Internal(String),
}

impl From<crate::store::StoreError> for GroupError {
    fn from(e: crate::store::StoreError) -> Self {
        GroupError::Internal(format!("database: {e}"))
    }
}

impl From<std::io::Error> for GroupError {
    fn from(e: std::io::Error) -> Self {
        GroupError::Internal(format!("store: {e}"))
    }
}

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

/// Checks a spec: named, handlers unique, routes between known handlers with valid
/// patterns.
pub fn validate(spec: &GroupSpec) -> Result<(), String> {
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

/// What running one handler needs of the fleet: the worker's requirements.
pub fn demand_for(engine: &Engine, tenant: &str, worker: &HashHex) -> Result<Demand, GroupError> {
    let descriptor = engine
        .worker(tenant, worker)?
        .ok_or_else(|| GroupError::NotFound(format!("worker {worker} is not registered")))?;
    Ok(Demand {
        requires: descriptor.requires.clone(),
        limits: descriptor.limits,
        module: descriptor.module,
        inputs: Vec::new(),
    })
}

/// One of `tenant`'s groups: its spec and where its handlers live.
pub fn load(
    engine: &Engine,
    tenant: &str,
    id: &str,
) -> Result<(GroupSpec, BTreeMap<String, String>), GroupError> {
    let (spec, placements) = engine
        .store()
        .tenant(tenant)
        .group(id)?
        .ok_or_else(|| GroupError::NotFound(format!("group {id} not found")))?;
    let spec = serde_json::from_str(&spec).map_err(|e| GroupError::Internal(e.to_string()))?;
    let placements =
        serde_json::from_str(&placements).map_err(|e| GroupError::Internal(e.to_string()))?;
    Ok((spec, placements))
}

pub fn describe(id: &str, spec: &GroupSpec, placements: &BTreeMap<String, String>) -> Value {
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

/// One inject in progress.
#[derive(Debug)]
pub struct Running<'a> {
    engine: &'a Arc<Engine>,
    fleet: &'a Fleet,
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
    /// An inject into one of `tenant`'s groups, with a fresh budget.
    pub fn new(
        engine: &'a Arc<Engine>,
        fleet: &'a Fleet,
        tenant: &'a str,
        id: &'a str,
    ) -> Result<Self, GroupError> {
        let (spec, placements) = load(engine, tenant, id)?;
        Ok(Running {
            engine,
            fleet,
            tenant,
            id,
            spec,
            placements,
            budget: Budget::new(fleet.config.inject_budget),
        })
    }

    /// The group's routes.
    pub fn routes(&self) -> &[RouteSpec] {
        &self.spec.routes
    }

    /// Appends to the group's event log.
    fn record(&self, entry: &Value) {
        if let Err(e) =
            self.engine
                .store()
                .log_group_event(self.id, &entry.to_string(), LOG_ENTRIES)
        {
            tracing::error!(group = self.id, error = %e, "writing a group's event log");
        }
    }

    /// Another inject sharing this one's budget (one event of a batch).
    pub fn fork(&self) -> Running<'a> {
        Running {
            engine: self.engine,
            fleet: self.fleet,
            tenant: self.tenant,
            id: self.id,
            spec: self.spec.clone(),
            placements: self.placements.clone(),
            budget: self.budget.clone(),
        }
    }

    /// Runs the handler the event routes to, then the handlers its events route to,
    /// hop by hop; answers the first run and the chain.
    pub async fn inject(&mut self, event: EventIn) -> Result<Value, GroupError> {
        let first = route(&self.spec.routes, "_external", &event.event_type)
            .ok_or_else(|| GroupError::NoRoute(event.event_type.clone()))?
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
                    "output_events": self.engine.result_events(&result),
                });
            }
            chain.push(json!({"handler": handler, "node": node, "lsn": result.lsn, "event_type": event.event_type}));
            let events = self.engine.result_events(&result);
            // What the run stored counts against the inject, routed or not: past the
            // budget nothing more is routed.
            let produced =
                serde_json::to_vec(&events).map_or(0, |b| b.len() as u64) + result.output_size;
            if !self.budget.take_produced(produced) {
                over_budget += events.len() as u64 + pending.len() as u64;
                pending.clear();
                continue;
            }
            for (index, raw) in events.iter().enumerate() {
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
            let budget = self.fleet.config.inject_budget;
            self.record(&json!({"dropped": "budget", "events": over_budget,
                "budget": {"runs": budget.runs, "bytes": budget.bytes, "produced": budget.produced}}));
            chain.push(json!({"dropped": "budget", "events": over_budget}));
        }
        answer["chain"] = Value::Array(chain);
        Ok(answer)
    }

    /// Runs one handler on its node (placing it again when that node is gone) and
    /// waits for the result.
    async fn run(
        &mut self,
        handler: &str,
        event: &EventIn,
    ) -> Result<(String, JobResult), GroupError> {
        let spec = self
            .spec
            .handlers
            .iter()
            .find(|h| h.name == handler)
            .cloned()
            .ok_or_else(|| GroupError::Internal(format!("route to unknown handler {handler}")))?;
        let placed = self.placements.get(handler).cloned();
        let node_id = match placed.filter(|n| self.fleet.available(n, Instant::now())) {
            Some(node) => node,
            None => {
                let demand = demand_for(self.engine, self.tenant, &spec.worker)?;
                let node = self
                    .fleet
                    .pick(&demand, spec.node_affinity.as_deref(), Instant::now())
                    .ok_or_else(|| {
                        GroupError::Unavailable(format!("no node can run handler {handler:?} now"))
                    })?;
                tracing::info!(group = %self.id, handler, node = %node, "handler placed again");
                self.place(handler, &node)?;
                node
            }
        };
        let stdin = serde_json::to_vec(event).expect("events serialize");
        let input = self.engine.cas().put_own(&stdin)?;
        self.engine
            .store()
            .tenant(self.tenant)
            .own_blob(&input, stdin.len() as u64)?;
        // A fresh id per delivery, so an identical event runs again instead of being
        // answered from the result cache.
        let action = json!({
            "worker": spec.worker,
            "input": input,
            "env": {"WASMESH_EVENT_ID": uuid::Uuid::new_v4().simple().to_string(), "WASMESH_GROUP": self.id},
        });
        let submission = ActionSubmission::parse(action).map_err(GroupError::Internal)?;
        self.fleet.pin(submission.id, &node_id);
        let engine = self.engine.clone();
        let tenant = self.tenant.to_string();
        let submitted = tokio::task::spawn_blocking(move || {
            engine.submit(&tenant, vec![submission], Some(PRIORITY_MAX), None)
        })
        .await
        .map_err(|e| GroupError::Internal(e.to_string()))??;
        let lsn = match submitted {
            Submitted::Jobs(jobs) => jobs[0].0,
            Submitted::Needs(needs) => {
                return Err(GroupError::Internal(format!(
                    "handler inputs missing: {needs:?}"
                )));
            }
        };
        let result = wait_result(self.engine, self.tenant, lsn).await?;
        // A run leaves its pinned node only when that node went away meanwhile: the
        // handler now lives where it ran.
        if !result.node.is_empty() && result.node != node_id && result.state != JobState::Cancelled
        {
            tracing::info!(group = %self.id, handler, from = %node_id, to = %result.node, "handler moved with its run");
            self.place(handler, &result.node)?;
        }
        Ok((result.node.clone(), result))
    }

    /// Records that `handler` now lives on `node`, in memory and in the journal.
    fn place(&mut self, handler: &str, node: &str) -> Result<(), GroupError> {
        self.placements
            .insert(handler.to_string(), node.to_string());
        let spec_json = serde_json::to_string(&self.spec).expect("specs serialize");
        let placements = serde_json::to_string(&self.placements).expect("serialize");
        self.engine
            .store()
            .tenant(self.tenant)
            .put_group(self.id, &spec_json, &placements)?;
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

async fn wait_result(engine: &Engine, tenant: &str, lsn: u64) -> Result<JobResult, GroupError> {
    let deadline = tokio::time::Instant::now() + HANDLER_WAIT;
    let result = engine
        .when_finished(
            || Ok::<_, GroupError>(engine.store().tenant(tenant).result(lsn)?),
            Option::is_some,
            Some(deadline),
            None,
        )
        .await?;
    result.ok_or_else(|| {
        GroupError::Unavailable(format!(
            "handler job {lsn} did not finish within {HANDLER_WAIT:?}"
        ))
    })
}

/// The groups of the topology: every tenant's (`tenant: None`, for the operator) or
/// one tenant's own.
pub fn topology(engine: &Engine, tenant: Option<&str>) -> Vec<Value> {
    let groups = match tenant {
        Some(tenant) => engine.store().tenant(tenant).groups(),
        None => engine.store().unscoped().groups(),
    };
    groups
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(id, tenant, spec, placements)| {
            let spec: GroupSpec = serde_json::from_str(&spec).ok()?;
            let placements: BTreeMap<String, String> = serde_json::from_str(&placements).ok()?;
            let mut described = describe(&id, &spec, &placements);
            described["tenant"] = json!(tenant);
            Some(described)
        })
        .collect()
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
