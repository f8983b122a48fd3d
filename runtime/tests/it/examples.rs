//! Every example job builds and gives its expected answer.

use serde_json::{Value, json};
use wasmesh_runtime::{LimitsRequest, Outcome, RunReport, RunSpec};

use crate::{module, sandbox, stderr};

#[path = "../../../examples/mandelbrot/src/kernel.rs"]
mod kernel;

fn run(name: &str, spec: RunSpec) -> RunReport {
    let report = sandbox().run(&module(name), spec).unwrap();
    assert_eq!(
        report.outcome,
        Outcome::Exited(0),
        "{name}: {}",
        stderr(&report)
    );
    report
}

fn json_out(report: &RunReport) -> Value {
    serde_json::from_slice(&report.stdout).expect("JSON output")
}

#[test]
fn mandelbrot_matches_the_native_kernel() {
    // This tile covers part of the main cardioid (inside: 0) and its surroundings.
    let input = json!({"x": 48, "y": 48, "size": 32, "image_size": 128, "max_iter": 100});
    let report = run("mandelbrot", RunSpec::new().stdin(input.to_string()));
    assert_eq!(report.stdout, kernel::render_tile(48, 48, 32, 128, 100));
    assert!(report.stdout.contains(&0) && report.stdout.iter().any(|&p| p > 0));
}

#[test]
fn mandelbrot_rejects_a_tile_outside_the_image() {
    let input = json!({"x": 100, "y": 0, "size": 64, "image_size": 128, "max_iter": 10});
    let report = sandbox()
        .run(
            &module("mandelbrot"),
            RunSpec::new().stdin(input.to_string()),
        )
        .unwrap();
    assert_eq!(report.outcome, Outcome::Exited(1));
    assert!(
        stderr(&report).contains("does not fit"),
        "{}",
        stderr(&report)
    );
}

#[test]
fn wordcount_maps_and_reduces() {
    let map = |text: &str| {
        run(
            "wordcount",
            RunSpec::new().arg("map").stdin(text.to_string()),
        )
    };
    let a = map("The cat and the hat.");
    assert_eq!(
        json_out(&a),
        json!({"the": 2, "cat": 1, "and": 1, "hat": 1})
    );
    let b = map("the END");
    let both = json!([json_out(&a), json_out(&b)]).to_string();
    let reduced = run("wordcount", RunSpec::new().arg("reduce").stdin(both));
    assert_eq!(
        json_out(&reduced),
        json!({"the": 3, "cat": 1, "and": 1, "hat": 1, "end": 1})
    );
}

#[test]
fn wordcount_reduces_input_files() {
    use std::sync::Arc;
    use wasmesh_runtime::{FileSource, Mount};
    let files = vec![
        (
            "part-0.json".to_string(),
            FileSource::Bytes(Arc::from(&br#"{"a":1,"b":2}"#[..])),
        ),
        (
            "part-1.json".to_string(),
            FileSource::Bytes(Arc::from(&br#"{"b":3}"#[..])),
        ),
    ];
    let reduced = run(
        "wordcount",
        RunSpec::new()
            .arg("reduce")
            .mount(Mount::files("/input", files)),
    );
    assert_eq!(json_out(&reduced), json!({"a": 1, "b": 5}));
    assert_eq!(reduced.progress, Some(1.0));
}

#[test]
fn hash_matches_blake3() {
    let data = b"content-addressed all the way down".to_vec();
    let report = run("hash", RunSpec::new().stdin(data.clone()));
    assert_eq!(
        String::from_utf8(report.stdout).unwrap(),
        format!("{}\n", blake3::hash(&data).to_hex())
    );
}

#[test]
fn sensor_alerts_emit_only_above_the_threshold() {
    let reading = |value: f64| {
        json!({"event_type": "Reading", "fields": {"sensor": "s1", "value": value}}).to_string()
    };
    let hot = run("sensor-alerts", RunSpec::new().stdin(reading(42.5)));
    assert_eq!(hot.events.len(), 1);
    assert_eq!(hot.events[0].event_type, "Alert");
    assert_eq!(
        Value::Object(hot.events[0].fields.clone()),
        json!({"sensor": "s1", "value": 42.5, "threshold": 30.0})
    );
    assert_eq!(json_out(&hot)["alert"], json!(true));

    let cool = run("sensor-alerts", RunSpec::new().stdin(reading(12.0)));
    assert!(cool.events.is_empty());
    let custom = run(
        "sensor-alerts",
        RunSpec::new().stdin(reading(12.0)).env("THRESHOLD", "10"),
    );
    assert_eq!(custom.events.len(), 1);
}

#[test]
fn montecarlo_pi_estimates_pi_and_resumes_from_a_checkpoint_with_the_same_answer() {
    let input = json!({"samples": 200_000, "seed": 7, "checkpoint_every": 20_000}).to_string();
    let whole = run("montecarlo-pi", RunSpec::new().stdin(input.clone()));
    let answer = json_out(&whole);
    let pi = answer["pi"].as_f64().unwrap();
    assert_eq!(answer["resumed_from"], json!(0));
    assert!((pi - std::f64::consts::PI).abs() < 0.02, "{pi}");
    assert_eq!(whole.progress, Some(1.0));

    // Interrupt a run by starving it of fuel halfway, then resume from its checkpoint.
    let half = whole.usage.fuel / 2;
    let limits = LimitsRequest {
        fuel: Some(half),
        ..LimitsRequest::default()
    };
    let cut = sandbox()
        .run(
            &module("montecarlo-pi"),
            RunSpec::new().stdin(input.clone()).limits(limits),
        )
        .unwrap();
    assert_eq!(cut.outcome, Outcome::OutOfFuel);
    let checkpoint = cut.checkpoint.expect("a checkpoint before the cut");
    let state: Value = serde_json::from_slice(&checkpoint).unwrap();
    let done = state["done"].as_u64().unwrap();
    assert!(done > 0 && done < 200_000, "{state}");

    let resumed = run(
        "montecarlo-pi",
        RunSpec::new().stdin(input).checkpoint(checkpoint),
    );
    let mut resumed_answer = json_out(&resumed);
    assert_eq!(resumed_answer["resumed_from"], json!(done));
    resumed_answer["resumed_from"] = json!(0);
    assert_eq!(resumed_answer, answer);
    assert!(
        resumed.usage.fuel < whole.usage.fuel,
        "resuming skips the done samples"
    );
    assert!(
        resumed
            .logs
            .iter()
            .any(|l| l.message.contains(&format!("resuming from sample {done}")))
    );
}
