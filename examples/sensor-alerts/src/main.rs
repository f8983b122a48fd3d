//! An event handler: reads a sensor reading event and emits an `Alert` event when the value
//! is above the threshold (the event's `threshold` field, else $THRESHOLD, else 30).
//! Run: echo '{"event_type":"Reading","fields":{"sensor":"s1","value":42.5}}' | wasmesh exec examples/target/wasm32-wasip1/release/sensor-alerts.wasm

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use wasmesh_guest::{Error, Json, emit, job};

/// The default alert threshold when neither the event nor the environment sets one.
const DEFAULT_THRESHOLD: f64 = 30.0;

#[derive(Deserialize)]
struct Incoming {
    event_type: String,
    #[serde(default)]
    fields: Map<String, Value>,
}

#[derive(Serialize)]
struct Verdict {
    event_type: String,
    sensor: String,
    value: f64,
    threshold: f64,
    alert: bool,
}

#[job]
fn run(Json(event): Json<Incoming>) -> Result<Json<Verdict>, Error> {
    let value = event
        .fields
        .get("value")
        .and_then(Value::as_f64)
        .ok_or_else(|| {
            Error::msg(format!(
                "{} event has no numeric `value` field",
                event.event_type
            ))
        })?;
    let sensor = event
        .fields
        .get("sensor")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string();
    let threshold = match event.fields.get("threshold").and_then(Value::as_f64) {
        Some(t) => t,
        None => match std::env::var("THRESHOLD") {
            Ok(t) => t
                .parse()
                .map_err(|e| Error::msg(format!("THRESHOLD={t:?}: {e}")))?,
            Err(_) => DEFAULT_THRESHOLD,
        },
    };
    let alert = value > threshold;
    if alert {
        emit(
            "Alert",
            &json!({ "sensor": sensor, "value": value, "threshold": threshold }),
        )?;
    }
    Ok(Json(Verdict {
        event_type: event.event_type,
        sensor,
        value,
        threshold,
        alert,
    }))
}
