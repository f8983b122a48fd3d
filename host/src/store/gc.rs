//! What garbage collection asks of the journal: ownership rows not used for a while,
//! the text of everything that may name a blob (workers, unretired jobs), and the
//! deletion of a row that is still stale at the moment it is deleted.
//!
//! A blob row is *touched* (its `touched_ms` set to now) when it is created, uploaded
//! again, answered "held" by the needs check, or named by a submission, so a sweep
//! deleting only rows still stale at the moment of deletion never takes one a
//! concurrent request is about to use.

use super::db::{Db, DbResult, params};

use super::{Store, StoreResult, parse_hash};
use crate::model::HashHex;

/// Marks `tenant`'s hold on the blob `hex` as used at `now_ms`.
pub(super) fn touch(conn: &Db, tenant: &str, hex: &str, now_ms: i64) -> DbResult<()> {
    conn.execute(
        "UPDATE blobs SET touched_ms = ?3 WHERE tenant = ?1 AND hash = ?2",
        params![tenant, hex, now_ms],
    )
    .map(|_| ())
}

/// One page of the texts that may name blobs: (tenant, text).
pub type ReferencePage = Vec<(String, String)>;

impl Store {
    /// Ownership rows untouched since `before_ms`: (tenant, hash, size).
    pub(super) fn stale_blobs(&self, before_ms: i64) -> StoreResult<Vec<(String, HashHex, u64)>> {
        let conn = self.conn();
        let rows = conn.query_map(
            "SELECT tenant, hash, size FROM blobs WHERE touched_ms < ?1",
            params![before_ms],
            |row| {
                Ok((
                    row.get(0)?,
                    parse_hash(row.get(1)?)?,
                    row.get::<i64>(2)?.max(0) as u64,
                ))
            },
        )?;
        Ok(rows)
    }

    /// Every registered worker's descriptor: (tenant, descriptor JSON).
    pub(super) fn worker_texts(&self) -> StoreResult<ReferencePage> {
        let conn = self.conn();
        let rows = conn.query_map("SELECT tenant, descriptor FROM workers", params![], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?;
        Ok(rows)
    }

    /// Up to `limit` unretired jobs after LSN `after`, each as (tenant, its action,
    /// result and checkpoint in one text), and the last LSN read (`None` at the end).
    /// In pages, so a sweep never holds the journal for long.
    pub(super) fn job_texts(
        &self,
        after: u64,
        limit: usize,
    ) -> StoreResult<(ReferencePage, Option<u64>)> {
        let conn = self.conn();
        let mut last = None;
        let rows = conn.query_map(
            "SELECT lsn, tenant, descriptor || ' ' || COALESCE(result, '') || ' ' || \
             COALESCE(checkpoint, '') FROM jobs WHERE retired = 0 AND lsn > ?1 \
             ORDER BY lsn LIMIT ?2",
            params![after as i64, limit as i64],
            |row| Ok((row.get::<i64>(0)?, row.get(1)?, row.get(2)?)),
        )?;
        let mut page = Vec::new();
        for (lsn, tenant, text) in rows {
            last = Some(lsn as u64);
            page.push((tenant, text));
        }
        let full = page.len() == limit;
        Ok((page, last.filter(|_| full)))
    }

    /// Deletes `tenant`'s row of the blob if it is still untouched since `before_ms`;
    /// true when it was deleted.
    pub(super) fn drop_stale_blob(
        &self,
        tenant: &str,
        hash: &HashHex,
        before_ms: i64,
    ) -> StoreResult<bool> {
        Ok(self
            .conn()
            .execute(
                "DELETE FROM blobs WHERE tenant = ?1 AND hash = ?2 AND touched_ms < ?3",
                params![tenant, hash.to_string(), before_ms],
            )
            .map(|n| n == 1)?)
    }

    /// Tenants holding the blob.
    pub(super) fn holders(&self, hash: &HashHex) -> StoreResult<Vec<String>> {
        let conn = self.conn();
        let rows = conn.query_map(
            "SELECT tenant FROM blobs WHERE hash = ?1",
            params![hash.to_string()],
            |row| row.get(0),
        )?;
        Ok(rows)
    }

    /// Whether `tenant` holds the blob, touching its row (`touched_ms = now_ms`) when
    /// it was last touched before `refresh_before_ms`.
    pub(super) fn hold_blob(
        &self,
        tenant: &str,
        hash: &HashHex,
        now_ms: i64,
        refresh_before_ms: i64,
    ) -> StoreResult<bool> {
        if *hash == HashHex::empty() {
            return Ok(true);
        }
        let conn = self.conn();
        let hex = hash.to_string();
        let touched: Option<i64> = conn.query_opt(
            "SELECT touched_ms FROM blobs WHERE tenant = ?1 AND hash = ?2",
            params![tenant, hex],
            |row| row.get(0),
        )?;
        match touched {
            None => Ok(false),
            Some(at) if at < refresh_before_ms => {
                touch(&conn, tenant, &hex, now_ms)?;
                Ok(true)
            }
            Some(_) => Ok(true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_bytes_follow_rows_and_only_stale_rows_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let (a, b) = (HashHex::of(b"a"), HashHex::of(b"b"));
        assert!(store.own_blob("t", &a, 10).unwrap());
        assert!(!store.own_blob("t", &a, 10).unwrap(), "held already");
        store.own_blob("t", &b, 5).unwrap();
        store.own_blob("u", &a, 10).unwrap();
        assert_eq!(store.held_bytes("t").unwrap(), 15);
        let now = super::super::now_ms();
        // Touched just now: not stale as of a cutoff in the past.
        assert!(!store.drop_stale_blob("t", &a, now - 1000).unwrap());
        assert!(store.drop_stale_blob("t", &a, now + 1000).unwrap());
        assert_eq!(store.held_bytes("t").unwrap(), 5);
        assert_eq!(store.held_bytes("u").unwrap(), 10);
        assert_eq!(store.holders(&a).unwrap(), vec!["u".to_string()]);
        // A hold used recently is not refreshed again; an old one is.
        assert!(store.hold_blob("u", &a, now + 5000, now - 60_000).unwrap());
        assert!(
            store
                .stale_blobs(now + 1000)
                .unwrap()
                .iter()
                .any(|r| r.0 == "u")
        );
        assert!(store.hold_blob("u", &a, now + 5000, now + 2000).unwrap());
        assert!(
            !store
                .stale_blobs(now + 1000)
                .unwrap()
                .iter()
                .any(|r| r.0 == "u")
        );
        assert!(!store.hold_blob("t", &a, now, now).unwrap(), "t let it go");
    }
}
