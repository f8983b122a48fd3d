//! The route × principal matrix (issue 25's first mechanism): every route of the real
//! routers (a keyed node, a fleet node, a coordinator), found by reading the router
//! sources, is called in-process (`tower::ServiceExt::oneshot`) by every principal,
//! and the answer must be the one its access class gives that principal. A route
//! without a class in [`ACCESS`] fails the test, so a new route is placed in the
//! matrix before it ships. (It would have caught issue 25's items 1, 15 and 16.)

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request};
use serde_json::{Value, json};
use tower::ServiceExt;
use wasmesh_host::api::auth::{Auth, Role};
use wasmesh_host::api::cluster::node_auth::NodeAuth;
use wasmesh_host::api::cluster::{CoordinatorState, routes};
use wasmesh_host::api::exposure::{Serving, admit};
use wasmesh_host::api::{AppState, app, app_with};
use wasmesh_host::cluster::autoscale::provision::Static;
use wasmesh_host::cluster::autoscale::{Autoscaling, policy::Policy};
use wasmesh_host::cluster::{CoordinatorConfig, Fleet};
use wasmesh_host::engine::{Engine, NodeConfig};
use wasmesh_host::model::HashHex;
use wasmesh_test_support::{TEST_GUEST, guest_bytes};

const A: &str = "matrix-acme-key-0001";
const B: &str = "matrix-globex-key-002";
const OPS: &str = "matrix-operator-key-3";
const NODE: &str = "matrix-shared-node-key";
const OTHER_NODE: &str = "matrix-key-of-node-n2";

/// Who calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Nobody,
    WrongKey,
    TenantB,
    NodeKey,
    OtherNodeKey,
    Operator,
    TenantA,
}

/// In this order: tenant A last, so what A's calls change (a job retired) is seen by
/// no one after it on the same route.
const EVERYONE: [Who; 7] = [
    Who::Nobody,
    Who::WrongKey,
    Who::TenantB,
    Who::NodeKey,
    Who::OtherNodeKey,
    Who::Operator,
    Who::TenantA,
];

impl Who {
    fn key(self) -> Option<&'static str> {
        match self {
            Who::Nobody => None,
            Who::WrongKey => Some("matrix-wrong-key-00000"),
            Who::TenantA => Some(A),
            Who::TenantB => Some(B),
            Who::Operator => Some(OPS),
            Who::NodeKey => Some(NODE),
            Who::OtherNodeKey => Some(OTHER_NODE),
        }
    }
}

/// What a route lets through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// Anyone.
    Public,
    /// A login: the client keys (tenant or operator) get a session; nobody else.
    Login,
    /// Any client key, each tenant its own objects (a collection, or a creation).
    Tenant,
    /// Any client key, and the path names tenant A's object: another tenant (B,
    /// and the operator, a tenant of its own) is answered 404.
    Scoped,
    /// As `Scoped`, but the operator reads every tenant's (a job and its details).
    OperatorReads,
    /// The operator only (403 for a tenant).
    Operator,
    /// Node keys, each for its own node id only (403 for another node's key).
    Node,
}

/// Every route's class, as `"METHOD path"` of the router source.
const ACCESS: &[(&str, Access)] = &[
    ("GET /health", Access::Public),
    ("GET /compute/ready", Access::Public),
    ("GET /ui", Access::Public),
    ("GET /ui/", Access::Public),
    ("GET /ui/{*path}", Access::Public),
    ("POST /ui/login", Access::Login),
    ("POST /ui/logout", Access::Public),
    ("GET /ui/session", Access::Public),
    ("GET /compute/sysinfo", Access::Tenant),
    ("GET /metrics", Access::Operator),
    ("GET /compute/events", Access::Tenant),
    ("POST /cas/needs", Access::Tenant),
    ("GET /cas/{hash}", Access::Scoped),
    ("HEAD /cas/{hash}", Access::Scoped),
    ("PUT /cas/{hash}", Access::Tenant),
    ("POST /compute/workers", Access::Tenant),
    ("GET /compute/workers", Access::Tenant),
    ("POST /compute/workers/{id}", Access::Tenant),
    ("GET /compute/workers/{id}", Access::Scoped),
    ("POST /compute/jobs", Access::Tenant),
    ("GET /compute/jobs", Access::Tenant),
    ("GET /compute/jobs/completed", Access::Tenant),
    ("POST /compute/jobs/{id}", Access::Scoped),
    ("GET /compute/jobs/{id}", Access::OperatorReads),
    ("DELETE /compute/jobs/{id}", Access::Scoped),
    ("POST /compute/jobs/{id}/cancel", Access::Scoped),
    ("GET /compute/jobs/{id}/details", Access::OperatorReads),
    ("POST /compute/jobs/{id}/priority", Access::Scoped),
    ("POST /compute/jobs/{id}/reschedule", Access::Scoped),
    ("GET /compute/jobs/{id}/{action}", Access::Scoped),
    ("POST /compute/queues", Access::Tenant),
    ("GET /compute/queues", Access::Tenant),
    ("POST /compute/queues/remote", Access::Tenant),
    ("GET /compute/queues/{q}", Access::Scoped),
    ("DELETE /compute/queues/{q}", Access::Scoped),
    ("POST /compute/queues/{q}/drain", Access::Scoped),
    ("GET /compute/queues/{q}/completed", Access::Scoped),
    ("GET /compute/queues/{q}/events", Access::Scoped),
    ("POST /compute/queues/{q}/jobs", Access::Scoped),
    ("POST /compute/queues/{q}/jobs/{id}", Access::Scoped),
    ("GET /compute/queues/{q}/jobs/{id}", Access::Scoped),
    ("GET /compute/usage", Access::Tenant),
    ("POST /compute/gc", Access::Operator),
    ("POST /compute/record/start", Access::Tenant),
    ("POST /compute/record/stop", Access::Tenant),
    ("DELETE /compute/record/{id}", Access::Tenant),
    ("POST /api/v1/webhooks", Access::Tenant),
    ("GET /api/v1/webhooks", Access::Tenant),
    ("GET /api/v1/webhooks/{id}", Access::Scoped),
    ("DELETE /api/v1/webhooks/{id}", Access::Scoped),
    ("POST /api/v1/webhooks/{id}/enable", Access::Scoped),
    ("GET /api/v1/webhooks/{id}/deliveries", Access::Scoped),
    // A coordinator's: the node protocol.
    ("POST /api/v1/cluster/nodes/register", Access::Node),
    ("POST /api/v1/cluster/nodes/{id}/heartbeat", Access::Node),
    ("POST /api/v1/cluster/nodes/{id}/work", Access::Node),
    ("POST /api/v1/cluster/nodes/{id}/results", Access::Node),
    ("POST /api/v1/cluster/nodes/{id}/leave", Access::Node),
    ("GET /api/v1/cluster/blobs/{hash}", Access::Node),
    ("PUT /api/v1/cluster/blobs/{hash}", Access::Node),
    // Fleet administration.
    ("GET /api/v1/cluster/nodes", Access::Operator),
    ("GET /api/v1/cluster/nodes/{id}", Access::Operator),
    ("DELETE /api/v1/cluster/nodes/{id}", Access::Operator),
    ("POST /api/v1/cluster/nodes/{id}/drain", Access::Operator),
    ("GET /api/v1/cluster/topology", Access::Tenant),
    ("GET /api/v1/cluster/autoscaler", Access::Operator),
    // Event-handler groups (none exists: every caller that passes gets 404).
    ("POST /api/v1/cluster/groups", Access::Tenant),
    ("GET /api/v1/cluster/groups/{id}", Access::Tenant),
    ("DELETE /api/v1/cluster/groups/{id}", Access::Tenant),
    ("POST /api/v1/cluster/groups/{id}/inject", Access::Tenant),
    ("GET /api/v1/cluster/groups/{id}/events", Access::Tenant),
];

/// Every `.route("path", methods)` in the router sources, as `"METHOD path"`.
fn routes_in_source() -> BTreeSet<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api");
    let mut found = BTreeSet::new();
    let mut files = vec![dir];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find(".route(") {
            rest = &rest[at + ".route(".len()..];
            // The call's text, to its closing parenthesis.
            let mut depth = 1;
            let end = rest
                .char_indices()
                .find(|(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map(|(i, _)| i)
                .unwrap();
            let call = &rest[..end];
            let Some(path) = call.split('"').nth(1) else {
                continue;
            };
            if !path.starts_with('/') {
                continue;
            }
            let words: Vec<&str> = call
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '('))
                .collect();
            for word in words {
                let Some(open) = word.find('(') else { continue };
                let method = match &word[..=open] {
                    "get(" | "get_route(" => "GET",
                    "post(" => "POST",
                    "put(" => "PUT",
                    "delete(" => "DELETE",
                    "head(" => "HEAD",
                    "patch(" => "PATCH",
                    _ => continue,
                };
                found.insert(format!("{method} {path}"));
            }
        }
    }
    found
}

/// Tenant A's objects, named in the paths.
struct Objects {
    blob: HashHex,
    worker: String,
    lsn: u64,
    action: String,
    queue: String,
    webhook: String,
}

/// `path` with its parameters filled for `method`.
fn fill(method: &str, path: &str, objects: &Objects) -> String {
    // `{id}` is a worker where a job is submitted for one, or a cached answer read.
    let names_worker = path.starts_with("/compute/workers/")
        || path.starts_with("/compute/jobs/{id}/{action}")
        || (method == "POST"
            && (path == "/compute/jobs/{id}" || path == "/compute/queues/{q}/jobs/{id}"));
    let mut filled = path
        .replace("{hash}", &objects.blob.to_string())
        .replace("{action}", &objects.action)
        .replace("{q}", &objects.queue)
        .replace("{*path}", "jobs/1");
    let id = if names_worker {
        objects.worker.clone()
    } else if path.starts_with("/compute/") {
        objects.lsn.to_string()
    } else if path.starts_with("/api/v1/webhooks/") {
        objects.webhook.clone()
    } else if path.starts_with("/api/v1/cluster/nodes/") {
        "n1".to_string()
    } else {
        "g-none".to_string()
    };
    filled = filled.replace("{id}", &id);
    if path == "/api/v1/cluster/blobs/{hash}" {
        filled.push_str("?node=n1&lsn=1&attempt=1");
    }
    filled
}

/// The body a call sends: a node's registration names node n1, everything else `{}`.
fn body_for(path: &str) -> String {
    if path.ends_with("/register") {
        json!({"id": "n1", "address": "http://127.0.0.1:9", "slots": 1}).to_string()
    } else if path.ends_with("/priority") {
        json!({"priority": 1}).to_string()
    } else {
        "{}".to_string()
    }
}

async fn call(router: &Router, who: Who, method: &str, path: &str, body: String) -> (u16, Value) {
    let mut request = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(path)
        .header("content-type", "application/json");
    if let Some(key) = who.key() {
        request = request.header("x-api-key", key);
    }
    let response = router
        .clone()
        .oneshot(request.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    // Streams (the change feed) answer their head at once; their body is not read.
    let is_stream = response
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap_or("").starts_with("text/event-stream"));
    if is_stream {
        return (status, Value::Null);
    }
    let bytes = tokio::time::timeout(
        Duration::from_secs(30),
        axum::body::to_bytes(response.into_body(), 1 << 20),
    )
    .await
    .map(|b| b.unwrap_or_default())
    .unwrap_or_default();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Whether the answer refuses the caller for who it is (not for what it asked).
fn denied(status: u16, body: &Value) -> bool {
    status == 401
        || status == 429
        || (status == 403 && matches!(body["error"]["code"].as_str(), Some("forbidden")))
}

/// What `who` must get from a route of class `access` on a server of kind `mode`.
fn expect(mode: Mode, access: Access, who: Who, status: u16, body: &Value) -> Result<(), String> {
    let client_key = matches!(who, Who::TenantA | Who::TenantB | Who::Operator);
    let (admitted, forbidden) = match (mode, access) {
        (_, Access::Public) => (true, false),
        // A fleet node has no tenants: only its operator key (for Prometheus).
        (Mode::FleetNode, Access::Login) => (who == Who::Operator, false),
        (Mode::FleetNode, _) => (who == Who::Operator, false),
        (_, Access::Login) => (client_key, false),
        (_, Access::Tenant | Access::Scoped | Access::OperatorReads) => (client_key, false),
        (_, Access::Operator) => (
            who == Who::Operator,
            matches!(who, Who::TenantA | Who::TenantB),
        ),
        (_, Access::Node) => (who == Who::NodeKey, who == Who::OtherNodeKey),
    };
    let code = body["error"]["code"].as_str().unwrap_or("");
    let ok = if admitted {
        let scoped_away = mode != Mode::FleetNode
            && who != Who::TenantA
            && (access == Access::Scoped
                || (access == Access::OperatorReads && who != Who::Operator));
        if scoped_away {
            status == 404
        } else {
            !denied(status, body)
        }
    } else if forbidden {
        status == 403 && code == "forbidden"
    } else {
        status == 401
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{who:?}: {status} {code} (admitted: {admitted}, forbidden: {forbidden})"
        ))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    KeyedNode,
    FleetNode,
    Coordinator,
}

fn keyed_auth() -> Auth {
    let mut auth = Auth::open();
    auth.add("matrix", "acme", A, Role::Tenant).unwrap();
    auth.add("matrix", "globex", B, Role::Tenant).unwrap();
    auth.add("matrix", "operator", OPS, Role::Operator).unwrap();
    auth
}

/// A call that must succeed (making tenant A's objects).
async fn must(router: &Router, method: &str, path: &str, body: Value) -> Value {
    let (status, answer) = call(router, Who::TenantA, method, path, body.to_string()).await;
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {answer}"
    );
    answer
}

/// Tenant A's worker, blob, job, queue and webhook on `router`.
async fn objects_of_a(router: &Router) -> Objects {
    let wasm = guest_bytes(TEST_GUEST);
    let module = HashHex::of(&wasm);
    let request = Request::builder()
        .method("PUT")
        .uri(format!("/cas/{module}"))
        .header("x-api-key", A)
        .body(Body::from(wasm))
        .unwrap();
    let put = router.clone().oneshot(request).await.unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let worker = must(
        router,
        "POST",
        "/compute/workers",
        json!({"name": "m", "module": module}),
    )
    .await["worker"]
        .as_str()
        .unwrap()
        .to_string();
    let queue = must(router, "POST", "/compute/queues/remote", json!({})).await["queue_token"]
        .as_str()
        .unwrap()
        .to_string();
    let job = must(
        router,
        "POST",
        &format!("/compute/queues/{queue}/jobs"),
        json!({"worker": worker, "args": ["sleep", "60000"]}),
    )
    .await;
    let lsn = job["lsn"]
        .as_u64()
        .or(job["jobs"][0]["lsn"].as_u64())
        .unwrap();
    let action = job["action"]
        .as_str()
        .or(job["jobs"][0]["action"].as_str())
        .unwrap_or_default()
        .to_string();
    let webhook = must(
        router,
        "POST",
        "/api/v1/webhooks",
        json!({"url": "https://hooks.example.com/x", "events": ["job.succeeded"]}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    Objects {
        blob: module,
        worker,
        lsn,
        action,
        queue,
        webhook,
    }
}

/// Runs the matrix on `router` for the routes it has; returns the routes it checked.
async fn run(mode: Mode, router: Router, has_cluster_routes: bool) -> Vec<String> {
    // No connection info: the caller counts as remote (local queues refused), and
    // failed keys are not throttled (no peer), so every principal gets its answer.
    let objects = match mode {
        Mode::FleetNode => Objects {
            blob: HashHex::of(b"x"),
            worker: HashHex::of(b"w").to_string(),
            lsn: 1,
            action: HashHex::of(b"a").to_string(),
            queue: "q".into(),
            webhook: "w".into(),
        },
        _ => objects_of_a(&router).await,
    };
    let mut routes: Vec<(&str, Access)> = ACCESS
        .iter()
        .copied()
        .filter(|(route, _)| has_cluster_routes || !route.contains("/api/v1/cluster/"))
        .collect();
    // Deletions last, so the objects stay for the other routes.
    routes.sort_by_key(|(route, _)| route.starts_with("DELETE"));
    let mut failures = Vec::new();
    let mut checked = Vec::new();
    for (route, access) in routes {
        let (method, path) = route.split_once(' ').unwrap();
        let uri = fill(method, path, &objects);
        for who in EVERYONE {
            let body = if path == "/ui/login" {
                json!({"key": who.key().unwrap_or("")}).to_string()
            } else {
                body_for(path)
            };
            let (status, answer) = call(&router, who, method, &uri, body).await;
            if let Err(why) = expect(mode, access, who, status, &answer) {
                failures.push(format!("{mode:?} {method} {uri}: {why}"));
            }
        }
        checked.push(route.to_string());
    }
    assert!(
        failures.is_empty(),
        "{} wrong answers:\n{}",
        failures.len(),
        failures.join("\n")
    );
    checked
}

fn engine(dir: &std::path::Path) -> Arc<Engine> {
    Engine::open(NodeConfig::new(dir.to_path_buf())).unwrap()
}

#[test]
fn every_route_is_in_the_matrix() {
    let listed: BTreeSet<String> = ACCESS.iter().map(|(r, _)| r.to_string()).collect();
    let found = routes_in_source();
    assert!(found.len() > 50, "the source scan found only {found:?}");
    let unlisted: Vec<_> = found.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "routes without an access class: {unlisted:?}"
    );
    let stale: Vec<_> = listed.difference(&found).collect();
    assert!(
        stale.is_empty(),
        "classes of routes that no longer exist: {stale:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_keyed_node_answers_each_principal_as_its_class_says() {
    let dir = tempfile::tempdir().unwrap();
    let router = app(AppState::new(engine(dir.path()), Arc::new(keyed_auth())));
    run(Mode::KeyedNode, router, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_node_answers_nobody_but_its_operator() {
    let dir = tempfile::tempdir().unwrap();
    // A fleet node as the manifests start it: no client keys; an operator key for
    // Prometheus. Its client routes are closed.
    let mut auth = Auth::closed();
    auth.add("matrix", "operator", OPS, Role::Operator).unwrap();
    let bind: SocketAddr = "0.0.0.0:9000".parse().unwrap();
    let closed = admit(Serving::Node { joined: true }, Auth::open(), bind, false).unwrap();
    assert!(closed.is_closed());
    let router = app(AppState::new(engine(dir.path()), Arc::new(auth)));
    run(Mode::FleetNode, router, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_answers_each_principal_as_its_class_says() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = Arc::new(Fleet::new(CoordinatorConfig::default()));
    let mut config = NodeConfig::new(dir.path().to_path_buf());
    config.id = "coordinator".into();
    config.slots = 1;
    let engine = Engine::open_with(config, fleet.clone()).unwrap();
    let keys = dir.path().join("nodes.toml");
    std::fs::write(&keys, format!("n2 = \"{OTHER_NODE}\"\n")).unwrap();
    let auth = Arc::new(keyed_auth());
    let cluster = routes(CoordinatorState {
        engine: engine.clone(),
        fleet: fleet.clone(),
        auth: auth.clone(),
        node_auth: Arc::new(NodeAuth::new(Some(NODE), Some(&keys)).unwrap()),
        autoscaling: Autoscaling::new(Policy::default(), Box::new(Static), Duration::from_secs(60)),
    });
    let router = app_with(
        AppState {
            engine,
            auth,
            fleet: Some(fleet),
        },
        cluster,
    );
    let checked = run(Mode::Coordinator, router, true).await;
    assert_eq!(checked.len(), ACCESS.len(), "a coordinator has every route");
}

/// Regression (issue 25, item 20): a batch was scheduled job by job, so the
/// autoscaler could look between its jobs and see part of it (1.0 s of queued work
/// announced for a batch of three under load). A watcher takes the autoscaler's
/// look (`work_ahead`) as fast as it can while batches are submitted: every look
/// sees whole batches.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_enters_the_schedule_whole() {
    const BATCH: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let router = app(AppState::new(engine.clone(), Arc::new(keyed_auth())));
    let objects = objects_of_a(&router).await;
    // One job of objects_of_a is queued already.
    let base = engine.work_ahead().queued_jobs;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (engine, stop) = (engine.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut looks = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                looks.push(engine.work_ahead().queued_jobs - base);
            }
            looks
        })
    };
    for round in 0..20 {
        let batch: Vec<Value> = (0..BATCH)
            .map(|i| json!({"worker": objects.worker, "args": ["sleep", format!("{round}{i}")]}))
            .collect();
        must(&router, "POST", "/compute/jobs", json!({"actions": batch})).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let looks = watcher.join().unwrap();
    let partial: Vec<_> = looks.iter().filter(|n| *n % BATCH != 0).collect();
    assert!(looks.len() > 20, "the watcher looked {} times", looks.len());
    assert!(
        partial.is_empty(),
        "looks that saw part of a batch: {partial:?}"
    );
    assert_eq!(engine.work_ahead().queued_jobs - base, 20 * BATCH);
}
