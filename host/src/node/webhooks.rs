//! Webhooks: a tenant registers a URL for some events (`job.succeeded`, `job.failed`,
//! `queue.completed`, `node.unhealthy`, `node.ready`); each event becomes a delivery
//! row in the journal (so a restart loses none), and a delivery task POSTs it signed
//! per the Standard Webhooks spec (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>`), retrying with
//! exponential backoff and jitter. An endpoint whose attempts keep failing is disabled
//! and its pending deliveries fail.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use rand::Rng;
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::{Notify, Semaphore};

use crate::node::Node;
use crate::node::address::is_public;
use crate::node::db::{Db, now_ms};

/// The events a webhook may subscribe to.
pub const EVENTS: &[&str] = &[
    "job.succeeded",
    "job.failed",
    "queue.completed",
    "node.unhealthy",
    "node.ready",
];

/// Deliveries sent at once.
const CONCURRENCY: usize = 8;

/// Queue completions remembered to announce each once.
const COMPLETIONS_REMEMBERED: usize = 100_000;

/// Longest wait between two attempts of one delivery.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// How deliveries are retried and when an endpoint is given up on.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// The wait before the first retry; it doubles with each attempt (with jitter).
    pub retry_base: Duration,
    /// Attempts per delivery before it fails.
    pub max_attempts: u32,
    /// Consecutive failed attempts (across deliveries) after which the endpoint is
    /// disabled.
    pub disable_after: u32,
    /// How long one attempt may take.
    pub timeout: Duration,
    /// Whether endpoints may be loopback, private, link-local or other non-public
    /// addresses. Off by default: a tenant must not be able to make the server call
    /// services on its own network (SSRF).
    pub allow_private: bool,
    /// Extra root certificates (PEM) trusted for https endpoints besides the built-in
    /// webpki roots: a receiver behind a private CA.
    pub extra_roots: Vec<reqwest::Certificate>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            retry_base: Duration::from_secs(1),
            max_attempts: 8,
            disable_after: 20,
            timeout: Duration::from_secs(10),
            allow_private: false,
            extra_roots: Vec::new(),
        }
    }
}

/// A registered endpoint, as the API shows it (the secret only at creation).
#[derive(Clone, Debug, Serialize)]
pub struct Webhook {
    /// `wh_...`.
    pub id: String,
    /// Where deliveries go.
    pub url: String,
    /// Subscribed events.
    pub events: Vec<String>,
    /// `active` or `disabled`.
    pub state: String,
    /// Consecutive failed attempts.
    pub failures: u32,
    /// Why it was disabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// Milliseconds since the epoch.
    pub created_ms: i64,
    #[serde(skip)]
    tenant: String,
    #[serde(skip)]
    secret: String,
}

/// One delivery of one event to one endpoint.
#[derive(Clone, Debug, Serialize)]
pub struct Delivery {
    /// `msg_...`: the `webhook-id` header, the same for every attempt.
    pub id: String,
    /// The event type.
    pub event: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    /// Attempts made.
    pub attempts: u32,
    /// When the next attempt is due (pending only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_ms: Option<i64>,
    /// The last answer's status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    /// The last failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the event happened.
    pub created_ms: i64,
    /// When it was delivered or given up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<i64>,
    /// The body sent.
    pub payload: Value,
    #[serde(skip)]
    webhook: String,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn webhook_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Webhook> {
    let events: String = row.get(3)?;
    Ok(Webhook {
        id: row.get(0)?,
        tenant: row.get(1)?,
        url: row.get(2)?,
        events: serde_json::from_str(&events).unwrap_or_default(),
        secret: row.get(4)?,
        state: row.get(5)?,
        failures: row.get(6)?,
        disabled_reason: row.get(7)?,
        created_ms: row.get(8)?,
    })
}

const WEBHOOK_COLUMNS: &str =
    "id, tenant, url, events, secret, state, failures, disabled_reason, created_ms";

fn delivery_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Delivery> {
    let state: String = row.get(3)?;
    let payload: String = row.get(2)?;
    Ok(Delivery {
        id: row.get(0)?,
        event: row.get(1)?,
        payload: serde_json::from_str(&payload).unwrap_or(Value::Null),
        next_attempt_ms: if state == "pending" {
            row.get(5)?
        } else {
            None
        },
        state,
        attempts: row.get(4)?,
        last_status: row.get(6)?,
        last_error: row.get(7)?,
        created_ms: row.get(8)?,
        finished_ms: row.get(9)?,
        webhook: row.get(10)?,
    })
}

const DELIVERY_COLUMNS: &str = "id, event, payload, state, attempts, next_ms, last_status, \
                                last_error, created_ms, finished_ms, webhook";

impl Db {
    fn put_webhook(&self, hook: &Webhook) -> rusqlite::Result<()> {
        self.conn().execute(
            &format!("INSERT INTO webhooks ({WEBHOOK_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
            params![
                hook.id,
                hook.tenant,
                hook.url,
                serde_json::to_string(&hook.events).expect("strings serialize"),
                hook.secret,
                hook.state,
                hook.failures,
                hook.disabled_reason,
                hook.created_ms
            ],
        )?;
        Ok(())
    }

    fn webhooks_where(
        &self,
        filter: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> rusqlite::Result<Vec<Webhook>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE {filter} ORDER BY created_ms, id"
        ))?;
        stmt.query_map(args, webhook_row)?.collect()
    }

    fn webhook_by_id(&self, id: &str) -> rusqlite::Result<Option<Webhook>> {
        self.conn()
            .prepare_cached(&format!(
                "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = ?1"
            ))?
            .query_row(params![id], webhook_row)
            .optional()
    }

    fn set_webhook_state(
        &self,
        id: &str,
        state: &str,
        failures: u32,
        reason: Option<&str>,
    ) -> rusqlite::Result<()> {
        self.conn()
            .prepare_cached(
                "UPDATE webhooks SET state = ?2, failures = ?3, disabled_reason = ?4 WHERE id = ?1",
            )?
            .execute(params![id, state, failures, reason])?;
        Ok(())
    }

    fn insert_deliveries(&self, rows: &[(String, String, String, String)]) -> rusqlite::Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO deliveries (id, webhook, event, payload, state, next_ms, created_ms) \
                 VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?5)",
            )?;
            let now = now_ms();
            for (id, webhook, event, payload) in rows {
                stmt.execute(params![id, webhook, event, payload, now])?;
            }
        }
        tx.commit()
    }

    /// Pending deliveries due by `now`, oldest due first.
    fn due(&self, now: i64, limit: usize) -> rusqlite::Result<Vec<Delivery>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE state = 'pending' AND next_ms <= ?1 \
             ORDER BY next_ms LIMIT ?2"
        ))?;
        stmt.query_map(params![now, limit as i64], delivery_row)?
            .collect()
    }

    /// Claims a delivery until `until` (a crash in between means another attempt
    /// then: at-least-once).
    fn claim(&self, id: &str, until: i64) -> rusqlite::Result<()> {
        self.conn()
            .prepare_cached("UPDATE deliveries SET next_ms = ?2 WHERE id = ?1")?
            .execute(params![id, until])?;
        Ok(())
    }

    fn next_due(&self) -> rusqlite::Result<Option<i64>> {
        self.conn()
            .prepare_cached("SELECT MIN(next_ms) FROM deliveries WHERE state = 'pending'")?
            .query_row([], |row| row.get(0))
    }

    fn end_attempt(
        &self,
        id: &str,
        state: &str,
        attempts: u32,
        next_ms: i64,
        status: Option<u16>,
        error: Option<&str>,
    ) -> rusqlite::Result<()> {
        let finished = (state != "pending").then(now_ms);
        self.conn()
            .prepare_cached(
                "UPDATE deliveries SET state = ?2, attempts = ?3, next_ms = ?4, last_status = ?5, \
                 last_error = ?6, finished_ms = ?7 WHERE id = ?1",
            )?
            .execute(params![
                id, state, attempts, next_ms, status, error, finished
            ])?;
        Ok(())
    }

    fn fail_pending(&self, webhook: &str, reason: &str) -> rusqlite::Result<usize> {
        self.conn()
            .prepare_cached(
                "UPDATE deliveries SET state = 'failed', last_error = ?2, finished_ms = ?3 \
                 WHERE webhook = ?1 AND state = 'pending'",
            )?
            .execute(params![webhook, reason, now_ms()])
    }

    fn deliveries_of(&self, webhook: &str, limit: usize) -> rusqlite::Result<Vec<Delivery>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE webhook = ?1 \
             ORDER BY created_ms DESC, id DESC LIMIT ?2"
        ))?;
        stmt.query_map(params![webhook, limit as i64], delivery_row)?
            .collect()
    }

    fn delete_webhook(&self, id: &str) -> rusqlite::Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM deliveries WHERE webhook = ?1", params![id])?;
        tx.execute("DELETE FROM webhooks WHERE id = ?1", params![id])?;
        tx.commit()
    }
}

/// An active subscription, kept in memory so that events nobody wants cost nothing.
#[derive(Clone, Debug)]
struct Subscription {
    id: String,
    tenant: String,
    events: Vec<String>,
}

impl Subscription {
    /// Whether it wants `event` of `tenant` (of any tenant, when `None`).
    fn wants(&self, tenant: Option<&str>, event: &str) -> bool {
        tenant.is_none_or(|t| t == self.tenant) && self.events.iter().any(|e| e == event)
    }
}

/// Why a webhook could not be created or changed.
#[derive(Debug)]
pub enum WebhookError {
    /// The request is wrong (the message says how).
    Invalid(String),
    /// No such webhook for this tenant.
    NotFound,
    /// The journal failed.
    Db(rusqlite::Error),
}

impl From<rusqlite::Error> for WebhookError {
    fn from(e: rusqlite::Error) -> Self {
        WebhookError::Db(e)
    }
}

/// The node's webhooks: subscriptions and the delivery task's wake-up.
#[derive(Debug)]
pub struct Webhooks {
    config: WebhookConfig,
    subscriptions: Mutex<Vec<Subscription>>,
    wake: Notify,
    /// (queue, jobs in it) already announced as complete.
    completed: Mutex<HashSet<(u64, u64)>>,
}

impl Webhooks {
    /// The webhooks of `db`.
    pub fn open(db: &Db, config: WebhookConfig) -> rusqlite::Result<Self> {
        let hooks = Self {
            config,
            subscriptions: Mutex::new(Vec::new()),
            wake: Notify::new(),
            completed: Mutex::new(HashSet::new()),
        };
        hooks.reload(db)?;
        Ok(hooks)
    }

    fn subscriptions(&self) -> MutexGuard<'_, Vec<Subscription>> {
        lock(&self.subscriptions)
    }

    fn reload(&self, db: &Db) -> rusqlite::Result<()> {
        let active = db.webhooks_where("state = 'active'", &[])?;
        *self.subscriptions() = active
            .into_iter()
            .map(|hook| Subscription {
                id: hook.id,
                tenant: hook.tenant,
                events: hook.events,
            })
            .collect();
        Ok(())
    }

    /// Registers an endpoint; the answer is the only time its secret is shown.
    pub fn create(
        &self,
        db: &Db,
        tenant: &str,
        url: &str,
        events: Vec<String>,
    ) -> Result<Value, WebhookError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| WebhookError::Invalid(format!("url {url:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(WebhookError::Invalid(format!(
                "url {url:?}: an http or https URL with a host"
            )));
        }
        if !self.config.allow_private
            && let Err(why) = public_host(&parsed)
        {
            return Err(WebhookError::Invalid(format!(
                "url {url:?}: {why}; start the server with --webhook-allow-private to allow it"
            )));
        }
        if events.is_empty() {
            return Err(WebhookError::Invalid(format!(
                "events: at least one of {EVENTS:?}"
            )));
        }
        if let Some(unknown) = events.iter().find(|e| !EVENTS.contains(&e.as_str())) {
            return Err(WebhookError::Invalid(format!(
                "events: {unknown:?} is not one of {EVENTS:?}"
            )));
        }
        let mut events = events;
        events.sort();
        events.dedup();
        let mut key = [0u8; 32];
        rand::rng().fill(&mut key);
        let hook = Webhook {
            id: format!("wh_{}", uuid::Uuid::new_v4().simple()),
            tenant: tenant.into(),
            url: url.into(),
            events,
            state: "active".into(),
            failures: 0,
            disabled_reason: None,
            created_ms: now_ms(),
            secret: format!(
                "whsec_{}",
                base64::engine::general_purpose::STANDARD.encode(key)
            ),
        };
        db.put_webhook(&hook)?;
        self.reload(db)?;
        let mut answer = serde_json::to_value(&hook).expect("webhooks serialize");
        answer["secret"] = json!(hook.secret);
        Ok(answer)
    }

    /// A tenant's webhooks.
    pub fn list(&self, db: &Db, tenant: &str) -> rusqlite::Result<Vec<Webhook>> {
        db.webhooks_where("tenant = ?1", &[&tenant])
    }

    /// One of a tenant's webhooks.
    pub fn get(&self, db: &Db, tenant: &str, id: &str) -> Result<Webhook, WebhookError> {
        db.webhook_by_id(id)?
            .filter(|hook| hook.tenant == tenant)
            .ok_or(WebhookError::NotFound)
    }

    /// Removes a webhook and its delivery log.
    pub fn delete(&self, db: &Db, tenant: &str, id: &str) -> Result<(), WebhookError> {
        self.get(db, tenant, id)?;
        db.delete_webhook(id)?;
        self.reload(db)?;
        Ok(())
    }

    /// Turns a disabled webhook back on (its failure count starts again at 0).
    pub fn enable(&self, db: &Db, tenant: &str, id: &str) -> Result<Webhook, WebhookError> {
        self.get(db, tenant, id)?;
        db.set_webhook_state(id, "active", 0, None)?;
        self.reload(db)?;
        self.get(db, tenant, id)
    }

    /// The newest deliveries of one of a tenant's webhooks.
    pub fn deliveries(
        &self,
        db: &Db,
        tenant: &str,
        id: &str,
        limit: usize,
    ) -> Result<Vec<Delivery>, WebhookError> {
        self.get(db, tenant, id)?;
        Ok(db.deliveries_of(id, limit)?)
    }

    /// Whether an active webhook of `tenant` (any tenant, when `None`) wants `event`.
    pub fn wants(&self, tenant: Option<&str>, event: &str) -> bool {
        self.subscriptions().iter().any(|s| s.wants(tenant, event))
    }

    /// Whether any webhook wants events about jobs or queues.
    pub fn wants_job_events(&self) -> bool {
        self.subscriptions().iter().any(|s| {
            s.events
                .iter()
                .any(|e| e.starts_with("job.") || e.starts_with("queue."))
        })
    }

    /// Queues one delivery of `event` per active webhook that wants it: webhooks of
    /// `tenant`, or of every tenant when `None` (events about the fleet).
    pub fn emit(&self, db: &Db, tenant: Option<&str>, event: &str, data: Value) {
        let targets: Vec<String> = self
            .subscriptions()
            .iter()
            .filter(|s| s.wants(tenant, event))
            .map(|s| s.id.clone())
            .collect();
        if targets.is_empty() {
            return;
        }
        let timestamp = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let rows: Vec<_> = targets
            .into_iter()
            .map(|webhook| {
                let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
                let payload = json!({"type": event, "timestamp": timestamp, "data": data});
                (id, webhook, event.to_string(), payload.to_string())
            })
            .collect();
        match db.insert_deliveries(&rows) {
            Ok(()) => self.wake.notify_one(),
            Err(e) => tracing::error!(event, error = %e, "queueing webhook deliveries"),
        }
    }

    /// Announces a queue's completion once per (queue, number of jobs). The memory of
    /// what was announced is bounded: past `COMPLETIONS_REMEMBERED` entries it starts
    /// afresh (a queue completing again at the same size may then be announced twice).
    pub fn queue_completed_once(&self, queue: u64, jobs: u64) -> bool {
        let mut completed = lock(&self.completed);
        if completed.len() >= COMPLETIONS_REMEMBERED {
            completed.clear();
        }
        completed.insert((queue, jobs))
    }
}

/// Refuses URLs whose host is a non-public address or a `localhost` name; other names
/// are checked when they are resolved, at each attempt.
fn public_host(url: &reqwest::Url) -> Result<(), String> {
    let host = url.host_str().unwrap_or_default();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        return if is_public(ip) {
            Ok(())
        } else {
            Err(format!("{ip} is not a public address"))
        };
    }
    let name = bare.trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        return Err(format!("{host} is this machine"));
    }
    Ok(())
}

/// Resolves endpoint names to public addresses only, so a name that points at the
/// server's own network (or is re-pointed there later) is refused at connect time.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let all: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<std::net::SocketAddr> =
                all.into_iter().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The signature header value: `v1,` + base64 HMAC-SHA256 of `id.timestamp.body`
/// with the secret's key (the base64 after `whsec_`).
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> String {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap_or_else(|_| secret.as_bytes().to_vec());
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes keys of any size");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body.as_bytes());
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// Checks a `webhook-signature` header (space-separated `v1,<base64>` entries, any of
/// which may match) against the signature of `id.timestamp.body` under `secret`, in
/// constant time per entry: what a receiver does.
pub fn verify(secret: &str, id: &str, timestamp: i64, body: &str, header: &str) -> bool {
    use subtle::ConstantTimeEq;
    let expected = sign(secret, id, timestamp, body);
    header
        .split(' ')
        .filter(|entry| entry.starts_with("v1,"))
        .fold(false, |found, entry| {
            found | bool::from(entry.as_bytes().ct_eq(expected.as_bytes()))
        })
}

/// The wait before attempt `attempts + 1`: `base * 2^(attempts-1)`, capped, with
/// "equal jitter" (half fixed, half random) so endpoints that recover are not hit by
/// every sender at once.
fn backoff(base: Duration, attempts: u32) -> Duration {
    let exp = base
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(20))
        .min(MAX_BACKOFF);
    let half = exp / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

/// Sends due deliveries until the node stops.
pub async fn deliver_loop(node: Arc<Node>) {
    // No proxy from the environment: a proxy would connect for us, skipping the
    // public-address check of the resolver below.
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .timeout(node.webhooks.config.timeout)
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none());
    for root in &node.webhooks.config.extra_roots {
        builder = builder.add_root_certificate(root.clone());
    }
    if !node.webhooks.config.allow_private {
        builder = builder.dns_resolver(Arc::new(PublicOnly));
    }
    let http = builder.build().expect("building the webhook client");
    let sending = Arc::new(Semaphore::new(CONCURRENCY));
    // Endpoints with an attempt in flight: one at a time per endpoint, so they see
    // deliveries in order and a failing one is not hit by a burst.
    let busy: Arc<Mutex<HashSet<String>>> = Arc::default();
    loop {
        let woken = node.webhooks.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let now = now_ms();
        let claim_until = now + node.webhooks.config.timeout.as_millis() as i64 + 5_000;
        let due = match node.db.due(now, CONCURRENCY * 32) {
            Ok(due) => due,
            Err(e) => {
                tracing::error!(error = %e, "reading due webhook deliveries");
                Vec::new()
            }
        };
        let mut started = 0;
        let mut blocked = false;
        for delivery in due {
            if !lock(&busy).insert(delivery.webhook.clone()) {
                blocked = true;
                continue;
            }
            if let Err(e) = node.db.claim(&delivery.id, claim_until) {
                tracing::error!(error = %e, "claiming a webhook delivery");
                lock(&busy).remove(&delivery.webhook);
                continue;
            }
            let permit = tokio::select! {
                permit = sending.clone().acquire_owned() => permit.expect("never closed"),
                () = node.stopping().cancelled() => return,
            };
            started += 1;
            let (node, http, busy) = (node.clone(), http.clone(), busy.clone());
            tokio::spawn(async move {
                let webhook = delivery.webhook.clone();
                attempt(&node, &http, delivery).await;
                lock(&busy).remove(&webhook);
                drop(permit);
                node.webhooks.wake.notify_one();
            });
        }
        if started > 0 && !blocked {
            continue;
        }
        // Due deliveries of busy endpoints wait for their attempt to end (it wakes
        // this loop); otherwise sleep until the next one is due.
        let next = if blocked {
            None
        } else {
            node.db.next_due().ok().flatten()
        };
        let sleep = next.map_or(Duration::from_secs(60), |at| {
            Duration::from_millis(at.saturating_sub(now_ms()).max(0) as u64)
        });
        tokio::select! {
            () = woken => {}
            () = tokio::time::sleep(sleep.min(Duration::from_secs(60))) => {}
            () = node.stopping().cancelled() => return,
        }
    }
}

/// One attempt of one delivery, and what it means for the delivery and its endpoint.
async fn attempt(node: &Node, http: &reqwest::Client, delivery: Delivery) {
    let Ok(Some(hook)) = node.db.webhook_by_id(&delivery.webhook) else {
        return;
    };
    if hook.state != "active" {
        let _ = node.db.fail_pending(&hook.id, "the endpoint is disabled");
        return;
    }
    let body = delivery.payload.to_string();
    let timestamp = now_ms() / 1000;
    // Addresses in the URL itself are not resolved, so they are checked here.
    let allowed = match reqwest::Url::parse(&hook.url) {
        Ok(url) if !node.webhooks.config.allow_private => public_host(&url),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    };
    let sent = match allowed {
        Ok(()) => http
            .post(&hook.url)
            .header("content-type", "application/json")
            .header("user-agent", concat!("wasmesh/", env!("CARGO_PKG_VERSION")))
            .header("webhook-id", &delivery.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                sign(&hook.secret, &delivery.id, timestamp, &body),
            )
            .body(body)
            .send()
            .await
            .map_err(|e| format!("sending: {e:#}")),
        Err(why) => Err(format!("refused: {why}")),
    };
    let attempts = delivery.attempts + 1;
    let (status, error) = match sent {
        Ok(response) if response.status().is_success() => {
            let status = Some(response.status().as_u16());
            if let Err(e) = node
                .db
                .end_attempt(&delivery.id, "delivered", attempts, 0, status, None)
                .and_then(|()| node.db.set_webhook_state(&hook.id, "active", 0, None))
            {
                tracing::error!(delivery = %delivery.id, error = %e, "recording a webhook delivery");
            }
            return;
        }
        Ok(response) => (
            Some(response.status().as_u16()),
            format!("the endpoint answered {}", response.status()),
        ),
        Err(error) => (None, error),
    };
    let config = &node.webhooks.config;
    let failures = hook.failures + 1;
    let recorded = if failures >= config.disable_after {
        let reason = format!("disabled after {failures} consecutive failed attempts");
        tracing::warn!(webhook = %hook.id, url = %hook.url, "{reason}");
        node.db
            .end_attempt(&delivery.id, "failed", attempts, 0, status, Some(&error))
            .and_then(|()| {
                node.db
                    .set_webhook_state(&hook.id, "disabled", failures, Some(&reason))
            })
            .and_then(|()| node.db.fail_pending(&hook.id, &reason).map(|_| ()))
            .and_then(|()| node.webhooks.reload(&node.db))
    } else {
        let (state, next) = if attempts >= config.max_attempts {
            ("failed", 0)
        } else {
            let wait = backoff(config.retry_base, attempts);
            ("pending", now_ms() + wait.as_millis() as i64)
        };
        node.db
            .end_attempt(&delivery.id, state, attempts, next, status, Some(&error))
            .and_then(|()| {
                node.db
                    .set_webhook_state(&hook.id, "active", failures, None)
            })
    };
    if let Err(e) = recorded {
        tracing::error!(delivery = %delivery.id, error = %e, "recording a failed webhook attempt");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_tampering_does_not() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let signature = sign(secret, "msg_1", 1614265330, "{}");
        assert!(verify(secret, "msg_1", 1614265330, "{}", &signature));
        let rotated = format!("v1,bm90IGl0 {signature}");
        assert!(verify(secret, "msg_1", 1614265330, "{}", &rotated));
        assert!(!verify(secret, "msg_1", 1614265330, "{ }", &signature));
        assert!(!verify(secret, "msg_2", 1614265330, "{}", &signature));
        assert!(!verify(secret, "msg_1", 1614265331, "{}", &signature));
        assert!(!verify(secret, "msg_1", 1614265330, "{}", ""));
    }

    #[test]
    fn signatures_follow_the_standard_webhooks_example() {
        // The example in the Standard Webhooks specification.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            sign(secret, id, 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn only_public_endpoints_are_allowed_by_default() {
        // Which addresses are public is `address.rs`'s business (and its tests').
        assert!(!is_public("169.254.169.254".parse().unwrap()));
        let url = |u: &str| reqwest::Url::parse(u).unwrap();
        assert!(public_host(&url("http://127.0.0.1:9/hook")).is_err());
        assert!(public_host(&url("http://[::1]:9/hook")).is_err());
        assert!(public_host(&url("http://LocalHost./hook")).is_err());
        assert!(public_host(&url("http://api.localhost/hook")).is_err());
        assert!(public_host(&url("https://example.com/hook")).is_ok());

        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db")).unwrap();
        let hooks = Webhooks::open(&db, WebhookConfig::default()).unwrap();
        let refused = hooks.create(&db, "a", "http://127.0.0.1:9/", vec!["job.failed".into()]);
        assert!(
            matches!(refused, Err(WebhookError::Invalid(ref m)) if m.contains("--webhook-allow-private")),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn names_resolving_only_to_private_addresses_are_refused() {
        use reqwest::dns::Resolve;
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let err = match PublicOnly.resolve(name).await {
            Ok(addrs) => panic!("localhost resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("no public address"), "{err}");
    }

    #[test]
    fn backoff_grows_exponentially_with_bounded_jitter() {
        let base = Duration::from_millis(100);
        for attempts in 1..=6 {
            let exp = base * (1 << (attempts - 1));
            for _ in 0..50 {
                let wait = backoff(base, attempts);
                assert!(wait >= exp / 2 && wait <= exp, "{attempts}: {wait:?}");
            }
        }
        assert!(backoff(Duration::from_secs(1), 40) <= MAX_BACKOFF);
    }

    #[test]
    fn webhooks_are_validated_and_scoped_to_their_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db")).unwrap();
        let config = WebhookConfig {
            allow_private: true,
            ..WebhookConfig::default()
        };
        let hooks = Webhooks::open(&db, config).unwrap();
        for (url, events) in [
            ("ftp://x", vec!["job.failed"]),
            ("not a url", vec!["job.failed"]),
            ("http://127.0.0.1:1/", vec![]),
            ("http://127.0.0.1:1/", vec!["job.exploded"]),
        ] {
            let events = events.into_iter().map(String::from).collect();
            assert!(matches!(
                hooks.create(&db, "a", url, events),
                Err(WebhookError::Invalid(_))
            ));
        }
        let made = hooks
            .create(&db, "a", "http://127.0.0.1:1/", vec!["job.failed".into()])
            .unwrap();
        let id = made["id"].as_str().unwrap();
        assert!(made["secret"].as_str().unwrap().starts_with("whsec_"));
        assert!(hooks.wants(Some("a"), "job.failed"));
        assert!(!hooks.wants(Some("b"), "job.failed"));
        assert!(!hooks.wants(Some("a"), "job.succeeded"));
        assert!(matches!(
            hooks.get(&db, "b", id),
            Err(WebhookError::NotFound)
        ));
        // The secret is never shown again.
        let listed = serde_json::to_value(hooks.list(&db, "a").unwrap()).unwrap();
        assert!(listed[0].get("secret").is_none(), "{listed}");
        hooks.delete(&db, "a", id).unwrap();
        assert!(!hooks.wants(None, "job.failed"));
    }
}
