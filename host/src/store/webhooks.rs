//! Webhook endpoints and their deliveries (one row per event per endpoint, so a restart
//! loses none).

use super::db::{DbResult, Row, ToValue, params};
use serde::Serialize;
use serde_json::Value;

use super::{Store, StoreResult, now_ms};
pub use crate::model::{DeliveryState, WebhookState};

/// A registered endpoint, as the API shows it (the secret only at creation).
#[derive(Clone, Debug, Serialize)]
pub struct Webhook {
    /// `wh_...`.
    pub id: String,
    /// Where deliveries go.
    pub url: String,
    /// Subscribed events.
    pub events: Vec<String>,
    /// Whether deliveries are sent.
    pub state: WebhookState,
    /// Consecutive failed attempts.
    pub failures: u32,
    /// Why it was disabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// Milliseconds since the epoch.
    pub created_ms: i64,
    /// Its owner.
    #[serde(skip)]
    pub tenant: String,
    /// The signing secret (shown once, at creation).
    #[serde(skip)]
    pub secret: String,
}

/// One delivery of one event to one endpoint.
#[derive(Clone, Debug, Serialize)]
pub struct Delivery {
    /// `msg_...`: the `webhook-id` header, the same for every attempt.
    pub id: String,
    /// The event type.
    pub event: String,
    /// Where the delivery is.
    pub state: DeliveryState,
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
    /// The endpoint it goes to.
    #[serde(skip)]
    pub webhook: String,
}

fn webhook_row(row: &Row<'_>) -> DbResult<Webhook> {
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

fn delivery_row(row: &Row<'_>) -> DbResult<Delivery> {
    let state: DeliveryState = row.get(3)?;
    let payload: String = row.get(2)?;
    Ok(Delivery {
        id: row.get(0)?,
        event: row.get(1)?,
        payload: serde_json::from_str(&payload).unwrap_or(Value::Null),
        next_attempt_ms: if state == DeliveryState::Pending {
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

/// A delivery to queue: (id, webhook, event, payload).
pub type NewDelivery = (String, String, String, String);

/// Queues `rows` (pending, due now) inside the transaction `tx` (with the write that
/// caused them, so a crash between the two loses neither).
pub(super) fn insert_deliveries(tx: &super::db::Tx<'_>, rows: &[NewDelivery]) -> StoreResult<()> {
    let now = now_ms();
    for (id, webhook, event, payload) in rows {
        tx.execute(
            "INSERT INTO deliveries (id, webhook, event, payload, state, next_ms, created_ms) \
             VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?5)",
            params![id, webhook, event, payload, now],
        )?;
    }
    Ok(())
}

impl Store {
    /// Deletes finished deliveries that finished before `before_ms`.
    pub(super) fn delete_old_deliveries(&self, before_ms: i64) -> StoreResult<usize> {
        Ok(self.conn().execute(
            "DELETE FROM deliveries WHERE state != 'pending' AND finished_ms < ?1",
            params![before_ms],
        )?)
    }

    pub fn put_webhook(&self, hook: &Webhook) -> StoreResult<()> {
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

    fn webhooks_where(&self, filter: &str, args: &[&dyn ToValue]) -> StoreResult<Vec<Webhook>> {
        let conn = self.conn();
        Ok(conn.query_map(
            &format!(
                "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE {filter} ORDER BY created_ms, id"
            ),
            args,
            webhook_row,
        )?)
    }

    /// A webhook by id, whoever owns it (the delivery loop).
    pub(super) fn webhook_by_id(&self, id: &str) -> StoreResult<Option<Webhook>> {
        Ok(self.conn().query_opt(
            &format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = ?1"),
            params![id],
            webhook_row,
        )?)
    }

    pub fn set_webhook_state(
        &self,
        id: &str,
        state: WebhookState,
        failures: u32,
        reason: Option<&str>,
    ) -> StoreResult<()> {
        self.conn().execute(
            "UPDATE webhooks SET state = ?2, failures = ?3, disabled_reason = ?4 WHERE id = ?1",
            params![id, state, failures, reason],
        )?;
        Ok(())
    }

    pub fn insert_deliveries(&self, rows: &[NewDelivery]) -> StoreResult<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        insert_deliveries(&tx, rows)?;
        Ok(tx.commit()?)
    }

    /// Pending deliveries due by `now`, oldest due first.
    pub fn due(&self, now: i64, limit: usize) -> StoreResult<Vec<Delivery>> {
        let conn = self.conn();
        Ok(conn.query_map(
            &format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE state = 'pending' \
                 AND next_ms <= ?1 ORDER BY next_ms LIMIT ?2"
            ),
            params![now, limit as i64],
            delivery_row,
        )?)
    }

    /// Claims a delivery until `until` (a crash in between means another attempt
    /// then: at-least-once).
    pub fn claim(&self, id: &str, until: i64) -> StoreResult<()> {
        self.conn().execute(
            "UPDATE deliveries SET next_ms = ?2 WHERE id = ?1",
            params![id, until],
        )?;
        Ok(())
    }

    pub fn next_due(&self) -> StoreResult<Option<i64>> {
        Ok(self.conn().query_one(
            "SELECT MIN(next_ms) FROM deliveries WHERE state = 'pending'",
            params![],
            |row| row.get(0),
        )?)
    }

    pub fn end_attempt(
        &self,
        id: &str,
        state: DeliveryState,
        attempts: u32,
        next_ms: i64,
        status: Option<u16>,
        error: Option<&str>,
    ) -> StoreResult<()> {
        let finished = (state != DeliveryState::Pending).then(now_ms);
        self.conn().execute(
            "UPDATE deliveries SET state = ?2, attempts = ?3, next_ms = ?4, last_status = ?5, \
                 last_error = ?6, finished_ms = ?7 WHERE id = ?1",
            params![id, state, attempts, next_ms, status, error, finished],
        )?;
        Ok(())
    }

    pub fn fail_pending(&self, webhook: &str, reason: &str) -> StoreResult<usize> {
        Ok(self.conn().execute(
            "UPDATE deliveries SET state = 'failed', last_error = ?2, finished_ms = ?3 \
                 WHERE webhook = ?1 AND state = 'pending'",
            params![webhook, reason, now_ms()],
        )?)
    }

    /// Puts off every pending delivery of `webhook` due before `until` to then (an
    /// endpoint that keeps failing waits as a whole, not one delivery at a time).
    pub fn defer_pending(&self, webhook: &str, until: i64) -> StoreResult<usize> {
        Ok(self.conn().execute(
            "UPDATE deliveries SET next_ms = ?2 WHERE webhook = ?1 AND state = 'pending' \
             AND next_ms < ?2",
            params![webhook, until],
        )?)
    }

    pub fn deliveries_of(&self, webhook: &str, limit: usize) -> StoreResult<Vec<Delivery>> {
        let conn = self.conn();
        Ok(conn.query_map(
            &format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE webhook = ?1 \
                 ORDER BY created_ms DESC, id DESC LIMIT ?2"
            ),
            params![webhook, limit as i64],
            delivery_row,
        )?)
    }

    /// The active webhooks of every tenant (the subscriptions kept in memory).
    pub fn active_webhooks(&self) -> StoreResult<Vec<Webhook>> {
        self.webhooks_where("state = 'active'", params![])
    }

    /// A tenant's webhooks, oldest first.
    pub(super) fn webhooks_of(&self, tenant: &str) -> StoreResult<Vec<Webhook>> {
        self.webhooks_where("tenant = ?1", params![tenant])
    }

    /// One of a tenant's webhooks.
    pub(super) fn tenant_webhook(&self, tenant: &str, id: &str) -> StoreResult<Option<Webhook>> {
        Ok(self.webhook_by_id(id)?.filter(|hook| hook.tenant == tenant))
    }

    pub fn delete_webhook(&self, id: &str) -> StoreResult<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM deliveries WHERE webhook = ?1", params![id])?;
        tx.execute("DELETE FROM webhooks WHERE id = ?1", params![id])?;
        Ok(tx.commit()?)
    }
}
