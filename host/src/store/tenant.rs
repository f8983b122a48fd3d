//! The two views of the journal: [`TenantStore`], every lookup scoped by one tenant
//! (what requests use: another tenant's row is simply not found), and [`Unscoped`],
//! lookups by id alone for the engine's own loops.

use serde_json::Value;

use super::{
    IdempotencyBegin, JobFilter, JobPage, JobRow, QueueRow, QueueSpec, QueueSummary, ReferencePage,
    Store, StoreResult, Webhook,
};
use crate::model::{Attempt, HashHex, JobResult, JobState, QueueState, UsageBy, UsageRow};

/// The journal as one tenant sees it. It has no unscoped lookup: the tenancy
/// invariant is this type.
#[derive(Clone, Copy, Debug)]
pub struct TenantStore<'a> {
    store: &'a Store,
    tenant: &'a str,
}

/// A group as stored: (spec JSON, placements JSON).
pub type GroupRow = (String, String);

impl<'a> TenantStore<'a> {
    pub(super) fn new(store: &'a Store, tenant: &'a str) -> Self {
        Self { store, tenant }
    }

    /// The tenant this view is scoped by.
    pub fn name(&self) -> &'a str {
        self.tenant
    }

    /// Whether the tenant holds the blob (the empty blob is everyone's).
    pub fn owns_blob(&self, hash: &HashHex) -> StoreResult<bool> {
        self.store.owns_blob(self.tenant, hash)
    }

    /// Whether the tenant holds the blob, marking it used now when its last use is
    /// older than `refresh_before_ms` (so a sweep leaves it alone for a grace period).
    pub fn hold_blob(&self, hash: &HashHex, refresh_before_ms: i64) -> StoreResult<bool> {
        self.store
            .hold_blob(self.tenant, hash, super::now_ms(), refresh_before_ms)
    }

    /// Records that the tenant holds the blob; true when it did not before.
    pub fn own_blob(&self, hash: &HashHex, size: u64) -> StoreResult<bool> {
        self.store.own_blob(self.tenant, hash, size)
    }

    /// Bytes of the blobs the tenant holds.
    pub fn held_bytes(&self) -> StoreResult<u64> {
        self.store.held_bytes(self.tenant)
    }

    /// A worker's descriptor JSON.
    pub fn worker(&self, id: &HashHex) -> StoreResult<Option<String>> {
        self.store.worker(self.tenant, id)
    }

    /// Registers a worker; true when it is new for the tenant.
    pub fn put_worker(
        &self,
        id: &HashHex,
        name: &str,
        version: Option<&str>,
        descriptor: &str,
    ) -> StoreResult<bool> {
        self.store
            .put_worker(self.tenant, id, name, version, descriptor)
    }

    /// The tenant's workers: (id, name, version), oldest first.
    pub fn workers(&self) -> StoreResult<Vec<(String, String, Option<String>)>> {
        self.store.workers(self.tenant)
    }

    /// One of the tenant's jobs.
    pub fn job(&self, lsn: u64) -> StoreResult<Option<JobRow>> {
        self.store.job(self.tenant, lsn)
    }

    /// Every attempt at one of the tenant's jobs, first first.
    pub fn attempts(&self, lsn: u64) -> StoreResult<Vec<Attempt>> {
        self.store.attempts(self.tenant, lsn)
    }

    /// Up to `limit` of the tenant's jobs that wait for its job `lsn`, by LSN.
    pub fn dependents(&self, lsn: u64, limit: usize) -> StoreResult<Vec<u64>> {
        self.store.dependents(self.tenant, lsn, limit)
    }

    /// A page of the tenant's jobs below LSN `before`, newest first.
    pub fn jobs(
        &self,
        filter: &JobFilter,
        before: Option<u64>,
        limit: usize,
    ) -> StoreResult<JobPage> {
        self.store
            .list_jobs(Some(self.tenant), filter, before, limit)
    }

    /// A page of the tenant's queues with ids below `before`, newest first, and the
    /// `before` of the next page.
    pub fn queues(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> StoreResult<(Vec<QueueSummary>, Option<u64>)> {
        self.store.list_queues(Some(self.tenant), before, limit)
    }

    /// The result of one of the tenant's jobs, once it has one.
    pub fn result(&self, lsn: u64) -> StoreResult<Option<JobResult>> {
        Ok(self.job(lsn)?.and_then(|job| job.result))
    }

    /// The latest successful result of this action for the tenant.
    pub fn cached_result(&self, action: &HashHex) -> StoreResult<Option<JobResult>> {
        self.store.cached_result(self.tenant, action)
    }

    /// Finished, unretired jobs (optionally of one queue), by LSN.
    pub fn completed(&self, queue: Option<u64>) -> StoreResult<Vec<u64>> {
        self.store.completed(self.tenant, queue)
    }

    /// Retires a finished job from the completed list; false when it is not finished.
    pub fn retire(&self, lsn: u64) -> StoreResult<bool> {
        self.store.retire(self.tenant, lsn)
    }

    /// Creates a queue; returns its id.
    pub fn create_queue(&self, token: Option<&str>, spec: &QueueSpec<'_>) -> StoreResult<u64> {
        self.store.create_queue(self.tenant, token, spec)
    }

    /// One of the tenant's queues by id.
    pub fn queue(&self, id: u64) -> StoreResult<Option<QueueRow>> {
        self.store.queue(self.tenant, id)
    }

    /// The tenant's remote queue whose token digest is `digest` (constant time).
    pub fn queue_by_token(&self, digest: &str) -> StoreResult<Option<QueueRow>> {
        self.store.queue_by_token(self.tenant, digest)
    }

    /// Sets the state of one of the tenant's queues; false when it has none such.
    pub fn set_queue_state(&self, id: u64, state: QueueState) -> StoreResult<bool> {
        self.store.set_queue_state(Some(self.tenant), id, state)
    }

    /// Whether one of the tenant's queues has a job still queued or running.
    pub fn queue_is_pending(&self, id: u64) -> StoreResult<bool> {
        self.store.queue_is_pending(self.tenant, id)
    }

    /// Job counts of one of the tenant's queues, by state.
    pub fn queue_counts(&self, id: u64) -> StoreResult<Vec<(JobState, u64)>> {
        self.store.queue_counts(self.tenant, id)
    }

    /// LSNs of a queue's jobs still queued or running.
    pub fn queue_pending(&self, id: u64) -> StoreResult<Vec<u64>> {
        self.store.queue_pending(self.tenant, id)
    }

    /// Looks up an idempotency key for a request with `fingerprint`, claiming it when
    /// it is new (or abandoned by a process that died).
    pub fn idempotency_begin(&self, key: &str, fingerprint: &str) -> StoreResult<IdempotencyBegin> {
        self.store.idempotency_begin(self.tenant, key, fingerprint)
    }

    /// Stores the response of the first request with an idempotency key.
    pub fn idempotency_finish(
        &self,
        key: &str,
        status: u16,
        content_type: Option<&str>,
        body: &[u8],
    ) -> StoreResult<()> {
        self.store
            .idempotency_finish(self.tenant, key, status, content_type, body)
    }

    /// Releases a key whose first request did not complete, so a retry runs again.
    pub fn idempotency_forget(&self, key: &str) -> StoreResult<()> {
        self.store.idempotency_forget(self.tenant, key)
    }

    /// Stores (or replaces the placements of) one of the tenant's groups.
    pub fn put_group(&self, id: &str, spec: &str, placements: &str) -> StoreResult<()> {
        self.store.put_group(self.tenant, id, spec, placements)
    }

    /// One of the tenant's groups.
    pub fn group(&self, id: &str) -> StoreResult<Option<GroupRow>> {
        self.store.group(self.tenant, id)
    }

    /// The tenant's groups: (id, tenant, spec, placements).
    pub fn groups(&self) -> StoreResult<Vec<(String, String, String, String)>> {
        self.store.groups(Some(self.tenant))
    }

    /// Deletes one of the tenant's groups and its event log; false when it has none
    /// such.
    pub fn delete_group(&self, id: &str) -> StoreResult<bool> {
        if !self.store.delete_group(self.tenant, id)? {
            return Ok(false);
        }
        self.store.forget_group_events(id)?;
        Ok(true)
    }

    /// The latest `limit` entries of one of the tenant's groups' event logs, oldest
    /// first; `None` when the tenant has no such group.
    pub fn group_events(&self, id: &str, limit: usize) -> StoreResult<Option<Vec<Value>>> {
        if self.group(id)?.is_none() {
            return Ok(None);
        }
        self.store.group_events(id, limit).map(Some)
    }

    /// What the tenant's jobs finished in `from_ms..to_ms` consumed, grouped by `by`.
    pub fn usage(&self, by: UsageBy, from_ms: i64, to_ms: i64) -> StoreResult<Vec<UsageRow>> {
        self.store.usage(Some(self.tenant), by, from_ms, to_ms)
    }

    /// The tenant's jobs not finished yet, in the journal (every coordinator's).
    pub fn pending_jobs(&self) -> StoreResult<u64> {
        self.store.pending_of(self.tenant)
    }

    /// Fuel the tenant's jobs that finished since `since_ms` consumed.
    pub fn fuel_since(&self, since_ms: i64) -> StoreResult<u64> {
        self.store.fuel_since(self.tenant, since_ms)
    }

    /// The tenant's webhooks, oldest first.
    pub fn webhooks(&self) -> StoreResult<Vec<Webhook>> {
        self.store.webhooks_of(self.tenant)
    }

    /// One of the tenant's webhooks.
    pub fn webhook(&self, id: &str) -> StoreResult<Option<Webhook>> {
        self.store.tenant_webhook(self.tenant, id)
    }
}

/// Lookups by id alone, whoever owns the row: the engine's recovery, placement and
/// settling, the delivery loop, the operator's views. Never for a tenant's request.
#[derive(Clone, Copy, Debug)]
pub struct Unscoped<'a> {
    store: &'a Store,
}

impl<'a> Unscoped<'a> {
    pub(super) fn new(store: &'a Store) -> Self {
        Self { store }
    }

    /// A worker's descriptor JSON, whichever tenant registered it (its id is the
    /// descriptor's hash, so every copy is the same).
    pub fn worker(&self, id: &HashHex) -> StoreResult<Option<String>> {
        self.store.worker_any(id)
    }

    /// A job by LSN.
    pub fn job(&self, lsn: u64) -> StoreResult<Option<JobRow>> {
        self.store.job_by_lsn(lsn)
    }

    /// A page of every tenant's jobs below LSN `before`, newest first (the operator's
    /// view).
    pub fn jobs(
        &self,
        filter: &JobFilter,
        before: Option<u64>,
        limit: usize,
    ) -> StoreResult<JobPage> {
        self.store.list_jobs(None, filter, before, limit)
    }

    /// A page of every tenant's queues (the operator's view).
    pub fn queues(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> StoreResult<(Vec<QueueSummary>, Option<u64>)> {
        self.store.list_queues(None, before, limit)
    }

    /// Every job still queued or running, oldest first (to rebuild the scheduler).
    pub fn pending_jobs(&self) -> StoreResult<Vec<JobRow>> {
        self.store.pending_jobs()
    }

    /// Counts of all jobs by state (for metrics).
    pub fn job_counts(&self) -> StoreResult<Vec<(JobState, u64)>> {
        self.store.job_counts()
    }

    /// A queue by id, whoever's it is.
    pub fn queue(&self, id: u64) -> StoreResult<Option<QueueRow>> {
        self.store.queue_any(id)
    }

    /// Active queues untouched since `before_ms` with nothing pending.
    pub fn idle_queues(&self, before_ms: i64) -> StoreResult<Vec<u64>> {
        self.store.idle_queues(before_ms)
    }

    /// Expires an idle queue (the engine's idle-queue loop).
    pub fn expire_queue(&self, id: u64) -> StoreResult<bool> {
        self.store.set_queue_state(None, id, QueueState::Cancelled)
    }

    /// Every tenant's groups: (id, tenant, spec, placements).
    pub fn groups(&self) -> StoreResult<Vec<(String, String, String, String)>> {
        self.store.groups(None)
    }

    /// Retires finished, unretired results that finished before `before_ms`; how many.
    pub fn retire_finished(&self, before_ms: i64) -> StoreResult<usize> {
        self.store.retire_finished(before_ms)
    }

    /// Deletes cancelled queues untouched since `before_ms` with nothing pending.
    pub fn delete_ended_queues(&self, before_ms: i64) -> StoreResult<usize> {
        self.store.delete_ended_queues(before_ms)
    }

    /// Deletes finished webhook deliveries that finished before `before_ms`.
    pub fn delete_old_deliveries(&self, before_ms: i64) -> StoreResult<usize> {
        self.store.delete_old_deliveries(before_ms)
    }

    /// Every tenant's usage (the operator's view), grouped by `by`.
    pub fn usage(&self, by: UsageBy, from_ms: i64, to_ms: i64) -> StoreResult<Vec<UsageRow>> {
        self.store.usage(None, by, from_ms, to_ms)
    }

    /// Ownership rows untouched since `before_ms`: (tenant, hash, size).
    pub fn stale_blobs(&self, before_ms: i64) -> StoreResult<Vec<(String, HashHex, u64)>> {
        self.store.stale_blobs(before_ms)
    }

    /// Every registered worker's descriptor: (tenant, text).
    pub fn worker_texts(&self) -> StoreResult<ReferencePage> {
        self.store.worker_texts()
    }

    /// A page of unretired jobs' texts after LSN `after`, and where the next starts.
    pub fn job_texts(&self, after: u64, limit: usize) -> StoreResult<(ReferencePage, Option<u64>)> {
        self.store.job_texts(after, limit)
    }

    /// Deletes `tenant`'s row of the blob if still untouched since `before_ms`.
    pub fn drop_stale_blob(
        &self,
        tenant: &str,
        hash: &HashHex,
        before_ms: i64,
    ) -> StoreResult<bool> {
        self.store.drop_stale_blob(tenant, hash, before_ms)
    }

    /// Tenants holding the blob.
    pub fn holders(&self, hash: &HashHex) -> StoreResult<Vec<String>> {
        self.store.holders(hash)
    }

    /// Bytes each tenant holds.
    pub fn held_by_tenant(&self) -> StoreResult<Vec<(String, u64)>> {
        self.store.held_by_tenant()
    }

    /// Adds storage-time (byte-seconds) to each tenant's hour of `at_ms`.
    pub fn charge_storage(&self, charges: &[(String, u64)], at_ms: i64) -> StoreResult<()> {
        self.store.charge_storage(charges, at_ms)
    }

    /// Each worker's mean run time (ms) since `since_ms` (to seed the autoscaler's).
    pub fn mean_run_by_worker(&self, since_ms: i64) -> StoreResult<Vec<(String, f64)>> {
        self.store.mean_run_by_worker(since_ms)
    }

    /// Every tenant's run time since `since_ms` by minute (to rebuild the fair share).
    pub fn run_time_by_minute(&self, since_ms: i64) -> StoreResult<Vec<(String, i64, u64)>> {
        self.store.run_time_by_minute(since_ms)
    }

    /// A webhook by id.
    pub fn webhook(&self, id: &str) -> StoreResult<Option<Webhook>> {
        self.store.webhook_by_id(id)
    }
}
