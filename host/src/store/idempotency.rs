//! Idempotency keys: a keyed POST's fingerprint and its stored response.

use super::db::params;

use super::{Store, StoreResult, now_ms};

/// What an `Idempotency-Key` found.
#[derive(Debug, PartialEq, Eq)]
pub enum IdempotencyBegin {
    /// First use: the request runs; its response is to be stored.
    New,
    /// The first request with this key is still running.
    InFlight,
    /// The key was used with another request.
    Mismatch,
    /// The stored response of the first request: (status, content type, body).
    Done(u16, Option<String>, Vec<u8>),
}

/// A stored key: (fingerprint, status, content type, body, created_ms); no status yet
/// while its first request runs.
type StoredKey = (String, Option<u16>, Option<String>, Option<Vec<u8>>, i64);

/// A request with an idempotency key whose first run started this long ago and never
/// finished (its process died) no longer blocks the key.
const IDEMPOTENCY_ABANDONED_MS: i64 = 5 * 60 * 1000;

impl Store {
    /// Looks up an idempotency key (per tenant) for a request with `fingerprint`,
    /// claiming it when it is new (or abandoned by a process that died).
    pub(super) fn idempotency_begin(
        &self,
        tenant: &str,
        key: &str,
        fingerprint: &str,
    ) -> StoreResult<IdempotencyBegin> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let found: Option<StoredKey> = tx.query_opt(
            "SELECT fingerprint, status, content_type, body, created_ms FROM idempotency \
                 WHERE tenant = ?1 AND key = ?2",
            params![tenant, key],
            |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                ))
            },
        )?;
        let answer = match found {
            Some((stored, _, _, _, _)) if stored != fingerprint => IdempotencyBegin::Mismatch,
            Some((_, Some(status), content_type, body, _)) => {
                IdempotencyBegin::Done(status, content_type, body.unwrap_or_default())
            }
            Some((_, None, _, _, created)) if created > now_ms() - IDEMPOTENCY_ABANDONED_MS => {
                IdempotencyBegin::InFlight
            }
            _ => {
                tx.execute("INSERT INTO idempotency (tenant, key, fingerprint, created_ms) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (tenant, key) DO UPDATE SET fingerprint = excluded.fingerprint, \
                     status = NULL, content_type = NULL, body = NULL, created_ms = excluded.created_ms", params![tenant, key, fingerprint, now_ms()])?;
                IdempotencyBegin::New
            }
        };
        tx.commit()?;
        Ok(answer)
    }

    /// Stores the response of the first request with an idempotency key.
    pub(super) fn idempotency_finish(
        &self,
        tenant: &str,
        key: &str,
        status: u16,
        content_type: Option<&str>,
        body: &[u8],
    ) -> StoreResult<()> {
        self.conn().execute(
            "UPDATE idempotency SET status = ?3, content_type = ?4, body = ?5 \
                 WHERE tenant = ?1 AND key = ?2",
            params![tenant, key, status, content_type, body],
        )?;
        Ok(())
    }

    /// Releases a key whose first request did not complete (a 5xx, or the client
    /// went away), so a retry runs again.
    pub(super) fn idempotency_forget(&self, tenant: &str, key: &str) -> StoreResult<()> {
        self.conn().execute(
            "DELETE FROM idempotency WHERE tenant = ?1 AND key = ?2 AND status IS NULL",
            params![tenant, key],
        )?;
        Ok(())
    }

    /// Forgets keys first used before `before_ms`; returns how many.
    pub fn idempotency_expire(&self, before_ms: i64) -> StoreResult<usize> {
        Ok(self.conn().execute(
            "DELETE FROM idempotency WHERE created_ms < ?1",
            params![before_ms],
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_claim_replay_refuse_and_release() {
        let dir = tempfile::tempdir().unwrap();
        let db = Store::open(&dir.path().join("db")).unwrap();
        let begin = |tenant: &str, key: &str, fp: &str| {
            db.tenant(tenant).idempotency_begin(key, fp).unwrap()
        };
        assert_eq!(begin("t", "k", "a"), IdempotencyBegin::New);
        assert_eq!(begin("t", "k", "a"), IdempotencyBegin::InFlight);
        assert_eq!(begin("t", "k", "b"), IdempotencyBegin::Mismatch);
        assert_eq!(
            begin("other", "k", "b"),
            IdempotencyBegin::New,
            "keys are per tenant"
        );
        db.tenant("t")
            .idempotency_finish("k", 201, Some("application/json"), b"{\"lsn\":1}")
            .unwrap();
        assert_eq!(
            begin("t", "k", "a"),
            IdempotencyBegin::Done(
                201,
                Some("application/json".into()),
                b"{\"lsn\":1}".to_vec()
            )
        );
        // A finished key is kept; an unfinished one is released for a retry.
        db.tenant("t").idempotency_forget("k").unwrap();
        assert!(matches!(begin("t", "k", "a"), IdempotencyBegin::Done(..)));
        db.tenant("other").idempotency_forget("k").unwrap();
        assert_eq!(begin("other", "k", "c"), IdempotencyBegin::New);
        assert_eq!(db.idempotency_expire(now_ms() + 1).unwrap(), 2);
        assert_eq!(begin("t", "k", "z"), IdempotencyBegin::New);
    }
}
