//! Webhooks: a tenant registers a URL for some events (`job.succeeded`, `job.failed`,
//! `queue.completed`, `node.unhealthy`, `node.ready`); each event becomes a delivery
//! row in the journal (so a restart loses none), and the delivery task (`deliver.rs`)
//! POSTs it signed per the Standard Webhooks spec (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of
//! id.timestamp.body>`), retrying with exponential backoff and jitter. An endpoint
//! whose attempts keep failing is disabled and its pending deliveries fail.
//! `address.rs` is the SSRF guard: only public addresses are called.

pub mod address;
mod deliver;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine;
use rand::Rng;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::model::WebhookState;
pub use crate::store::{Delivery, Webhook};
use crate::store::{NewDelivery, Store, StoreError, StoreResult, now_ms};
pub use deliver::{sign, verify};

/// The events a webhook may subscribe to.
pub const EVENTS: &[&str] = &[
    "job.succeeded",
    "job.failed",
    "job.deadline_exceeded",
    "queue.completed",
    "queue.deadline_at_risk",
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

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
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
    Db(StoreError),
}

impl From<StoreError> for WebhookError {
    fn from(e: StoreError) -> Self {
        WebhookError::Db(e)
    }
}

/// The webhooks: subscriptions (in memory), the journal's webhook and delivery rows,
/// and the delivery task ([`Webhooks::start`]).
#[derive(Debug)]
pub struct Webhooks {
    store: Arc<Store>,
    config: WebhookConfig,
    subscriptions: Mutex<Vec<Subscription>>,
    wake: Notify,
    /// (queue, jobs in it) already announced as complete.
    completed: Mutex<HashSet<(u64, u64)>>,
    /// Told of every attempt's outcome (the engine's change feed).
    on_change: std::sync::OnceLock<ChangeSink>,
}

/// Where a delivery's changes go: (the webhook's tenant, the change as JSON).
pub struct ChangeSink(pub Box<SinkFn>);

/// What a [`ChangeSink`] calls.
pub type SinkFn = dyn Fn(&str, Value) + Send + Sync;

impl std::fmt::Debug for ChangeSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChangeSink")
    }
}

impl Webhooks {
    /// The webhooks of `store`.
    pub fn open(store: Arc<Store>, config: WebhookConfig) -> StoreResult<Self> {
        let hooks = Self {
            store,
            config,
            subscriptions: Mutex::new(Vec::new()),
            wake: Notify::new(),
            completed: Mutex::new(HashSet::new()),
            on_change: std::sync::OnceLock::new(),
        };
        hooks.reload()?;
        Ok(hooks)
    }

    /// Sends every delivery attempt's outcome to `sink` (set once).
    pub fn on_change(&self, sink: ChangeSink) {
        let _ = self.on_change.set(sink);
    }

    fn changed(&self, tenant: &str, change: Value) {
        if let Some(sink) = self.on_change.get() {
            (sink.0)(tenant, change);
        }
    }

    fn subscriptions(&self) -> MutexGuard<'_, Vec<Subscription>> {
        lock(&self.subscriptions)
    }

    /// Reads the subscriptions again (another coordinator sharing the journal changed
    /// them).
    pub fn reload(&self) -> StoreResult<()> {
        let active = self.store.active_webhooks()?;
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

    /// The tenant of webhook `id` (empty when it is not active any more).
    pub(super) fn tenant_of(&self, id: &str) -> String {
        self.subscriptions()
            .iter()
            .find(|s| s.id == id)
            .map(|s| s.tenant.clone())
            .unwrap_or_default()
    }

    /// Registers an endpoint (admitted first by the engine's `admit_webhook`); the
    /// answer is the only time its secret is shown.
    pub fn create(
        &self,
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
            && let Err(why) = address::public_host(&parsed)
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
            state: WebhookState::Active,
            failures: 0,
            disabled_reason: None,
            created_ms: now_ms(),
            secret: format!(
                "whsec_{}",
                base64::engine::general_purpose::STANDARD.encode(key)
            ),
        };
        self.store.put_webhook(&hook)?;
        self.reload()?;
        let mut answer = serde_json::to_value(&hook).expect("webhooks serialize");
        answer["secret"] = json!(hook.secret);
        Ok(answer)
    }

    /// A tenant's webhooks.
    pub fn list(&self, tenant: &str) -> StoreResult<Vec<Webhook>> {
        self.store.tenant(tenant).webhooks()
    }

    /// One of a tenant's webhooks.
    pub fn get(&self, tenant: &str, id: &str) -> Result<Webhook, WebhookError> {
        self.store
            .tenant(tenant)
            .webhook(id)?
            .ok_or(WebhookError::NotFound)
    }

    /// Removes a webhook and its delivery log.
    pub fn delete(&self, tenant: &str, id: &str) -> Result<(), WebhookError> {
        self.get(tenant, id)?;
        self.store.delete_webhook(id)?;
        self.reload()?;
        Ok(())
    }

    /// Turns a disabled webhook back on (its failure count starts again at 0).
    pub fn enable(&self, tenant: &str, id: &str) -> Result<Webhook, WebhookError> {
        self.get(tenant, id)?;
        self.store
            .set_webhook_state(id, WebhookState::Active, 0, None)?;
        self.reload()?;
        self.get(tenant, id)
    }

    /// The newest deliveries of one of a tenant's webhooks.
    pub fn deliveries(
        &self,
        tenant: &str,
        id: &str,
        limit: usize,
    ) -> Result<Vec<Delivery>, WebhookError> {
        self.get(tenant, id)?;
        Ok(self.store.deliveries_of(id, limit)?)
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
    pub fn emit(&self, tenant: Option<&str>, event: &str, data: Value) {
        let rows = self.rows_for(tenant, event, &data);
        if rows.is_empty() {
            return;
        }
        match self.store.insert_deliveries(&rows) {
            Ok(()) => self.queued(),
            Err(e) => tracing::error!(event, error = %e, "queueing webhook deliveries"),
        }
    }

    /// The deliveries of `event` [`Webhooks::emit`] would queue, for the caller to
    /// write with what caused them (then [`Webhooks::queued`]).
    pub fn rows_for(&self, tenant: Option<&str>, event: &str, data: &Value) -> Vec<NewDelivery> {
        let targets: Vec<String> = self
            .subscriptions()
            .iter()
            .filter(|s| s.wants(tenant, event))
            .map(|s| s.id.clone())
            .collect();
        if targets.is_empty() {
            return Vec::new();
        }
        let timestamp = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        targets
            .into_iter()
            .map(|webhook| {
                let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
                let payload = json!({"type": event, "timestamp": timestamp, "data": data});
                (id, webhook, event.to_string(), payload.to_string())
            })
            .collect()
    }

    /// Deliveries were queued: the deliverer looks at once.
    pub fn queued(&self) {
        self.wake.notify_one();
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

#[cfg(test)]
mod tests {
    use super::address::{PublicOnly, is_public, public_host};
    use super::*;

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
        let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
        let hooks = Webhooks::open(store, WebhookConfig::default()).unwrap();
        let refused = hooks.create("a", "http://127.0.0.1:9/", vec!["job.failed".into()]);
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
    fn webhooks_are_validated_and_scoped_to_their_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
        let config = WebhookConfig {
            allow_private: true,
            ..WebhookConfig::default()
        };
        let hooks = Webhooks::open(store, config).unwrap();
        for (url, events) in [
            ("ftp://x", vec!["job.failed"]),
            ("not a url", vec!["job.failed"]),
            ("http://127.0.0.1:1/", vec![]),
            ("http://127.0.0.1:1/", vec!["job.exploded"]),
        ] {
            let events = events.into_iter().map(String::from).collect();
            assert!(matches!(
                hooks.create("a", url, events),
                Err(WebhookError::Invalid(_))
            ));
        }
        let made = hooks
            .create("a", "http://127.0.0.1:1/", vec!["job.failed".into()])
            .unwrap();
        let id = made["id"].as_str().unwrap();
        assert!(made["secret"].as_str().unwrap().starts_with("whsec_"));
        assert!(hooks.wants(Some("a"), "job.failed"));
        assert!(!hooks.wants(Some("b"), "job.failed"));
        assert!(!hooks.wants(Some("a"), "job.succeeded"));
        assert!(matches!(hooks.get("b", id), Err(WebhookError::NotFound)));
        // The secret is never shown again.
        let listed = serde_json::to_value(hooks.list("a").unwrap()).unwrap();
        assert!(listed[0].get("secret").is_none(), "{listed}");
        hooks.delete("a", id).unwrap();
        assert!(!hooks.wants(None, "job.failed"));
    }
}
