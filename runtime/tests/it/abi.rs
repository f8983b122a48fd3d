//! The `wasmesh` imports: events, progress, logs and checkpoints round-trip.

use std::sync::{Arc, Mutex};

use serde_json::json;
use wasmesh_runtime::{Event, LogLevel, Outcome, RunObserver, RunSpec};

use crate::{guest, guest_with, stderr, stdout};

#[test]
fn emitted_events_arrive_in_the_report() {
    let report = guest(&["emit", "Alert", r#"{"sensor":"s1","value":42.5}"#]);
    assert_eq!(report.outcome, Outcome::Exited(0), "{}", stderr(&report));
    assert_eq!(
        report.events,
        vec![Event {
            event_type: "Alert".into(),
            fields: json!({"sensor": "s1", "value": 42.5})
                .as_object()
                .unwrap()
                .clone(),
        }]
    );
}

#[test]
fn malformed_events_are_refused_not_recorded() {
    let empty_type = guest(&["emit", "", "{}"]);
    assert_eq!(empty_type.outcome, Outcome::Exited(3));
    assert!(
        stderr(&empty_type).contains("refused"),
        "{}",
        stderr(&empty_type)
    );
    let not_an_object = guest(&["emit", "Alert", "[1,2]"]);
    assert_eq!(not_an_object.outcome, Outcome::Exited(3));
    assert!(not_an_object.events.is_empty());
}

#[test]
fn too_many_events_is_output_exceeded() {
    assert_eq!(guest(&["emit-many", "16"]).outcome, Outcome::Exited(0));
    let report = guest(&["emit-many", "17"]);
    assert_eq!(report.outcome, Outcome::OutputExceeded);
    assert_eq!(report.events.len(), 16);
}

/// Regression (issue 25, item 10): a run could emit 1,024 events of 64 KiB (64 MiB),
/// all of it kept in its result. The events of one run are bounded together.
#[test]
fn a_runs_events_are_bounded_in_total() {
    let within = crate::roomy_guest(&["emit-big", "15", "60000"], RunSpec::default());
    assert_eq!(
        within.outcome,
        Outcome::Exited(0),
        "{}",
        crate::stderr(&within)
    );
    let report = crate::roomy_guest(&["emit-big", "20", "60000"], RunSpec::default());
    assert_eq!(report.outcome, Outcome::OutputExceeded);
    let total: usize = report
        .events
        .iter()
        .map(|e| serde_json::to_string(e).unwrap().len())
        .sum();
    assert!(
        report.events.len() < 20 && total <= 1 << 20,
        "{} events, {total} bytes",
        report.events.len()
    );
}

#[derive(Default)]
struct Recorder {
    progress: Mutex<Vec<f32>>,
    checkpoints: Mutex<Vec<Vec<u8>>>,
}

impl RunObserver for Recorder {
    fn progress(&self, fraction: f32) {
        self.progress.lock().unwrap().push(fraction);
    }
    fn checkpoint(&self, bytes: &[u8]) {
        self.checkpoints.lock().unwrap().push(bytes.to_vec());
    }
}

#[test]
fn progress_is_observed_as_it_happens() {
    let recorder = Arc::new(Recorder::default());
    let report = guest_with(&["progress"], RunSpec::new().observer(recorder.clone()));
    assert_eq!(report.progress, Some(1.0));
    assert_eq!(
        *recorder.progress.lock().unwrap(),
        vec![0.25, 0.5, 0.75, 1.0]
    );
}

#[test]
fn log_lines_are_kept_with_their_level() {
    let report = guest(&["log", "disk almost full"]);
    assert_eq!(report.logs.len(), 1);
    assert_eq!(report.logs[0].level, LogLevel::Warn);
    assert_eq!(report.logs[0].message, "disk almost full");
}

#[test]
fn checkpoints_round_trip() {
    let recorder = Arc::new(Recorder::default());
    let saved = guest_with(
        &["checkpoint-save", "step 41"],
        RunSpec::new().observer(recorder.clone()),
    );
    assert_eq!(saved.checkpoint.as_deref(), Some(&b"step 41"[..]));
    assert_eq!(
        *recorder.checkpoints.lock().unwrap(),
        vec![b"step 41".to_vec()]
    );

    assert_eq!(stdout(&guest(&["checkpoint-load"])), "none");
    let resumed = guest_with(
        &["checkpoint-load"],
        RunSpec::new().checkpoint(saved.checkpoint.unwrap()),
    );
    assert_eq!(stdout(&resumed), "step 41");
}

#[test]
fn an_oversized_checkpoint_is_output_exceeded() {
    assert_eq!(
        guest(&["checkpoint-big", "65536"]).outcome,
        Outcome::Exited(0)
    );
    let report = guest(&["checkpoint-big", "65537"]);
    assert_eq!(report.outcome, Outcome::OutputExceeded);
    assert_eq!(report.checkpoint, None);
}
