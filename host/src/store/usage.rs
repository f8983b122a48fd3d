//! The usage ledger: one row per finished job (written with its result), summed by
//! tenant, worker or queue over a time range.

use rusqlite::params;

use super::{Store, StoreResult, parse_hash};
use crate::model::{UsageBy, UsageRow};

impl Store {
    /// Usage of `tenant` (every tenant's when `None`) for jobs finished in
    /// `from_ms..to_ms`, grouped by `by`.
    pub(super) fn usage(
        &self,
        tenant: Option<&str>,
        by: UsageBy,
        from_ms: i64,
        to_ms: i64,
    ) -> StoreResult<Vec<UsageRow>> {
        let group = match by {
            UsageBy::Tenant => "tenant, NULL, NULL",
            UsageBy::Worker => "tenant, worker, NULL",
            UsageBy::Queue => "tenant, NULL, queue_id",
        };
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {group}, COUNT(*), SUM(fuel), SUM(wall_ms), SUM(memory_byte_seconds) \
             FROM usage WHERE (?1 IS NULL OR tenant = ?1) AND finished_ms >= ?2 \
             AND finished_ms < ?3 GROUP BY {group} ORDER BY {group}"
        ))?;
        let rows = stmt.query_map(params![tenant, from_ms, to_ms], |row| {
            let sum = |i: usize| row.get::<_, i64>(i).map(|n| n.max(0) as u64);
            Ok(UsageRow {
                tenant: row.get(0)?,
                worker: row
                    .get::<_, Option<String>>(1)?
                    .map(parse_hash)
                    .transpose()?,
                queue_id: (by == UsageBy::Queue)
                    .then(|| row.get::<_, Option<i64>>(2))
                    .transpose()?
                    .map(|queue| queue.map(|q| q as u64)),
                jobs: sum(3)?,
                fuel: sum(4)?,
                wall_ms: sum(5)?,
                memory_byte_seconds: sum(6)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every tenant's run time since `since_ms`, in minutes: (tenant, the minute's
    /// start in Unix ms, wall milliseconds of the jobs that finished in it).
    pub(super) fn run_time_by_minute(&self, since_ms: i64) -> StoreResult<Vec<(String, i64, u64)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT tenant, finished_ms / 60000 * 60000 AS minute, SUM(wall_ms) FROM usage \
             WHERE finished_ms >= ?1 GROUP BY tenant, minute",
        )?;
        let rows = stmt.query_map(params![since_ms], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get::<_, i64>(2)?.max(0) as u64,
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Fuel `tenant`'s jobs that finished since `since_ms` consumed.
    pub(super) fn fuel_since(&self, tenant: &str, since_ms: i64) -> StoreResult<u64> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT COALESCE(SUM(fuel), 0) FROM usage WHERE tenant = ?1 AND finished_ms >= ?2",
        )?;
        let fuel: i64 = stmt.query_row(params![tenant, since_ms], |row| row.get(0))?;
        Ok(fuel.max(0) as u64)
    }
}
