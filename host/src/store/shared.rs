//! What coordinators sharing a PostgreSQL journal (`--shared`) keep in it besides the
//! jobs: which nodes each of them hears, so the leader finds the leases of nodes no
//! coordinator hears any more; and the queued jobs a coordinator with idle nodes takes
//! into its schedule.

use super::db::{Db, params};
use super::jobs::{JOB_COLUMNS, job_row_with_deps};
use super::leader::DB_NOW_MS;
use super::{JobRow, Store, StoreResult};

impl Store {
    /// Whether this process shares its journal with other coordinators.
    pub fn is_shared(&self) -> bool {
        self.leader.is_some()
    }

    /// Whether this process runs the duties that must run once: always, unless it
    /// shares its journal and another coordinator leads.
    pub fn leads(&self) -> bool {
        self.leader.as_ref().is_none_or(|l| l.leads())
    }

    /// The journal's notifications, on a shared journal (see `db::listen`).
    pub fn listen(&self) -> StoreResult<Option<tokio::sync::mpsc::UnboundedReceiver<String>>> {
        let Some(url) = &self.shared_url else {
            return Ok(None);
        };
        let (to, from) = tokio::sync::mpsc::unbounded_channel();
        super::db::listen(url, to)?;
        Ok(Some(from))
    }

    /// Notes that `coordinator` hears these nodes now (the database's clock).
    pub fn beat_nodes(&self, coordinator: &str, nodes: &[String]) -> StoreResult<()> {
        let mut conn = self.conn();
        if !matches!(*conn, Db::Postgres(_)) || nodes.is_empty() {
            return Ok(());
        }
        let tx = conn.transaction()?;
        for node in nodes {
            tx.execute(
                &format!(
                    "INSERT INTO wasmesh_nodes (node, coordinator, beat_ms) VALUES (?1, ?2, {DB_NOW_MS}) \
                     ON CONFLICT (node) DO UPDATE SET coordinator = excluded.coordinator, \
                     beat_ms = excluded.beat_ms"
                ),
                params![node, coordinator],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Running jobs leased to nodes no coordinator heard for `silent_ms` (by the
    /// database's clock), at most `limit`. A node no coordinator noted yet (it joined
    /// since their last beat) counts as silent only once its lease is older than that.
    pub fn silent_leases(&self, silent_ms: i64, limit: usize) -> StoreResult<Vec<JobRow>> {
        let conn = self.conn();
        if !matches!(*conn, Db::Postgres(_)) {
            return Ok(Vec::new());
        }
        Ok(conn.query_map(
            &format!(
                "SELECT {JOB_COLUMNS} FROM jobs LEFT JOIN wasmesh_nodes n ON n.node = jobs.lease_node \
                 WHERE jobs.state = 'running' AND jobs.lease_node IS NOT NULL \
                 AND COALESCE(n.beat_ms, (SELECT a.started_ms FROM attempts a \
                     WHERE a.lsn = jobs.lsn AND a.attempt = jobs.attempts), 0) < {DB_NOW_MS} - ?1 \
                 ORDER BY lsn LIMIT ?2"
            ),
            params![silent_ms, limit as i64],
            job_row_with_deps,
        )?)
    }

    /// Running jobs leased to one of `nodes`, at most `limit`, oldest first.
    pub fn leases_of(&self, nodes: &[String], limit: usize) -> StoreResult<Vec<JobRow>> {
        let rows = self.conn().query_map(
            &format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'running' \
                 AND lease_node IS NOT NULL ORDER BY lsn LIMIT ?1"
            ),
            params![limit as i64],
            job_row_with_deps,
        )?;
        Ok(rows
            .into_iter()
            .filter(|job| job.lease_node.as_ref().is_some_and(|n| nodes.contains(n)))
            .collect())
    }

    /// The tenant's jobs not finished yet (queued, waiting or running), whichever
    /// coordinator took them.
    pub(super) fn pending_of(&self, tenant: &str) -> StoreResult<u64> {
        let pending: i64 = self.conn().query_one(
            "SELECT COUNT(*) FROM jobs WHERE tenant = ?1 AND state IN ('queued', 'running')",
            params![tenant],
            |row| row.get(0),
        )?;
        Ok(pending as u64)
    }

    /// Queued jobs none of whose dependencies is still pending, submitted before job
    /// `before` and before `created_before_ms`, highest priority and oldest first, at
    /// most `limit`.
    pub fn queued_ready(
        &self,
        before: u64,
        created_before_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<JobRow>> {
        Ok(self.conn().query_map(
            &format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'queued' AND lsn < ?1 \
                 AND created_ms < ?2 AND NOT EXISTS \
                 (SELECT 1 FROM job_deps d JOIN jobs p ON p.lsn = d.after \
                  WHERE d.lsn = jobs.lsn AND p.state IN ('queued', 'running')) \
                 ORDER BY priority DESC, lsn LIMIT ?3"
            ),
            params![
                before.min(i64::MAX as u64) as i64,
                created_before_ms,
                limit as i64
            ],
            job_row_with_deps,
        )?)
    }
}
