//! Blob ownership (which tenant holds which bytes) and registered workers.

use super::db::params;

use super::{Store, StoreResult, now_ms};
use crate::model::HashHex;

impl Store {
    /// Whether nothing refers to a blob: no tenant holds it and no job has it as its
    /// checkpoint (so it may be deleted).
    pub fn unreferenced(&self, hash: &HashHex) -> StoreResult<bool> {
        let hex = hash.to_string();
        let conn = self.conn();
        let held = conn
            .query_opt(
                "SELECT 1 FROM blobs WHERE hash = ?1 LIMIT 1",
                params![hex],
                |_| Ok(()),
            )?
            .is_some();
        let checkpoint = conn
            .query_opt(
                "SELECT 1 FROM jobs WHERE checkpoint = ?1 LIMIT 1",
                params![hex],
                |_| Ok(()),
            )?
            .is_some();
        Ok(!held && !checkpoint)
    }

    /// Bytes of the blobs `tenant` holds.
    pub(super) fn held_bytes(&self, tenant: &str) -> StoreResult<u64> {
        let bytes: i64 = self.conn().query_one(
            "SELECT COALESCE(MAX(bytes), 0) FROM held_bytes WHERE tenant = ?1",
            params![tenant],
            |row| row.get(0),
        )?;
        Ok(bytes.max(0) as u64)
    }

    /// Whether `tenant` holds the blob (the empty blob is everyone's).
    pub(super) fn owns_blob(&self, tenant: &str, hash: &HashHex) -> StoreResult<bool> {
        if *hash == HashHex::empty() {
            return Ok(true);
        }
        Ok(self
            .conn()
            .query_opt(
                "SELECT 1 FROM blobs WHERE tenant = ?1 AND hash = ?2",
                params![tenant, hash.to_string()],
                |_| Ok(()),
            )
            .map(|found| found.is_some())?)
    }

    /// Records that `tenant` holds the blob, touched now (see `store::gc`); true when
    /// it did not before.
    pub(super) fn own_blob(&self, tenant: &str, hash: &HashHex, size: u64) -> StoreResult<bool> {
        if *hash == HashHex::empty() {
            return Ok(false);
        }
        let conn = self.conn();
        let (hex, now) = (hash.to_string(), now_ms());
        let inserted = conn.execute(
            "INSERT OR IGNORE INTO blobs (tenant, hash, size, touched_ms) \
                 VALUES (?1, ?2, ?3, ?4)",
            params![tenant, hex, size as i64, now],
        )? == 1;
        if !inserted {
            super::gc::touch(&conn, tenant, &hex, now)?;
        }
        Ok(inserted)
    }

    /// A worker's descriptor JSON, whichever tenant registered it.
    pub(super) fn worker_any(&self, id: &HashHex) -> StoreResult<Option<String>> {
        Ok(self.conn().query_opt(
            "SELECT descriptor FROM workers WHERE id = ?1 LIMIT 1",
            params![id.to_string()],
            |row| row.get(0),
        )?)
    }

    /// A worker's descriptor JSON.
    pub(super) fn worker(&self, tenant: &str, id: &HashHex) -> StoreResult<Option<String>> {
        Ok(self.conn().query_opt(
            "SELECT descriptor FROM workers WHERE tenant = ?1 AND id = ?2",
            params![tenant, id.to_string()],
            |row| row.get(0),
        )?)
    }

    /// Registers a worker; true when it is new for this tenant.
    pub(super) fn put_worker(
        &self,
        tenant: &str,
        id: &HashHex,
        name: &str,
        version: Option<&str>,
        descriptor: &str,
    ) -> StoreResult<bool> {
        Ok(self
            .conn()
            .execute(
                "INSERT OR IGNORE INTO workers (tenant, id, name, version, descriptor, created_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![tenant, id.to_string(), name, version, descriptor, now_ms()],
            )
            .map(|n| n == 1)?)
    }

    /// The tenant's workers: (id, name, version), oldest first.
    pub(super) fn workers(
        &self,
        tenant: &str,
    ) -> StoreResult<Vec<(String, String, Option<String>)>> {
        let conn = self.conn();
        let rows = conn.query_map(
            "SELECT id, name, version FROM workers WHERE tenant = ?1 ORDER BY created_ms, id",
            params![tenant],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )?;
        Ok(rows)
    }
}
