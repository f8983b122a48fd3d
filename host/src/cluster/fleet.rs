//! The fleet: registered nodes (soft state) and the leases of the jobs they run. Every
//! lease carries a fencing token (job, attempt); the journal is the authority on which
//! attempt is current (`Store::settle_jobs` under a `Fence`), the fleet the in-memory
//! view that decides who gets work, renews leases from heartbeats and expires them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Notify;

use super::budget::InjectBudget;
use super::placement::{Decision, Demand, NodeView, Placer, Strategy, Weights};
use super::prefetch::Prefetch;
use super::protocol::{Assignment, Heartbeat, HeartbeatAnswer, Registration, Token};

/// Coordinator settings.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// How often nodes heartbeat.
    pub heartbeat_interval: Duration,
    /// A node silent this long is unhealthy, and a lease not renewed this long expires.
    pub lease: Duration,
    /// How placement chooses.
    pub placement: Strategy,
    /// The score's weights.
    pub weights: Weights,
    /// Leases a node may hold beyond its slots (queued on the node, hiding the round
    /// trip between one job's end and the next one's hand-out).
    pub prefetch: Prefetch,
    /// What one inject into a handler group may cost at most: handler runs, and bytes
    /// of events routed on (the hop limit bounds depth; this bounds breadth).
    pub inject_budget: InjectBudget,
}

impl Default for CoordinatorConfig {
    /// One heartbeat a second; five missed seconds make a node unhealthy, long enough
    /// to ride out a hiccup, short enough to requeue its work promptly.
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(1),
            lease: Duration::from_secs(5),
            placement: Strategy::Score,
            weights: Weights::default(),
            prefetch: Prefetch::Auto,
            inject_budget: InjectBudget::default(),
        }
    }
}

/// A lease: a job attempt handed to a node.
#[derive(Clone, Debug)]
pub struct Lease {
    /// The fencing token.
    pub token: Token,
    /// The node holding it.
    pub node: String,
    /// When it expires unless renewed.
    pub expires: Instant,
    /// Whether the node has received it (a work poll returned it).
    pub delivered: bool,
    /// Whether the job was cancelled while leased.
    pub cancel_requested: bool,
    /// Why the node was chosen (recorded in the result).
    pub placement: Value,
    /// Blobs the node uploaded for this lease, bytes verified: the only ones besides
    /// those inline in its report that the report may hand to the job's tenant.
    pub uploaded: Vec<crate::model::HashHex>,
    /// Blobs the node may fetch for this lease ([`Assignment::fetches`]): the only
    /// ones the coordinator serves it. `None` for a lease restored or adopted (not
    /// assigned by this process) until [`crate::cluster::driver::may_fetch`] reads
    /// them from the journal.
    pub fetches: Option<Vec<crate::model::HashHex>>,
}

/// Blobs one lease may upload (outputs, stderr, checkpoints): more are refused.
pub const MAX_UPLOADS_PER_LEASE: usize = 64;

/// The I/O side of a member: where it is, what waits for it.
#[derive(Debug, Default)]
struct Link {
    address: String,
    running: u64,
    mailbox: Vec<Assignment>,
    cancels: Vec<Token>,
    wake: Arc<Notify>,
    /// The node is shutting down: work polls answer at once.
    leaving: bool,
    /// Its health as last announced (`node.ready` / `node.unhealthy` webhooks).
    announced: Option<bool>,
}

#[derive(Debug)]
struct Inner {
    views: Vec<NodeView>,
    links: Vec<Link>,
    index: HashMap<String, usize>,
    leases: HashMap<u64, Lease>,
    placer: Placer,
    /// Actions to run on a given node when it can take them (event handlers).
    pins: HashMap<crate::model::HashHex, String>,
}

impl Inner {
    fn leased_by(&self, node: &str) -> u64 {
        self.leases.values().filter(|l| l.node == node).count() as u64
    }
}

/// A reserved slot on a node, to be turned into a lease once the database has the
/// attempt (or released).
#[derive(Debug)]
pub struct Reservation {
    /// The node.
    pub node: String,
    /// Why.
    pub decision: Decision,
}

/// What cancelling a leased job did.
#[derive(Debug, PartialEq, Eq)]
pub enum LeaseCancel {
    /// The node had not received it: the lease is gone, the job never ran.
    Withdrawn(Token),
    /// The node was told to stop it; its result (cancelled) will come back.
    Sent,
    /// No lease for that job.
    None,
}

/// A node as the fleet sees it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its id.
    pub id: String,
    /// `ready`, `busy`, `draining` or `unhealthy`.
    pub state: &'static str,
    /// Its slots.
    pub slots: u64,
    /// Leases it holds.
    pub leased: u64,
}

/// Registered nodes and leases.
#[derive(Debug)]
pub struct Fleet {
    /// Settings.
    pub config: CoordinatorConfig,
    inner: Mutex<Inner>,
    /// Notified when capacity may have appeared (a lease ended, a node joined,
    /// recovered or changed); the placement loop waits on it.
    pub capacity: Notify,
}

impl Fleet {
    /// An empty fleet.
    pub fn new(config: CoordinatorConfig) -> Self {
        let placer = Placer::new(config.placement, config.weights, config.lease);
        Self {
            config,
            inner: Mutex::new(Inner {
                views: Vec::new(),
                links: Vec::new(),
                index: HashMap::new(),
                leases: HashMap::new(),
                placer,
                pins: HashMap::new(),
            }),
            capacity: Notify::new(),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers (or re-registers) a node. Leases it held are kept: they are renewed by
    /// its heartbeats or expire.
    pub fn register(&self, registration: Registration, now: Instant) {
        let mut inner = self.inner();
        let leased = inner.leased_by(&registration.id);
        let mut view = NodeView::new(
            registration.id.clone(),
            registration.slots,
            registration.labels,
        );
        view.policy = self.config.prefetch;
        view.last_heartbeat = now;
        view.limits = registration.limits;
        view.leased = leased;
        let link = Link {
            address: registration.address,
            ..Link::default()
        };
        inner.placer.nodes_changed();
        match inner.index.get(&registration.id).copied() {
            Some(i) => {
                // Keep what was learned about the node (and its drain) across a
                // re-registration; work waiting in its mailbox stays there.
                let old = &inner.views[i];
                view.draining = old.draining;
                view.modules = old.modules.clone();
                view.failure_rate = old.failure_rate;
                view.run_time = old.run_time;
                view.last_result = old.last_result;
                let old_link = std::mem::replace(&mut inner.links[i], link);
                inner.links[i].mailbox = old_link.mailbox;
                inner.links[i].cancels = old_link.cancels;
                inner.links[i].wake = old_link.wake;
                inner.links[i].announced = old_link.announced;
                inner.views[i] = view;
            }
            None => {
                let i = inner.views.len();
                inner.views.push(view);
                inner.links.push(link);
                inner.index.insert(registration.id, i);
            }
        }
        drop(inner);
        self.capacity.notify_one();
    }

    /// A heartbeat: renews the node's listed leases (and those not yet delivered to
    /// it), records its load. `None` for an unknown node.
    pub fn heartbeat(&self, id: &str, beat: &Heartbeat, now: Instant) -> Option<HeartbeatAnswer> {
        let mut inner = self.inner();
        let i = *inner.index.get(id)?;
        let was_unhealthy = inner.views[i].unhealthy_at(self.config.lease, now);
        let renewed = now + self.config.lease;
        let mut cancel = Vec::new();
        let mut kept = Vec::new();
        for token in &beat.leases {
            match inner.leases.get_mut(&token.lsn) {
                Some(lease) if lease.token == *token && lease.node == id => {
                    lease.expires = renewed;
                    if lease.cancel_requested {
                        cancel.push(*token);
                    } else {
                        kept.push(*token);
                    }
                }
                // Not this node's current lease (expired and requeued, or finished
                // elsewhere): tell it to stop wasting the slot.
                _ => cancel.push(*token),
            }
        }
        // The leases not yet delivered are exactly those in its mailbox.
        let waiting: Vec<u64> = inner.links[i].mailbox.iter().map(|a| a.lease.lsn).collect();
        for lsn in waiting {
            if let Some(lease) = inner.leases.get_mut(&lsn) {
                lease.expires = renewed;
            }
        }
        let view = &mut inner.views[i];
        view.last_heartbeat = now;
        let old_free = view.free_at(now);
        if let Some(local) = beat.local {
            view.local = local;
        }
        if let Some(slots) = beat.slots {
            view.slots = slots;
        }
        let freed = view.free_at(now) > old_free;
        let draining = view.draining;
        if let Some(running) = beat.running {
            inner.links[i].running = running;
        }
        drop(inner);
        if was_unhealthy || freed {
            self.capacity.notify_one();
        }
        Some(HeartbeatAnswer {
            id: id.to_string(),
            draining,
            cancel,
            renewed: kept,
        })
    }

    /// Whether some node has a free slot (placement is worth trying).
    pub fn has_capacity(&self, now: Instant) -> bool {
        let inner = self.inner();
        let lease = self.config.lease;
        inner
            .views
            .iter()
            .any(|v| !v.draining && v.free_at(now) > 0 && !v.unhealthy_at(lease, now))
    }

    /// Asks that the job of `action` run on `node` (when that node can take it; else
    /// placement chooses as usual).
    pub fn pin(&self, action: crate::model::HashHex, node: &str) {
        self.inner().pins.insert(action, node.to_string());
    }

    /// Chooses a node for the job without taking a slot (where an event handler
    /// would run): `preferred` when it is eligible, else placement's choice.
    pub fn pick(&self, demand: &Demand, preferred: Option<&str>, now: Instant) -> Option<String> {
        let mut inner = self.inner();
        let Inner { views, placer, .. } = &mut *inner;
        let decision = preferred
            .and_then(|p| placer.choose_pinned(views, demand, p, now))
            .or_else(|| placer.choose(views, demand, now))?;
        Some(views[decision.index].id.clone())
    }

    /// Whether the node is registered, healthy and not draining.
    pub fn available(&self, id: &str, now: Instant) -> bool {
        let inner = self.inner();
        inner.index.get(id).is_some_and(|&i| {
            let view = &inner.views[i];
            !view.draining && !view.unhealthy_at(self.config.lease, now)
        })
    }

    /// Chooses a node for the job of `action` and takes one of its slots.
    pub fn reserve(
        &self,
        action: &crate::model::HashHex,
        demand: &Demand,
        now: Instant,
    ) -> Option<Reservation> {
        let mut inner = self.inner();
        let pin = inner.pins.get(action).cloned();
        let lease = self.config.lease;
        let Inner {
            views,
            placer,
            index,
            ..
        } = &mut *inner;
        // A pinned job runs on its node while that node is up: when the node has no
        // free slot the job waits for one. Only a node that is gone (unregistered,
        // unhealthy, draining) lets placement choose another.
        let pinned_up = pin.as_ref().is_some_and(|p| {
            index
                .get(p)
                .is_some_and(|&i| !views[i].draining && !views[i].unhealthy_at(lease, now))
        });
        let decision = match pin {
            Some(p) if pinned_up => placer.choose_pinned(views, demand, &p, now)?,
            _ => placer.choose(views, demand, now)?,
        };
        inner.pins.remove(action);
        let view = &mut inner.views[decision.index];
        view.leased += 1;
        view.modules.insert(demand.module);
        for blob in &demand.inputs {
            view.blobs.put(*blob, ());
        }
        Some(Reservation {
            node: view.id.clone(),
            decision,
        })
    }

    /// Gives back a reservation that did not become a lease.
    pub fn release(&self, reservation: &Reservation) {
        let mut inner = self.inner();
        if let Some(&i) = inner.index.get(&reservation.node) {
            inner.views[i].leased = inner.views[i].leased.saturating_sub(1);
        }
        drop(inner);
        self.capacity.notify_one();
    }

    /// Turns a reservation into a lease and puts the assignment in the node's mailbox.
    pub fn assign(&self, reservation: Reservation, assignment: Assignment, now: Instant) {
        let mut inner = self.inner();
        let token = assignment.lease;
        let placement = reservation.decision.explain(&reservation.node);
        inner.leases.insert(
            token.lsn,
            Lease {
                token,
                node: reservation.node.clone(),
                expires: now + self.config.lease,
                delivered: false,
                cancel_requested: false,
                placement,
                uploaded: Vec::new(),
                fetches: Some(assignment.fetches()),
            },
        );
        match inner.index.get(&reservation.node).copied() {
            Some(i) => {
                inner.links[i].mailbox.push(assignment);
                inner.links[i].wake.notify_one();
            }
            // Deregistered in between: the lease expires and the job is requeued.
            None => {
                tracing::warn!(node = %reservation.node, lsn = token.lsn, "node left before its lease was handed out")
            }
        }
    }

    /// Puts a lease back: one restored from the journal after a coordinator restart,
    /// or one `finish` ended whose result the journal then failed to write (the node's
    /// retried report finds it).
    pub fn put_back(&self, lease: Lease) {
        let mut inner = self.inner();
        if let Some(&i) = inner.index.get(&lease.node) {
            inner.views[i].leased += 1;
        }
        inner.leases.insert(lease.token.lsn, lease);
    }

    /// A node shutting down: it gets no new work (it is draining), the leases it has
    /// not received are withdrawn and returned (for the caller to requeue), and its work
    /// polls answer at once from now on.
    pub fn leave(&self, id: &str) -> Option<Vec<Token>> {
        let mut inner = self.inner();
        let i = *inner.index.get(id)?;
        inner.views[i].draining = true;
        inner.links[i].leaving = true;
        let withdrawn: Vec<Token> = std::mem::take(&mut inner.links[i].mailbox)
            .into_iter()
            .map(|a| a.lease)
            .collect();
        for token in &withdrawn {
            inner.leases.remove(&token.lsn);
        }
        let view = &mut inner.views[i];
        view.leased = view.leased.saturating_sub(withdrawn.len() as u64);
        inner.links[i].wake.notify_one();
        Some(withdrawn)
    }

    /// What is waiting for the node: assignments (now delivered) and cancellations.
    /// `None` for an unknown node; the `Notify` is what to wait on when both are empty
    /// (`None` instead when the node is leaving: answer at once).
    #[allow(clippy::type_complexity)]
    pub fn take(
        &self,
        id: &str,
        now: Instant,
    ) -> Option<(Vec<Assignment>, Vec<Token>, Option<Arc<Notify>>)> {
        let mut inner = self.inner();
        let i = *inner.index.get(id)?;
        let assignments = std::mem::take(&mut inner.links[i].mailbox);
        let cancels = std::mem::take(&mut inner.links[i].cancels);
        let wake = (!inner.links[i].leaving).then(|| inner.links[i].wake.clone());
        let renewed = now + self.config.lease;
        inner.views[i].last_heartbeat = now;
        for assignment in &assignments {
            if let Some(lease) = inner.leases.get_mut(&assignment.lease.lsn) {
                lease.delivered = true;
                lease.expires = renewed;
            }
        }
        Some((assignments, cancels, wake))
    }

    /// Whether node `id` holds a lease now that needs blob `hash`: `Err` with the
    /// node's leases whose blobs are not known yet when none known needs it.
    pub fn may_fetch(&self, id: &str, hash: &crate::model::HashHex) -> Result<bool, Vec<u64>> {
        let inner = self.inner();
        let mut unknown = Vec::new();
        for lease in inner.leases.values().filter(|lease| lease.node == id) {
            match &lease.fetches {
                Some(blobs) if blobs.contains(hash) => return Ok(true),
                Some(_) => {}
                None => unknown.push(lease.token.lsn),
            }
        }
        if unknown.is_empty() {
            Ok(false)
        } else {
            Err(unknown)
        }
    }

    /// Sets the blobs of a restored or adopted lease (read from the journal).
    pub fn learn_fetches(&self, lsn: u64, blobs: Vec<crate::model::HashHex>) {
        if let Some(lease) = self.inner().leases.get_mut(&lsn) {
            lease.fetches.get_or_insert(blobs);
        }
    }

    /// Whether `token` is a current lease of node `id`.
    pub fn holds(&self, id: &str, token: Token) -> bool {
        self.inner()
            .leases
            .get(&token.lsn)
            .is_some_and(|lease| lease.token == token && lease.node == id)
    }

    /// Records that node `id` delivered (verified) blob `hash` for its lease `token`;
    /// false when that is not a current lease of the node, or it uploaded too many.
    pub fn note_upload(&self, id: &str, token: Token, hash: crate::model::HashHex) -> bool {
        let mut inner = self.inner();
        match inner.leases.get_mut(&token.lsn) {
            Some(lease) if lease.token == token && lease.node == id => {
                if !lease.uploaded.contains(&hash) {
                    if lease.uploaded.len() >= MAX_UPLOADS_PER_LEASE {
                        return false;
                    }
                    lease.uploaded.push(hash);
                }
                true
            }
            _ => false,
        }
    }

    /// Whether node `id` uploaded `hash` for its current lease `token`.
    pub fn uploaded(&self, id: &str, token: Token, hash: &crate::model::HashHex) -> bool {
        self.inner().leases.get(&token.lsn).is_some_and(|lease| {
            lease.token == token && lease.node == id && lease.uploaded.contains(hash)
        })
    }

    /// Ends the lease `token` of node `id` because its result came back at `now`, after
    /// a `run` that long if it ran. `None` when that is not a current lease (fencing).
    pub fn finish(
        &self,
        id: &str,
        token: Token,
        failed: bool,
        run: Option<Duration>,
        now: Instant,
    ) -> Option<Lease> {
        let mut inner = self.inner();
        match inner.leases.get(&token.lsn) {
            Some(lease) if lease.token == token && lease.node == id => {}
            _ => return None,
        }
        let lease = inner.leases.remove(&token.lsn)?;
        if let Some(&i) = inner.index.get(id) {
            let view = &mut inner.views[i];
            view.leased = view.leased.saturating_sub(1);
            view.record(failed);
            view.last_result = Some(now);
            if let Some(run) = run {
                view.observe_run(run);
            }
        }
        drop(inner);
        self.capacity.notify_one();
        Some(lease)
    }

    /// Nodes whose health changed since the last call, as (id, healthy): a node seen
    /// for the first time is announced ready.
    pub fn health_changes(&self, now: Instant) -> Vec<(String, bool)> {
        let lease = self.config.lease;
        let mut inner = self.inner();
        let Inner { views, links, .. } = &mut *inner;
        let mut changes = Vec::new();
        for (view, link) in views.iter().zip(links.iter_mut()) {
            let healthy = !view.unhealthy_at(lease, now);
            if link.announced != Some(healthy) {
                link.announced = Some(healthy);
                changes.push((view.id.clone(), healthy));
            }
        }
        changes
    }

    /// Removes and returns the leases past their expiry; each counts as a failure of
    /// its node.
    pub fn expire(&self, now: Instant) -> Vec<Lease> {
        let mut inner = self.inner();
        let expired: Vec<u64> = inner
            .leases
            .values()
            .filter(|l| l.expires <= now)
            .map(|l| l.token.lsn)
            .collect();
        let mut lost = Vec::with_capacity(expired.len());
        for lsn in expired {
            let Some(lease) = inner.leases.remove(&lsn) else {
                continue;
            };
            if let Some(&i) = inner.index.get(&lease.node) {
                let view = &mut inner.views[i];
                view.leased = view.leased.saturating_sub(1);
                view.record(true);
                inner.links[i]
                    .mailbox
                    .retain(|a| a.lease.lsn != lease.token.lsn);
            }
            lost.push(lease);
        }
        drop(inner);
        if !lost.is_empty() {
            self.capacity.notify_one();
        }
        lost
    }

    /// Cancels the lease of job `lsn`, if any.
    pub fn cancel(&self, lsn: u64) -> LeaseCancel {
        let mut inner = self.inner();
        let Some(lease) = inner.leases.get_mut(&lsn) else {
            return LeaseCancel::None;
        };
        let token = lease.token;
        let node = lease.node.clone();
        if !lease.delivered {
            inner.leases.remove(&lsn);
            if let Some(&i) = inner.index.get(&node) {
                inner.links[i].mailbox.retain(|a| a.lease.lsn != lsn);
                inner.views[i].leased = inner.views[i].leased.saturating_sub(1);
            }
            drop(inner);
            self.capacity.notify_one();
            return LeaseCancel::Withdrawn(token);
        }
        lease.cancel_requested = true;
        if let Some(&i) = inner.index.get(&node) {
            inner.links[i].cancels.push(token);
            inner.links[i].wake.notify_one();
        }
        LeaseCancel::Sent
    }

    /// Leases outstanding.
    pub fn leases(&self) -> usize {
        self.inner().leases.len()
    }

    /// Total slots of healthy nodes.
    pub fn slots(&self) -> u64 {
        let inner = self.inner();
        inner
            .views
            .iter()
            .filter(|v| !v.unhealthy(self.config.lease))
            .map(|v| v.slots)
            .sum()
    }

    fn state(&self, view: &NodeView) -> &'static str {
        if view.unhealthy(self.config.lease) {
            "unhealthy"
        } else if view.draining {
            "draining"
        } else if view.leased + view.local >= view.slots {
            "busy"
        } else {
            "ready"
        }
    }

    fn describe(&self, inner: &Inner, i: usize) -> Value {
        let (view, link) = (&inner.views[i], &inner.links[i]);
        json!({
            "id": view.id,
            "address": link.address,
            "state": self.state(view),
            "slots": view.slots,
            "running": link.running.max(view.leased.min(view.slots)),
            "leased": view.leased,
            "labels": view.labels,
            "last_heartbeat_ms_ago": view.last_heartbeat.elapsed().as_millis() as u64,
            "failure_rate": (view.failure_rate * 1000.0).round() / 1000.0,
            "modules": view.modules.len(),
        })
    }

    /// Every node, by id.
    pub fn list(&self) -> Vec<Value> {
        let inner = self.inner();
        let mut order: Vec<usize> = (0..inner.views.len()).collect();
        order.sort_by(|a, b| inner.views[*a].id.cmp(&inner.views[*b].id));
        order
            .into_iter()
            .map(|i| self.describe(&inner, i))
            .collect()
    }

    /// One node.
    pub fn details(&self, id: &str) -> Option<Value> {
        let inner = self.inner();
        let i = *inner.index.get(id)?;
        Some(self.describe(&inner, i))
    }

    /// Removes a node; its leases expire unless it registers again and renews them.
    pub fn deregister(&self, id: &str) -> bool {
        let mut inner = self.inner();
        let Some(i) = inner.index.remove(id) else {
            return false;
        };
        inner.placer.nodes_changed();
        inner.views.swap_remove(i);
        let link = inner.links.swap_remove(i);
        link.wake.notify_waiters();
        if i < inner.views.len() {
            let moved = inner.views[i].id.clone();
            inner.index.insert(moved, i);
        }
        true
    }

    /// Every node's id, state, slots and leases held, by id.
    pub fn members(&self) -> Vec<Member> {
        let mut members: Vec<Member> = (self.inner().views.iter())
            .map(|view| Member {
                id: view.id.clone(),
                state: self.state(view),
                slots: view.slots,
                leased: view.leased,
            })
            .collect();
        members.sort_by(|a, b| a.id.cmp(&b.id));
        members
    }

    /// Marks a node draining (no new work; what it runs finishes), or serving again.
    pub fn set_draining(&self, id: &str, draining: bool) -> Option<Value> {
        let mut inner = self.inner();
        let i = *inner.index.get(id)?;
        inner.views[i].draining = draining;
        Some(self.describe(&inner, i))
    }
}
#[cfg(test)]
#[path = "fleet_tests.rs"]
mod tests;
