//! Lists of jobs, newest first, a page at a time, for the dashboard and API clients.
//!
//! A page never costs more than [`SCAN`] index entries, whatever the filters: without
//! filters it is a range of `jobs_by_tenant` (or of the primary key, for every
//! tenant) cut at the page size; with filters the newest `SCAN` jobs below the cursor
//! are looked at and those that match are the page. When fewer than a page matched
//! in that window, `next` points below the window, so the caller can go on looking
//! (a page may then be short, even empty, with more to come).

use super::db::{DbResult, Row, Value as Sql, bind};
use serde::Serialize;

use super::{Store, StoreResult};
use crate::model::{HashHex, JobState};

/// Jobs looked at, at most, for one filtered page.
pub const SCAN: usize = 10_000;

/// Largest page.
pub const MAX_PAGE: usize = 500;

/// What a list keeps.
#[derive(Debug, Default, Clone)]
pub struct JobFilter {
    /// Jobs in this state.
    pub state: Option<JobState>,
    /// Jobs of this queue.
    pub queue: Option<u64>,
    /// Jobs of this worker.
    pub worker: Option<HashHex>,
    /// Finished jobs with this outcome.
    pub outcome: Option<String>,
    /// Jobs that ran on (or, on a coordinator, are leased to) this node.
    pub node: Option<String>,
}

impl JobFilter {
    fn is_empty(&self) -> bool {
        self.state.is_none()
            && self.queue.is_none()
            && self.worker.is_none()
            && self.outcome.is_none()
            && self.node.is_none()
    }
}

/// One job of a list: what a row of a table shows, without descriptor or result.
#[derive(Debug, Clone, Serialize)]
pub struct JobSummary {
    /// Its LSN.
    pub lsn: u64,
    /// Its owner.
    pub tenant: String,
    /// Its queue.
    pub queue_id: Option<u64>,
    /// Its worker.
    pub worker: String,
    /// Its action.
    pub action: String,
    /// Where it is.
    pub state: JobState,
    /// Its priority.
    pub priority: i64,
    /// Attempts started.
    pub attempts: u32,
    /// When it was submitted (Unix ms).
    pub created_ms: i64,
    /// When it finished (Unix ms).
    pub finished_ms: Option<i64>,
    /// The node that ran it (or, on a coordinator, holds its lease).
    pub node: Option<String>,
    /// How it ended.
    pub outcome: Option<String>,
    /// On a coordinator, why it was placed where it ran (the result's `placement`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placement: Option<serde_json::Value>,
}

/// A page of jobs.
#[derive(Debug, Clone, Serialize)]
pub struct JobPage {
    /// Newest first.
    pub jobs: Vec<JobSummary>,
    /// The `before` of the next page; `None` at the end.
    pub next: Option<u64>,
}

const SUMMARY: &str = "lsn, tenant, queue_id, action, worker, state, priority, attempts, \
     created_ms, finished_ms, COALESCE(json_extract(result, '$.node'), lease_node), \
     json_extract(result, '$.outcome'), json_extract(result, '$.placement')";

fn summary(row: &Row<'_>) -> DbResult<JobSummary> {
    Ok(JobSummary {
        lsn: row.get::<i64>(0)? as u64,
        tenant: row.get(1)?,
        queue_id: row.get::<Option<i64>>(2)?.map(|q| q as u64),
        action: row.get(3)?,
        worker: row.get(4)?,
        state: row.get(5)?,
        priority: row.get(6)?,
        attempts: row.get(7)?,
        created_ms: row.get(8)?,
        finished_ms: row.get(9)?,
        node: row.get(10)?,
        outcome: row.get(11)?,
        placement: row
            .get::<Option<String>>(12)?
            .and_then(|text: String| serde_json::from_str(&text).ok()),
    })
}

impl Store {
    /// A page of `tenant`'s jobs (every tenant's for `None`) below LSN `before`,
    /// newest first, at most `limit` (clamped to 1..=[`MAX_PAGE`]).
    pub(super) fn list_jobs(
        &self,
        tenant: Option<&str>,
        filter: &JobFilter,
        before: Option<u64>,
        limit: usize,
    ) -> StoreResult<JobPage> {
        self.list_jobs_within(tenant, filter, before, limit, SCAN)
    }

    /// [`Store::list_jobs`] looking at most at `scan` jobs for a filtered page.
    fn list_jobs_within(
        &self,
        tenant: Option<&str>,
        filter: &JobFilter,
        before: Option<u64>,
        limit: usize,
        scan: usize,
    ) -> StoreResult<JobPage> {
        let limit = limit.clamp(1, MAX_PAGE);
        let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
        // The jobs below the cursor, newest first: a range of `jobs_by_tenant` (or of
        // the primary key).
        let mut args: Vec<Sql> = vec![Sql::Int(before)];
        let mut scope = String::from("lsn < ?1");
        if let Some(tenant) = tenant {
            scope.push_str(" AND tenant = ?2");
            args.push(Sql::Text(tenant.to_string()));
        }
        let conn = self.conn();
        let mut sql = format!("SELECT {SUMMARY} FROM jobs WHERE {scope}");
        // A filtered page looks no further than the window of the `scan` newest jobs:
        // its lowest LSN (an index-only walk) bounds the range, which still stops as
        // soon as a page matched.
        let mut window = None;
        if !filter.is_empty() {
            let (looked, floor): (i64, Option<i64>) = conn.query_one(
                &format!(
                    "SELECT COUNT(*), MIN(lsn) FROM \
                     (SELECT lsn FROM jobs WHERE {scope} ORDER BY lsn DESC LIMIT {scan}) AS window_jobs"
                ),
                &bind(&args),
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?;
            let Some(floor) = floor else {
                return Ok(JobPage {
                    jobs: Vec::new(),
                    next: None,
                });
            };
            args.push(Sql::Int(floor));
            sql.push_str(&format!(" AND lsn >= ?{}", args.len()));
            window = Some((looked as usize, floor as u64));
        }
        let mut push = |clause: &str, value: Sql| {
            args.push(value);
            sql.push_str(&format!(" AND {clause} ?{}", args.len()));
        };
        if let Some(state) = filter.state {
            push("state =", Sql::Text(state.as_str().into()));
        }
        if let Some(queue) = filter.queue {
            push("queue_id =", Sql::Int(queue as i64));
        }
        if let Some(worker) = &filter.worker {
            push("worker =", Sql::Text(worker.to_string()));
        }
        if let Some(outcome) = &filter.outcome {
            push(
                "json_extract(result, '$.outcome') =",
                Sql::Text(outcome.clone()),
            );
        }
        if let Some(node) = &filter.node {
            push(
                "COALESCE(json_extract(result, '$.node'), lease_node) =",
                Sql::Text(node.clone()),
            );
        }
        sql.push_str(&format!(" ORDER BY lsn DESC LIMIT {limit}"));
        let jobs = conn.query_map(&sql, &bind(&args), summary)?;
        let next = if jobs.len() == limit {
            jobs.last().map(|j| j.lsn)
        } else {
            // Fewer than a page matched: go on below the window, if it was full.
            window
                .filter(|(looked, _)| *looked == scan)
                .map(|(_, floor)| floor)
        };
        Ok(JobPage { jobs, next })
    }
}

/// One queue of a list.
#[derive(Debug, Clone, Serialize)]
pub struct QueueSummary {
    /// Its id.
    pub queue_id: u64,
    /// Its owner.
    pub tenant: String,
    /// Its name, if it was given one.
    pub name: Option<String>,
    /// Whether it takes submissions.
    pub state: crate::model::QueueState,
    /// Its jobs' default priority.
    pub priority: i64,
    /// When it was created (Unix ms).
    pub created_ms: i64,
    /// When its oldest queued job was submitted (Unix ms), if one is waiting.
    pub oldest_queued_ms: Option<i64>,
}

impl Store {
    /// A page of `tenant`'s queues (every tenant's for `None`) with ids below
    /// `before`, newest first, at most `limit` (1..=[`MAX_PAGE`]).
    pub(super) fn list_queues(
        &self,
        tenant: Option<&str>,
        before: Option<u64>,
        limit: usize,
    ) -> StoreResult<(Vec<QueueSummary>, Option<u64>)> {
        let limit = limit.clamp(1, MAX_PAGE);
        let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
        let mut args = vec![Sql::Int(before)];
        let mut sql = String::from(
            "SELECT q.id, q.tenant, q.name, q.state, q.priority, q.created_ms, \
             (SELECT j.created_ms FROM jobs j WHERE j.queue_id = q.id AND j.state = 'queued' \
              ORDER BY j.lsn LIMIT 1) \
             FROM queues q WHERE q.id < ?1",
        );
        if let Some(tenant) = tenant {
            sql.push_str(" AND q.tenant = ?2");
            args.push(Sql::Text(tenant.to_string()));
        }
        sql.push_str(&format!(" ORDER BY q.id DESC LIMIT {limit}"));
        let queues = self.conn().query_map(&sql, &bind(&args), |row| {
            Ok(QueueSummary {
                queue_id: row.get::<i64>(0)? as u64,
                tenant: row.get(1)?,
                name: row.get(2)?,
                state: row.get(3)?,
                priority: row.get(4)?,
                created_ms: row.get(5)?,
                oldest_queued_ms: row.get(6)?,
            })
        })?;
        let next = (queues.len() == limit)
            .then(|| queues.last().map(|q| q.queue_id))
            .flatten();
        Ok((queues, next))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{NewJob, Store};
    use super::*;

    fn insert(store: &Store, tenant: &str, n: usize) -> Vec<u64> {
        let worker = HashHex::of(b"worker");
        let jobs: Vec<_> = (0..n)
            .map(|i| {
                let job = NewJob {
                    tenant,
                    queue_id: None,
                    action: HashHex::of(format!("{tenant}-{i}").as_bytes()),
                    worker,
                    descriptor: "{}",
                    priority: 0,
                    max_retries: 0,
                    retry_guest_failures: false,
                    after: &[],
                    deadlines: Default::default(),
                };
                (job, None)
            })
            .collect();
        store.insert_jobs(&jobs).unwrap()
    }

    fn all_pages(
        store: &Store,
        tenant: Option<&str>,
        filter: &JobFilter,
        scan: usize,
    ) -> (Vec<u64>, usize) {
        let (mut lsns, mut pages, mut before) = (Vec::new(), 0, None);
        loop {
            let page = store
                .list_jobs_within(tenant, filter, before, 2, scan)
                .unwrap();
            pages += 1;
            assert!(page.jobs.len() <= 2);
            lsns.extend(page.jobs.iter().map(|j| j.lsn));
            match page.next {
                Some(next) => before = Some(next),
                None => return (lsns, pages),
            }
        }
    }

    #[test]
    fn pages_go_newest_first_through_a_tenants_jobs_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let mine = insert(&store, "a", 5);
        let theirs = insert(&store, "b", 3);
        let (lsns, pages) = all_pages(&store, Some("a"), &JobFilter::default(), SCAN);
        let newest_first: Vec<u64> = mine.iter().rev().copied().collect();
        assert_eq!(lsns, newest_first);
        assert_eq!(pages, 3, "2 + 2 + 1");
        let (every, _) = all_pages(&store, None, &JobFilter::default(), SCAN);
        assert_eq!(
            every.len(),
            mine.len() + theirs.len(),
            "the operator's view"
        );
        let page = store
            .list_jobs(Some("a"), &JobFilter::default(), None, 10)
            .unwrap();
        assert_eq!(page.jobs[0].tenant, "a");
        assert_eq!(page.jobs[0].state, JobState::Queued);
        assert_eq!(page.next, None, "a short page is the last");
    }

    /// A filtered page looks at a bounded window; matches further down are reached
    /// through `next`, never skipped.
    #[test]
    fn a_filtered_list_reaches_every_match_through_bounded_windows() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let lsns = insert(&store, "a", 23);
        insert(&store, "b", 4);
        let running: Vec<u64> = lsns.iter().copied().filter(|l| l % 4 == 0).collect();
        for lsn in &running {
            store.start_job(*lsn, "n1").unwrap();
        }
        let filter = JobFilter {
            state: Some(JobState::Running),
            ..JobFilter::default()
        };
        for scan in [3, 5, SCAN] {
            let (found, _) = all_pages(&store, Some("a"), &filter, scan);
            let expected: Vec<u64> = running.iter().rev().copied().collect();
            assert_eq!(found, expected, "looking at {scan} jobs a page");
        }
        let queued = JobFilter {
            state: Some(JobState::Queued),
            ..JobFilter::default()
        };
        let (found, _) = all_pages(&store, Some("b"), &queued, 3);
        assert_eq!(found.len(), 4);
        let none = JobFilter {
            outcome: Some("exited".into()),
            ..JobFilter::default()
        };
        assert!(all_pages(&store, Some("a"), &none, 5).0.is_empty());
    }

    /// Pins the dashboard's first paint on a large journal: a page, filtered or not,
    /// is a range of an index, never a scan of the table or a sort.
    #[test]
    fn the_window_is_an_index_range() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let conn = store.conn();
        let plan = |sql: &str| -> String {
            conn.query_map(
                &format!("EXPLAIN QUERY PLAN {sql}"),
                crate::store::db::params![],
                |row| row.get::<String>(3),
            )
            .unwrap()
            .join("; ")
        };
        let tenant = plan(&format!(
            "SELECT {SUMMARY} FROM jobs WHERE lsn < 9 AND tenant = 'a' ORDER BY lsn DESC LIMIT 50"
        ));
        assert!(tenant.contains("jobs_by_tenant"), "{tenant}");
        let every = plan(&format!(
            "SELECT {SUMMARY} FROM jobs WHERE lsn < 9 ORDER BY lsn DESC LIMIT 50"
        ));
        for plan in [&tenant, &every] {
            assert!(!plan.contains("TEMP B-TREE"), "no sort: {plan}");
        }
        assert!(
            every.contains("INTEGER PRIMARY KEY") || every.contains("rowid"),
            "{every}"
        );
        let filtered = plan(&format!(
            "SELECT {SUMMARY} FROM jobs WHERE lsn < 9 AND tenant = 'a' AND lsn >= 1 \
             AND state = 'failed' ORDER BY lsn DESC LIMIT 50"
        ));
        assert!(
            filtered.contains("jobs_by_tenant") && !filtered.contains("TEMP B-TREE"),
            "{filtered}"
        );
    }
}
