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
}
