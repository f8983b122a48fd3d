//! What a run produced: its typed outcome, captured output, events and usage.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a run ended. The host matches on variants, never on messages.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The guest exited (returned from `_start` is `Exited(0)`, or called `proc_exit`).
    Exited(i32),
    /// The guest trapped (unreachable, a Rust panic, stack overflow, ...); the message
    /// says which trap.
    Trapped(String),
    /// The guest used up its fuel.
    OutOfFuel,
    /// The guest ran past its wall-clock limit.
    TimedOut,
    /// The guest tried to grow its memory past its limit.
    MemoryExceeded,
    /// The guest wrote more stdout/stderr, events or checkpoint bytes than allowed.
    OutputExceeded,
    /// The run was cancelled by its caller.
    Cancelled,
}

impl Outcome {
    /// True for `Exited(0)`, the only success.
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Exited(0))
    }

    /// The snake_case name used in the HTTP API (`exited`, `out_of_fuel`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Exited(_) => "exited",
            Outcome::Trapped(_) => "trapped",
            Outcome::OutOfFuel => "out_of_fuel",
            Outcome::TimedOut => "timed_out",
            Outcome::MemoryExceeded => "memory_exceeded",
            Outcome::OutputExceeded => "output_exceeded",
            Outcome::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Exited(code) => write!(f, "exited with code {code}"),
            Outcome::Trapped(message) => write!(f, "trapped: {message}"),
            Outcome::OutOfFuel => f.write_str("ran out of fuel"),
            Outcome::TimedOut => f.write_str("timed out"),
            Outcome::MemoryExceeded => f.write_str("exceeded its memory limit"),
            Outcome::OutputExceeded => f.write_str("exceeded its output limit"),
            Outcome::Cancelled => f.write_str("was cancelled"),
        }
    }
}

/// An event a guest emitted with `wasmesh_guest::emit`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The event's type, e.g. `Alert`.
    pub event_type: String,
    /// The event's fields: always a JSON object.
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// Severity of a guest log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Fine detail.
    Debug,
    /// Normal information.
    Info,
    /// Something looks wrong.
    Warn,
    /// Something failed.
    Error,
}

impl LogLevel {
    pub(crate) fn from_abi(level: i32) -> Self {
        match level {
            i32::MIN..=0 => LogLevel::Debug,
            1 => LogLevel::Info,
            2 => LogLevel::Warn,
            _ => LogLevel::Error,
        }
    }
}

/// One line a guest logged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Its severity.
    pub level: LogLevel,
    /// Its text (cut at 4 KiB).
    pub message: String,
}

/// Resources one run used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Fuel consumed.
    pub fuel: u64,
    /// Wall time from the start of instantiation to the end of the run.
    pub wall: Duration,
    /// Time spent instantiating (part of `wall`).
    pub instantiate: Duration,
    /// Largest linear memory the guest had, in bytes.
    pub peak_memory_bytes: u64,
}

/// Everything a run produced.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    /// How it ended.
    pub outcome: Outcome,
    /// What it wrote to stdout (at most the output limit).
    pub stdout: Vec<u8>,
    /// What it wrote to stderr (at most `Config::stderr_bytes`).
    pub stderr: Vec<u8>,
    /// The events it emitted, in order.
    pub events: Vec<Event>,
    /// The last checkpoint it saved, if any.
    pub checkpoint: Option<Vec<u8>>,
    /// The last progress it reported, in `0.0..=1.0`.
    pub progress: Option<f32>,
    /// The lines it logged (at most `Config::max_log_lines`).
    pub logs: Vec<LogLine>,
    /// Log lines dropped past the cap.
    pub logs_dropped: u64,
    /// What it used.
    pub usage: Usage,
}

impl Default for Outcome {
    fn default() -> Self {
        Outcome::Exited(0)
    }
}
