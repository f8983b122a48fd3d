//! Event-handler groups (spec and placements as JSON) and their event logs, bounded
//! per group.

use super::db::params;
use serde_json::Value;

use super::{Store, StoreResult, now_ms};

impl Store {
    /// Stores (or replaces) an event-handler group: its spec and placements as JSON.
    pub(super) fn put_group(
        &self,
        tenant: &str,
        id: &str,
        spec: &str,
        placements: &str,
    ) -> StoreResult<()> {
        self.conn()
            .execute("INSERT INTO groups (id, tenant, spec, placements, created_ms) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (id) DO UPDATE SET placements = excluded.placements", params![id, tenant, spec, placements, now_ms()])?;
        Ok(())
    }

    /// A group's (spec, placements), when the tenant has it.
    pub(super) fn group(&self, tenant: &str, id: &str) -> StoreResult<Option<(String, String)>> {
        Ok(self.conn().query_opt(
            "SELECT spec, placements FROM groups WHERE id = ?1 AND tenant = ?2",
            params![id, tenant],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?)
    }

    /// Every group: (id, tenant, spec, placements).
    pub(super) fn groups(
        &self,
        tenant: Option<&str>,
    ) -> StoreResult<Vec<(String, String, String, String)>> {
        let conn = self.conn();
        let rows = conn.query_map(
            "SELECT id, tenant, spec, placements FROM groups WHERE CAST(?1 AS TEXT) IS NULL OR tenant = ?1 \
             ORDER BY created_ms",
            params![tenant],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )?;
        Ok(rows)
    }

    /// Deletes a group; false when the tenant has no such group.
    pub(super) fn delete_group(&self, tenant: &str, id: &str) -> StoreResult<bool> {
        let changed = self.conn().execute(
            "DELETE FROM groups WHERE id = ?1 AND tenant = ?2",
            params![id, tenant],
        )?;
        Ok(changed == 1)
    }

    /// Appends an entry to a group's event log, keeping its latest `keep` entries.
    pub fn log_group_event(&self, group: &str, entry: &str, keep: usize) -> StoreResult<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let seq: i64 = tx.query_one(
            "INSERT INTO group_events (group_id, entry) VALUES (?1, ?2) RETURNING seq",
            params![group, entry],
            |row| row.get(0),
        )?;
        tx.execute(
            "DELETE FROM group_events WHERE group_id = ?1 AND seq <= ?2",
            params![group, seq - keep as i64],
        )?;
        Ok(tx.commit()?)
    }

    /// A group's latest `limit` log entries, oldest first.
    pub(super) fn group_events(&self, group: &str, limit: usize) -> StoreResult<Vec<Value>> {
        let conn = self.conn();
        let mut entries: Vec<Value> = conn
            .query_map(
                "SELECT entry FROM group_events WHERE group_id = ?1 ORDER BY seq DESC LIMIT ?2",
                params![group, limit as i64],
                |row| row.get::<String>(0),
            )?
            .into_iter()
            .filter_map(|entry| serde_json::from_str(&entry).ok())
            .collect();
        entries.reverse();
        Ok(entries)
    }

    pub(super) fn forget_group_events(&self, group: &str) -> StoreResult<()> {
        self.conn().execute(
            "DELETE FROM group_events WHERE group_id = ?1",
            params![group],
        )?;
        Ok(())
    }
}
