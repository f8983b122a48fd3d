//! Wire types of a job beyond its descriptor and result: its deadlines and its
//! attempts.

use serde::{Deserialize, Serialize};

/// The longest deadline a job or queue can give: 30 days.
pub const MAX_DEADLINE_MS: u64 = 30 * 24 * 3600 * 1000;

/// A job's deadlines, in ms from its submission: `start_within_ms` (schedule to
/// start) and `finish_within_ms` (submit to finish). Retries count against the same
/// deadlines: they are not part of the action (its id does not change with them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deadlines {
    /// The job's first attempt must start within this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_within_ms: Option<u64>,
    /// The job must finish within this long; an attempt still running then is stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_within_ms: Option<u64>,
}

impl Deadlines {
    /// Each deadline of `self`, else `fallback`'s (a job's own over its queue's).
    pub fn or(self, fallback: Deadlines) -> Deadlines {
        Deadlines {
            start_within_ms: self.start_within_ms.or(fallback.start_within_ms),
            finish_within_ms: self.finish_within_ms.or(fallback.finish_within_ms),
        }
    }

    /// Refuses a deadline of 0 or past [`MAX_DEADLINE_MS`].
    pub fn check(&self) -> Result<(), String> {
        for (name, value) in [
            ("start_within_ms", self.start_within_ms),
            ("finish_within_ms", self.finish_within_ms),
        ] {
            if value.is_some_and(|ms| ms == 0 || ms > MAX_DEADLINE_MS) {
                return Err(format!(
                    "deadlines.{name} must be between 1 and {MAX_DEADLINE_MS} ms"
                ));
            }
        }
        Ok(())
    }

    /// The absolute times (Unix ms) for a job submitted at `now_ms`: (start by, finish by).
    pub fn from(&self, now_ms: i64) -> (Option<i64>, Option<i64>) {
        let at = |ms: Option<u64>| ms.map(|ms| now_ms + ms as i64);
        (at(self.start_within_ms), at(self.finish_within_ms))
    }
}

/// One attempt at a job: where it was handed out and how it ended (the journal keeps
/// every attempt; a job's result is its last one's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// Its number, from 1; on a coordinator also the lease's fencing token.
    pub attempt: u32,
    /// The node it was given to (a lone node: its own id).
    pub node: String,
    /// When it was handed out (leased, or taken by a local slot): Unix ms, journal's clock.
    pub started_ms: i64,
    /// When its end was written; `None` while it runs.
    pub ended_ms: Option<i64>,
    /// How it ended (the result's outcome, `node_lost` when its node stopped).
    pub outcome: Option<String>,
    /// The guest's exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The trap text or the reason it ended without a run of its own.
    pub message: Option<String>,
    /// Whether the job was queued again after it (an automatic retry).
    pub retried: bool,
}
