//! The usage ledger: one row per finished job (written with its result), summed by
//! tenant, worker or queue over a time range.

use super::db::params;

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
        let (group, key) = match by {
            UsageBy::Tenant => ("tenant, NULL, NULL", "tenant"),
            UsageBy::Worker => ("tenant, worker, NULL", "tenant, worker"),
            UsageBy::Queue => ("tenant, NULL, queue_id", "tenant, queue_id"),
        };
        let conn = self.conn();
        let rows = conn.query_map(
            &format!(
                "SELECT {group}, COUNT(DISTINCT lsn), SUM(fuel), SUM(wall_ms), SUM(memory_byte_seconds), \
                 COUNT(*) \
             FROM usage WHERE (CAST(?1 AS TEXT) IS NULL OR tenant = ?1) AND finished_ms >= ?2 \
             AND finished_ms < ?3 GROUP BY {key} ORDER BY {key}"
            ),
            params![tenant, from_ms, to_ms],
            |row| {
                let sum = |i: usize| row.get::<i64>(i).map(|n| n.max(0) as u64);
                Ok(UsageRow {
                    tenant: row.get(0)?,
                    worker: row.get::<Option<String>>(1)?.map(parse_hash).transpose()?,
                    queue_id: (by == UsageBy::Queue)
                        .then(|| row.get::<Option<i64>>(2))
                        .transpose()?
                        .map(|queue| queue.map(|q| q as u64)),
                    jobs: sum(3)?,
                    fuel: sum(4)?,
                    wall_ms: sum(5)?,
                    memory_byte_seconds: sum(6)?,
                    attempts: sum(7)?,
                    stored_byte_seconds: None,
                    cost: None,
                })
            },
        )?;
        let mut rows: Vec<UsageRow> = rows;
        if by == UsageBy::Tenant {
            // Storage by the hour: the hours that start in `from_ms..to_ms`.
            let stored = conn.query_map(
                "SELECT tenant, SUM(byte_seconds) FROM storage_usage \
                 WHERE (CAST(?1 AS TEXT) IS NULL OR tenant = ?1) AND hour_ms >= CAST(?2 AS BIGINT) / 3600000 * 3600000 \
                 AND hour_ms < ?3 GROUP BY tenant",
                params![tenant, from_ms, to_ms],
                |row| Ok((row.get::<String>(0)?, row.get::<i64>(1)?.max(0) as u64)),
            )?;
            for row in &mut rows {
                row.stored_byte_seconds = Some(0);
            }
            for (tenant, byte_seconds) in stored {
                match rows.iter_mut().find(|r| r.tenant == tenant) {
                    Some(row) => row.stored_byte_seconds = Some(byte_seconds),
                    None => rows.push(UsageRow {
                        tenant,
                        stored_byte_seconds: Some(byte_seconds),
                        ..UsageRow::default()
                    }),
                }
            }
            rows.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        }
        Ok(rows)
    }

    /// Bytes each tenant holds: (tenant, bytes).
    pub(super) fn held_by_tenant(&self) -> StoreResult<Vec<(String, u64)>> {
        let conn = self.conn();
        let rows = conn.query_map(
            "SELECT tenant, bytes FROM held_bytes WHERE bytes > 0",
            params![],
            |row| Ok((row.get(0)?, row.get::<i64>(1)?.max(0) as u64)),
        )?;
        Ok(rows)
    }

    /// Adds storage-time to each tenant's hour of `at_ms`, in one transaction.
    pub(super) fn charge_storage(&self, charges: &[(String, u64)], at_ms: i64) -> StoreResult<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let hour = at_ms / 3_600_000 * 3_600_000;
        for (tenant, byte_seconds) in charges {
            tx.execute(
                "INSERT INTO storage_usage (tenant, hour_ms, byte_seconds) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (tenant, hour_ms) DO UPDATE SET \
                 byte_seconds = storage_usage.byte_seconds + excluded.byte_seconds",
                params![tenant, hour, *byte_seconds as i64],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Every tenant's run time since `since_ms`, in minutes: (tenant, the minute's
    /// start in Unix ms, wall milliseconds of the jobs that finished in it).
    pub(super) fn run_time_by_minute(&self, since_ms: i64) -> StoreResult<Vec<(String, i64, u64)>> {
        let conn = self.conn();
        let rows = conn.query_map(
            "SELECT tenant, finished_ms / 60000 * 60000 AS minute, SUM(wall_ms) FROM usage \
             WHERE finished_ms >= ?1 GROUP BY tenant, minute",
            params![since_ms],
            |row| Ok((row.get(0)?, row.get(1)?, row.get::<i64>(2)?.max(0) as u64)),
        )?;
        Ok(rows)
    }

    /// Each worker's mean run time (ms) over its jobs that finished since `since_ms`.
    pub(super) fn mean_run_by_worker(&self, since_ms: i64) -> StoreResult<Vec<(String, f64)>> {
        let conn = self.conn();
        let rows = conn.query_map(
            "SELECT worker, AVG(wall_ms) FROM usage WHERE finished_ms >= ?1 GROUP BY worker",
            params![since_ms],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        Ok(rows)
    }

    /// Fuel `tenant`'s jobs that finished since `since_ms` consumed.
    pub(super) fn fuel_since(&self, tenant: &str, since_ms: i64) -> StoreResult<u64> {
        let conn = self.conn();
        let fuel: i64 = conn.query_one(
            "SELECT COALESCE(SUM(fuel), 0) FROM usage WHERE tenant = ?1 AND finished_ms >= ?2",
            params![tenant, since_ms],
            |row| row.get(0),
        )?;
        Ok(fuel.max(0) as u64)
    }
}
