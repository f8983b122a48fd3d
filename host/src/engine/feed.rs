//! The change feed behind `GET /compute/events`: every change of a job, queue or node,
//! in order, each with an id that only grows, so a subscriber that reconnects with the
//! last id it saw resumes without losing one.
//!
//! The feed is a ring of the latest [`CAPACITY`] changes in memory; each change's JSON
//! is built once and shared by every subscriber. A subscriber asking for changes after
//! an id the ring no longer holds (it fell that far behind, or the server restarted)
//! gets a gap, which the API turns into a `reset` event: re-read the state, then follow
//! the feed. Ids start at the server's start time in milliseconds times 1,024, so they
//! keep growing across restarts (below 2^53 until the year 2248: exact in JavaScript).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;
use wasmesh_runtime::CancellationToken;

use super::Engine;
use crate::model::{HashHex, JobResult, JobState};
use crate::store::{JobRow, NewJob};

/// Changes kept for subscribers that fall behind or reconnect.
pub const CAPACITY: usize = 65_536;

/// Tenant names remembered for sharing (past this, a name is allocated per change).
const MAX_TENANT_NAMES: usize = 10_000;

/// Most changes one read hands out.
pub const MAX_READ: usize = 1_024;

/// One change.
#[derive(Clone, Debug)]
pub struct Change {
    /// Its id: greater than every earlier change's.
    pub id: u64,
    /// The tenant whose object changed; `None` for the fleet's (nodes), which only the
    /// operator sees.
    pub tenant: Option<Arc<str>>,
    /// The change as JSON: `{"kind": "job" | "queue" | "node", ...}`.
    pub data: Arc<str>,
}

/// What a read found.
#[derive(Debug, Default)]
pub struct Read {
    /// Changes after the asked id, oldest first (at most [`MAX_READ`]).
    pub changes: Vec<Change>,
    /// The changes right after the asked id are gone: the reader must re-read state.
    pub gap: bool,
    /// The id to read after next time.
    pub last: u64,
}

#[derive(Debug)]
struct Ring {
    changes: VecDeque<Change>,
    capacity: usize,
    /// The id the next change gets.
    next: u64,
    /// Tenant names, shared by their changes.
    tenants: HashMap<String, Arc<str>>,
}

/// The feed.
#[derive(Debug)]
pub struct Feed {
    ring: Mutex<Ring>,
    /// The id of the latest change (subscribers wait for it to move).
    latest: watch::Sender<u64>,
    /// Cancelled when the server stops taking requests: subscriptions end, so the
    /// graceful shutdown does not wait on streams that never would.
    closed: CancellationToken,
}

impl Feed {
    /// An empty feed whose first id follows `first_id`.
    pub fn new(first_id: u64, capacity: usize) -> Self {
        Self {
            ring: Mutex::new(Ring {
                changes: VecDeque::with_capacity(capacity.min(4_096)),
                capacity: capacity.max(1),
                next: first_id + 1,
                tenants: HashMap::new(),
            }),
            latest: watch::Sender::new(first_id),
            closed: CancellationToken::new(),
        }
    }

    /// A feed whose ids start at the current time (see the module docs).
    pub fn starting_now() -> Self {
        let now_ms = u64::try_from(crate::store::now_ms()).unwrap_or(0);
        Self::new(now_ms * 1_024, CAPACITY)
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a change of `tenant`'s object (`None`: the fleet's).
    pub fn publish(&self, tenant: Option<&str>, data: &impl Serialize) {
        let data: Arc<str> = match serde_json::to_string(data) {
            Ok(text) => text.into(),
            Err(e) => {
                tracing::error!(error = %e, "serialising a change for the feed");
                return;
            }
        };
        let id = {
            let mut ring = self.ring();
            // Tenants are few: their names are shared, not allocated per change.
            let tenant = tenant.map(|name| match ring.tenants.get(name) {
                Some(shared) => shared.clone(),
                None => {
                    let shared: Arc<str> = name.into();
                    if ring.tenants.len() < MAX_TENANT_NAMES {
                        ring.tenants.insert(name.to_string(), shared.clone());
                    }
                    shared
                }
            });
            let id = ring.next;
            ring.next += 1;
            if ring.changes.len() == ring.capacity {
                ring.changes.pop_front();
            }
            ring.changes.push_back(Change { id, tenant, data });
            id
        };
        self.latest.send_replace(id);
    }

    /// The id of the latest change (the starting point of a new subscriber).
    pub fn latest(&self) -> u64 {
        *self.latest.borrow()
    }

    /// Ends every subscription (the server is shutting down).
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Cancelled once [`Feed::close`] was called.
    pub fn closed(&self) -> &CancellationToken {
        &self.closed
    }

    /// A receiver that sees the latest id move.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    /// The changes after `after` that `visible` lets through, at most [`MAX_READ`]
    /// looked at. An `after` older than the ring holds, or newer than any change,
    /// is a gap; the read then starts from the oldest change held (or from now).
    pub fn after(&self, after: u64, visible: impl Fn(&Change) -> bool) -> Read {
        let ring = self.ring();
        let latest = ring.next - 1;
        let oldest = ring.changes.front().map_or(ring.next, |c| c.id);
        let (start, gap) = if after > latest {
            (latest, true)
        } else if after + 1 < oldest {
            (oldest - 1, true)
        } else {
            (after, false)
        };
        // Ids in the ring are consecutive: the change after `start` is at this index.
        let skip = usize::try_from(start + 1 - oldest).unwrap_or(usize::MAX);
        let mut read = Read {
            changes: Vec::new(),
            gap,
            last: start,
        };
        for change in ring.changes.iter().skip(skip).take(MAX_READ) {
            read.last = change.id;
            if visible(change) {
                read.changes.push(change.clone());
            }
        }
        read
    }
}

/// A job's change, as the feed sends it (serialised straight from borrowed fields:
/// building a `serde_json::Value` first cost a tenth of a busy coordinator).
#[derive(Serialize, Default)]
struct JobChange<'a> {
    kind: &'static str,
    lsn: u64,
    tenant: &'a str,
    queue_id: Option<u64>,
    worker: Option<&'a HashHex>,
    state: Option<JobState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cached: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<i64>,
}

impl<'a> JobChange<'a> {
    fn new(
        lsn: u64,
        tenant: &'a str,
        queue_id: Option<u64>,
        worker: &'a HashHex,
        state: JobState,
    ) -> Self {
        Self {
            kind: "job",
            lsn,
            tenant,
            queue_id,
            worker: Some(worker),
            state: Some(state),
            ..Self::default()
        }
    }

    fn of(job: &'a JobRow, state: JobState) -> Self {
        Self::new(job.lsn, &job.tenant, job.queue_id, &job.worker, state)
    }

    /// What an attempt's `result` says: where it ran and how it ended.
    fn ended(self, result: &'a JobResult) -> Self {
        Self {
            node: Some(&result.node),
            attempts: Some(result.attempts),
            outcome: Some(&result.outcome),
            cached: Some(result.cached),
            ..self
        }
    }
}

impl Engine {
    /// Publishes that `job` is queued (submitted, requeued or re-prioritised:
    /// `priority`).
    pub(super) fn job_queued(&self, job: &JobRow, priority: Option<i64>) {
        let change = JobChange {
            attempts: Some(job.attempts),
            priority,
            ..JobChange::of(job, JobState::Queued)
        };
        self.feed.publish(Some(&job.tenant), &change);
    }

    /// Publishes that attempt `attempt` of `job` started (or was leased) on `node`.
    pub fn job_started(&self, job: &JobRow, node: &str, attempt: u32) {
        let change = JobChange {
            node: Some(node),
            attempts: Some(attempt),
            ..JobChange::of(job, JobState::Running)
        };
        self.feed.publish(Some(&job.tenant), &change);
    }

    /// Publishes a job's end (or, `retry`, its return to the queue after `result`).
    pub(super) fn job_ended(&self, job: &JobRow, result: &JobResult, retry: bool) {
        let state = if retry {
            JobState::Queued
        } else {
            result.state
        };
        let change = JobChange::of(job, state).ended(result);
        self.feed.publish(Some(&job.tenant), &change);
    }

    /// Publishes that job `lsn`, just written as `new`, was answered from the cache.
    pub(super) fn job_answered(&self, lsn: u64, new: &NewJob<'_>, result: &JobResult) {
        let change =
            JobChange::new(lsn, new.tenant, new.queue_id, &new.worker, result.state).ended(result);
        self.feed.publish(Some(new.tenant), &change);
    }

    /// Publishes a queue's change (`state`: what it is now).
    pub fn queue_changed(&self, tenant: &str, queue: u64, state: &str) {
        let data = json!({"kind": "queue", "queue_id": queue, "tenant": tenant, "state": state});
        self.feed.publish(Some(tenant), &data);
    }

    /// Publishes a handler group's change (`deployed`, `deleted`).
    pub fn group_changed(&self, tenant: &str, group: &str, state: &str) {
        let data = json!({"kind": "group", "id": group, "tenant": tenant, "state": state});
        self.feed.publish(Some(tenant), &data);
    }

    /// Publishes a node's change (the fleet's: only the operator sees it).
    pub fn node_changed(&self, node: &str, state: &str) {
        let data = json!({"kind": "node", "node": node, "state": state});
        self.feed.publish(None, &data);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ids(read: &Read) -> Vec<u64> {
        read.changes.iter().map(|c| c.id).collect()
    }

    #[test]
    fn changes_come_in_order_after_the_asked_id() {
        let feed = Feed::new(100, 8);
        for i in 0..5 {
            feed.publish(Some("t"), &json!({"kind": "job", "lsn": i}));
        }
        assert_eq!(feed.latest(), 105);
        let read = feed.after(102, |_| true);
        assert_eq!(ids(&read), [103, 104, 105]);
        assert!(!read.gap);
        assert_eq!(read.last, 105);
        assert!(read.changes[0].data.contains(r#""lsn":2"#));
        let none = feed.after(105, |_| true);
        assert!(none.changes.is_empty() && !none.gap && none.last == 105);
    }

    /// A subscriber that fell behind the ring must be told, not silently skip ahead.
    #[test]
    fn a_reader_behind_the_ring_or_from_another_run_gets_a_gap() {
        let feed = Feed::new(0, 4);
        for i in 0..10 {
            feed.publish(None, &json!({"kind": "node", "n": i}));
        }
        let behind = feed.after(2, |_| true);
        assert!(behind.gap);
        assert_eq!(ids(&behind), [7, 8, 9, 10]);
        // Exactly at the edge: the next change is still held, so no gap.
        let edge = feed.after(6, |_| true);
        assert!(!edge.gap);
        assert_eq!(ids(&edge), [7, 8, 9, 10]);
        // An id this feed never gave (a later run's, or made up) starts from now.
        let future = feed.after(1_000, |_| true);
        assert!(future.gap && future.changes.is_empty());
        assert_eq!(future.last, 10);
    }

    #[test]
    fn what_a_reader_may_not_see_is_skipped_but_read_past() {
        let feed = Feed::new(0, 16);
        feed.publish(Some("a"), &json!({"kind": "job"}));
        feed.publish(Some("b"), &json!({"kind": "job"}));
        feed.publish(None, &json!({"kind": "node"}));
        feed.publish(Some("a"), &json!({"kind": "job"}));
        let a = feed.after(0, |c| c.tenant.as_deref() == Some("a"));
        assert_eq!(ids(&a), [1, 4]);
        assert_eq!(a.last, 4, "hidden changes are read past, not read again");
    }

    #[test]
    fn a_read_hands_out_at_most_max_read_changes() {
        let feed = Feed::new(0, MAX_READ * 2);
        for _ in 0..MAX_READ + 10 {
            feed.publish(None, &json!({}));
        }
        let first = feed.after(0, |_| true);
        assert_eq!(first.changes.len(), MAX_READ);
        let rest = feed.after(first.last, |_| true);
        assert_eq!(rest.changes.len(), 10);
        assert_eq!(rest.last, feed.latest());
    }

    /// A restarted server's ids are above the ones its previous run gave (at fewer than
    /// 1,024 changes per millisecond of uptime), so a reconnect gets a gap, never
    /// changes silently skipped.
    #[test]
    fn ids_start_at_the_clock() {
        let before = u64::try_from(crate::store::now_ms()).unwrap() * 1_024;
        let feed = Feed::starting_now();
        let after = u64::try_from(crate::store::now_ms()).unwrap() * 1_024;
        assert!((before..=after).contains(&feed.latest()));
        assert!(feed.latest() < 1 << 53, "ids must stay exact in JavaScript");
    }
}
