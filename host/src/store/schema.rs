//! The journal's tables, and the migrations that bring an older data directory up to
//! date.

use rusqlite::Connection;

/// The tables as the first release made them (older journals have exactly these);
/// [`ADDED_COLUMNS`] and [`INDEXES`] bring them to this release. PostgreSQL's schema is
/// made from the same three (store/schema_pg.rs).
pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS blobs (
    tenant TEXT NOT NULL,
    hash TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (tenant, hash)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS workers (
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT,
    descriptor TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS queues (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    token TEXT UNIQUE,
    name TEXT,
    state TEXT NOT NULL,
    max_retries INTEGER NOT NULL,
    retry_guest_failures INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    touched_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    lsn INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    queue_id INTEGER,
    action TEXT NOT NULL,
    worker TEXT NOT NULL,
    descriptor TEXT NOT NULL,
    priority INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_retries INTEGER NOT NULL,
    retry_guest_failures INTEGER NOT NULL,
    result TEXT,
    retired INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL,
    finished_ms INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_pending ON jobs (state) WHERE state IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS jobs_by_action ON jobs (tenant, action, state);
CREATE INDEX IF NOT EXISTS jobs_by_queue ON jobs (queue_id, state);
CREATE INDEX IF NOT EXISTS jobs_by_tenant ON jobs (tenant);
CREATE TABLE IF NOT EXISTS job_deps (
    lsn INTEGER NOT NULL,
    after INTEGER NOT NULL,
    PRIMARY KEY (lsn, after)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS attempts (
    lsn INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    node TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    ended_ms INTEGER,
    outcome TEXT,
    exit_code INTEGER,
    message TEXT,
    retried INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (lsn, attempt)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (
    tenant TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status INTEGER,
    content_type TEXT,
    body BLOB,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS webhooks (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    secret TEXT NOT NULL,
    state TEXT NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0,
    disabled_reason TEXT,
    created_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    webhook TEXT NOT NULL,
    event TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_ms INTEGER NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    created_ms INTEGER NOT NULL,
    finished_ms INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (next_ms) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_by_webhook ON deliveries (webhook, created_ms);
CREATE TABLE IF NOT EXISTS group_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id TEXT NOT NULL,
    entry TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS group_events_by_group ON group_events (group_id, seq);
CREATE TABLE IF NOT EXISTS usage (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    lsn INTEGER NOT NULL,
    tenant TEXT NOT NULL,
    worker TEXT NOT NULL,
    queue_id INTEGER,
    finished_ms INTEGER NOT NULL,
    fuel INTEGER NOT NULL,
    wall_ms INTEGER NOT NULL,
    memory_byte_seconds INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_by_tenant ON usage (tenant, finished_ms);
CREATE TABLE IF NOT EXISTS storage_usage (
    tenant TEXT NOT NULL,
    hour_ms INTEGER NOT NULL,
    byte_seconds INTEGER NOT NULL,
    PRIMARY KEY (tenant, hour_ms)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS groups (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    spec TEXT NOT NULL,
    placements TEXT NOT NULL,
    created_ms INTEGER NOT NULL
) WITHOUT ROWID;
"#;

/// Columns added after the first release: the lease's node, the checkpoint and a
/// cancel asked for of jobs; deadlines (absolute, Unix ms) of jobs; the relative
/// deadlines and target wait of queues. (`blobs.touched_ms` too, added with a value of
/// its own: see [`migrate`].)
pub(super) const ADDED_COLUMNS: [(&str, &str, &str); 8] = [
    ("jobs", "lease_node", "TEXT"),
    ("jobs", "checkpoint", "TEXT"),
    ("jobs", "cancel_requested", "TEXT"),
    ("jobs", "start_by_ms", "INTEGER"),
    ("jobs", "finish_by_ms", "INTEGER"),
    ("queues", "start_within_ms", "INTEGER"),
    ("queues", "finish_within_ms", "INTEGER"),
    ("queues", "target_wait_ms", "INTEGER"),
];

/// Indexes added after the first release (on added columns among others).
pub(super) const INDEXES: &str = "CREATE INDEX IF NOT EXISTS blobs_by_hash ON blobs (hash); \
     CREATE INDEX IF NOT EXISTS blobs_by_touched ON blobs (touched_ms); \
     CREATE INDEX IF NOT EXISTS job_deps_by_after ON job_deps (after); \
     CREATE INDEX IF NOT EXISTS jobs_by_checkpoint ON jobs (checkpoint) \
     WHERE checkpoint IS NOT NULL; \
     CREATE INDEX IF NOT EXISTS jobs_unretired ON jobs (finished_ms) \
     WHERE retired = 0 AND finished_ms IS NOT NULL; \
     CREATE INDEX IF NOT EXISTS deliveries_finished ON deliveries (finished_ms) \
     WHERE state != 'pending'";

/// Whether `table` has `column` (tables and columns are this file's own names).
fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2")?
        .query_row([table, column], |row| row.get::<_, i64>(0).map(|n| n > 0))
}

/// The version of the journal's schema this binary writes, kept in SQLite's
/// `user_version`. 0 is every journal written before versions were kept; 1 added the
/// attempts table, deadlines and queues' target waits. A change to the schema bumps it
/// (with the step that brings an older journal up in [`migrate`]).
pub const SCHEMA_VERSION: i64 = 1;

/// Why a journal cannot be opened by this binary, if it cannot: one written by a newer
/// release (its schema may hold what this one would lose or misread).
pub(super) fn check_version(conn: &Connection) -> rusqlite::Result<Result<i64, String>> {
    let found: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if found > SCHEMA_VERSION {
        return Ok(Err(format!(
            "the journal's schema is version {found}, newer than this wasmesh {} knows \
             (version {SCHEMA_VERSION}): it was written by a newer release; run that \
             release or a later one, or restore the data directory from before the upgrade",
            env!("CARGO_PKG_VERSION")
        )));
    }
    Ok(Ok(found))
}

/// Creates what is missing: the tables, the columns added after the first release
/// (data directories written by an older version get them here), their indexes; then
/// records [`SCHEMA_VERSION`]. Call [`check_version`] first.
pub(super) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(SCHEMA)?;
    for (table, column, kind) in ADDED_COLUMNS {
        if !has_column(conn, table, column)? {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))?;
        }
    }
    if !has_column(conn, "blobs", "touched_ms")? {
        // Rows of an older version count as touched now: their grace period starts
        // with the upgrade.
        conn.execute_batch(&format!(
            "ALTER TABLE blobs ADD COLUMN touched_ms INTEGER NOT NULL DEFAULT 0; \
             UPDATE blobs SET touched_ms = {}",
            super::now_ms()
        ))?;
    }
    // Bytes held per tenant, kept by triggers (max_store_bytes reads it at every
    // upload; summing a tenant's rows would cost as many rows as it holds).
    let counted: bool = conn
        .prepare("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'held_bytes'")?
        .query_row([], |row| row.get::<_, i64>(0).map(|n| n > 0))?;
    if !counted {
        conn.execute_batch(
            "CREATE TABLE held_bytes (tenant TEXT PRIMARY KEY, bytes INTEGER NOT NULL) \
             WITHOUT ROWID; \
             INSERT INTO held_bytes SELECT tenant, SUM(size) FROM blobs GROUP BY tenant;",
        )?;
    }
    conn.execute_batch(
        "CREATE TRIGGER IF NOT EXISTS blobs_held_insert AFTER INSERT ON blobs BEGIN \
           INSERT OR IGNORE INTO held_bytes (tenant, bytes) VALUES (NEW.tenant, 0); \
           UPDATE held_bytes SET bytes = bytes + NEW.size WHERE tenant = NEW.tenant; \
         END; \
         CREATE TRIGGER IF NOT EXISTS blobs_held_delete AFTER DELETE ON blobs BEGIN \
           UPDATE held_bytes SET bytes = bytes - OLD.size WHERE tenant = OLD.tenant; \
         END;",
    )?;
    conn.execute_batch(INDEXES)?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A journal written before the later columns existed gets them, keeps its rows,
    /// and migrating twice changes nothing.
    #[test]
    fn an_older_journal_gets_the_later_columns() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE jobs (lsn INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL, \
             queue_id INTEGER, action TEXT NOT NULL, worker TEXT NOT NULL, descriptor TEXT NOT NULL, \
             priority INTEGER NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, \
             max_retries INTEGER NOT NULL, retry_guest_failures INTEGER NOT NULL, result TEXT, \
             retired INTEGER NOT NULL DEFAULT 0, created_ms INTEGER NOT NULL, finished_ms INTEGER); \
             CREATE TABLE queues (id INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL, \
             token TEXT UNIQUE, name TEXT, state TEXT NOT NULL, max_retries INTEGER NOT NULL, \
             retry_guest_failures INTEGER NOT NULL, priority INTEGER NOT NULL, \
             created_ms INTEGER NOT NULL, touched_ms INTEGER NOT NULL); \
             CREATE TABLE blobs (tenant TEXT NOT NULL, hash TEXT NOT NULL, size INTEGER NOT NULL, \
             PRIMARY KEY (tenant, hash)) WITHOUT ROWID; \
             INSERT INTO jobs (tenant, action, worker, descriptor, priority, state, max_retries, \
             retry_guest_failures, created_ms) VALUES ('t', 'a', 'w', '{}', 0, 'queued', 3, 0, 1);",
        )
        .unwrap();
        for (table, column) in [("jobs", "finish_by_ms"), ("queues", "target_wait_ms")] {
            assert!(!has_column(&conn, table, column).unwrap());
        }
        assert_eq!(check_version(&conn).unwrap(), Ok(0), "unversioned");
        migrate(&conn).unwrap();
        migrate(&conn).unwrap();
        assert_eq!(check_version(&conn).unwrap(), Ok(SCHEMA_VERSION));
        for (table, column) in [
            ("jobs", "lease_node"),
            ("jobs", "start_by_ms"),
            ("jobs", "finish_by_ms"),
            ("queues", "start_within_ms"),
            ("queues", "target_wait_ms"),
            ("blobs", "touched_ms"),
        ] {
            assert!(
                has_column(&conn, table, column).unwrap(),
                "{table}.{column}"
            );
        }
        let kept: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM jobs WHERE finish_by_ms IS NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(kept, 1);
    }

    #[test]
    fn a_journal_of_a_newer_release_is_refused() {
        let conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let why = check_version(&conn).unwrap().unwrap_err();
        assert!(why.contains("newer release"), "{why}");
    }
}
