//! The contract's data: worker and action descriptors, content ids from canonical JSON,
//! hashes as they appear on the wire, and job results.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use wasmesh_runtime::LimitsRequest;

mod jobs;
mod usage;
pub use jobs::{Attempt, Deadlines, MAX_DEADLINE_MS};
pub use usage::{Cost, Prices, UsageBy, UsageRow};

/// A BLAKE3-256 hash as the API spells it: 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HashHex(pub [u8; 32]);

impl HashHex {
    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        HashHex(*blake3::hash(bytes).as_bytes())
    }

    /// The hash of the empty blob, which every store holds.
    pub fn empty() -> Self {
        Self::of(b"")
    }

    /// As a runtime hash.
    pub fn to_blake3(self) -> blake3::Hash {
        blake3::Hash::from_bytes(self.0)
    }
}

impl From<blake3::Hash> for HashHex {
    fn from(hash: blake3::Hash) -> Self {
        HashHex(*hash.as_bytes())
    }
}

/// Why a string is not a hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadHash(pub String);

impl fmt::Display for BadHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a BLAKE3 hash (64 lowercase hex characters)",
            self.0
        )
    }
}

impl std::error::Error for BadHash {}

impl FromStr for HashHex {
    type Err = BadHash;

    /// One pass over the text, checking and decoding (hashes are parsed for every
    /// job the journal reads and every hash a request names: `hex::decode_to_slice`
    /// after a separate lowercase check was 3% of a busy coordinator).
    fn from_str(text: &str) -> Result<Self, BadHash> {
        fn nibble(b: u8) -> Option<u8> {
            match b {
                b'0'..=b'9' => Some(b - b'0'),
                b'a'..=b'f' => Some(b - b'a' + 10),
                _ => None,
            }
        }
        let bad = || BadHash(text.chars().take(80).collect());
        let text_bytes = text.as_bytes();
        if text_bytes.len() != 64 {
            return Err(bad());
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(text_bytes.chunks_exact(2)) {
            *byte = (nibble(pair[0]).ok_or_else(bad)? << 4) | nibble(pair[1]).ok_or_else(bad)?;
        }
        Ok(HashHex(bytes))
    }
}

impl fmt::Display for HashHex {
    /// Into a buffer on the stack: `hex::encode` collects a `String` a `char` at a
    /// time, 4% of a busy coordinator (every job row and answer names hashes).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = [0u8; 64];
        hex::encode_to_slice(self.0, &mut text).map_err(|_| fmt::Error)?;
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for HashHex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HashHex({self})")
    }
}

impl Serialize for HashHex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HashHex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A worker: a content-addressed module with its files, environment and limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerDescriptor {
    /// Human name.
    pub name: String,
    /// Human version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Hash of the `.wasm`.
    pub module: HashHex,
    /// Files mounted read-only under `/worker`: relative path -> hash.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, HashHex>,
    /// Environment for every action of the worker.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Ceilings for every action of the worker.
    #[serde(default, skip_serializing_if = "is_default")]
    pub limits: LimitsRequest,
    /// Node labels placement must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requires: BTreeMap<String, String>,
}

impl WorkerDescriptor {
    /// Every chunk the worker needs: the module and its files.
    pub fn chunks(&self) -> Vec<HashHex> {
        std::iter::once(self.module)
            .chain(self.files.values().copied())
            .collect()
    }
}

/// An action: a worker and its inputs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionDescriptor {
    /// The worker id.
    pub worker: HashHex,
    /// Hash of the stdin bytes (empty when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<HashHex>,
    /// Arguments after `argv[0]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment (on top of the worker's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Files mounted read-only under `/input`: relative path -> hash.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, HashHex>,
    /// Limits, clamped to the worker's and the node's.
    #[serde(default, skip_serializing_if = "is_default")]
    pub limits: LimitsRequest,
    /// LSNs of jobs that must succeed first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<u64>,
}

impl ActionDescriptor {
    /// Every chunk the action needs besides its worker: its input and files.
    pub fn chunks(&self) -> Vec<HashHex> {
        self.input
            .iter()
            .copied()
            .chain(self.files.values().copied())
            .collect()
    }
}

/// Where an action names the output of an earlier job instead of a hash:
/// `{"output_of": LSN}` as its `input` or as the value of one of its `files`.
const OUTPUT_OF: &str = "output_of";

/// The values of an action descriptor that may hold an output reference.
fn reference_slots(action: &mut serde_json::Value) -> Vec<&mut serde_json::Value> {
    let Some(object) = action.as_object_mut() else {
        return Vec::new();
    };
    let mut slots = Vec::new();
    for (key, value) in object.iter_mut() {
        match (key.as_str(), value) {
            ("input", value) => slots.push(value),
            ("files", serde_json::Value::Object(files)) => slots.extend(files.values_mut()),
            _ => {}
        }
    }
    slots
}

/// The LSNs an action's output references name, ascending, each once.
/// A reference is exactly `{"output_of": <job LSN>}`; anything else in its place is an
/// error.
pub fn output_refs(action: &serde_json::Value) -> Result<Vec<u64>, String> {
    let mut action = action.clone();
    let mut lsns = Vec::new();
    for slot in reference_slots(&mut action) {
        let serde_json::Value::Object(reference) = slot else {
            continue;
        };
        let lsn = reference
            .get(OUTPUT_OF)
            .and_then(serde_json::Value::as_u64)
            .filter(|_| reference.len() == 1)
            .ok_or_else(|| {
                format!(
                    "an input is a hash or {{\"output_of\": LSN}}, not {}",
                    serde_json::Value::Object(reference.clone())
                )
            })?;
        lsns.push(lsn);
    }
    lsns.sort_unstable();
    lsns.dedup();
    Ok(lsns)
}

/// Replaces every output reference in `action` with the hash `output` gives for its
/// LSN; answers how many it replaced.
pub fn substitute_refs<E>(
    action: &mut serde_json::Value,
    mut output: impl FnMut(u64) -> Result<HashHex, E>,
) -> Result<usize, E> {
    let mut replaced = 0;
    for slot in reference_slots(action) {
        if let Some(lsn) = slot.get(OUTPUT_OF).and_then(serde_json::Value::as_u64) {
            *slot = serde_json::Value::String(output(lsn)?.to_string());
            replaced += 1;
        }
    }
    Ok(replaced)
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Why a JSON value has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotCanonical(pub String);

impl fmt::Display for NotCanonical {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Canonical JSON: object keys sorted by byte order, no insignificant whitespace,
/// integers only. Written out by hand so that no serde_json feature (such as
/// `preserve_order`, which another crate could switch on) can change an id.
pub fn canonical_json(value: &serde_json::Value) -> Result<Vec<u8>, NotCanonical> {
    let mut out = Vec::new();
    write_canonical(value, "$", &mut out)?;
    Ok(out)
}

fn write_canonical(
    value: &serde_json::Value,
    path: &str,
    out: &mut Vec<u8>,
) -> Result<(), NotCanonical> {
    use serde_json::Value;
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => {
            if n.is_f64() {
                return Err(NotCanonical(format!(
                    "{path} is a float ({n}); descriptors hold integers only"
                )));
            }
            out.extend_from_slice(n.to_string().as_bytes());
        }
        Value::String(s) => {
            serde_json::to_writer(&mut *out, s).expect("writing a string to a Vec cannot fail");
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, &format!("{path}[{i}]"), out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key)
                    .expect("writing a string to a Vec cannot fail");
                out.push(b':');
                write_canonical(&map[key], &format!("{path}.{key}"), out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// The content id of a descriptor: BLAKE3 of its canonical JSON.
pub fn content_id(value: &serde_json::Value) -> Result<HashHex, NotCanonical> {
    canonical_json(value).map(|bytes| HashHex::of(&bytes))
}

/// Defines a state enum: serde names on the wire (snake_case), `as_str` for people and
/// the database, `FromStr` back, and comparison with the names (`state == "queued"`).
macro_rules! state_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every state, in order.
            pub const ALL: &[$name] = &[$($name::$variant,)+];

            /// Its name on the wire and in the database.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(text: &str) -> Result<Self, String> {
                match text {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(concat!("{:?} is not a ", stringify!($name)), other)),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}

/// How long a server waits for a request head on an idle connection by default
/// (`--idle-timeout`).
pub const SERVER_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// How long wasmesh's own HTTP clients keep an idle connection: well below
/// [`SERVER_IDLE`], so they never reuse one a server is closing.
pub const CLIENT_IDLE: std::time::Duration = std::time::Duration::from_secs(15);

/// The tenant that operator keys given with `--admin-key` act as.
pub const OPERATOR_TENANT: &str = "operator";

/// The tenant used when the server runs without keys.
pub const DEFAULT_TENANT: &str = "default";

/// Names a tenants file cannot give a customer: the principals of `--admin-key`
/// ([`OPERATOR_TENANT`]) and `--api-key` ([`DEFAULT_TENANT`]), whose namespaces a
/// customer of the same name would share, and `defaults` (every tenant's quotas).
pub const RESERVED_TENANTS: [&str; 3] = [OPERATOR_TENANT, DEFAULT_TENANT, "defaults"];

/// Outcome names the host gives results of attempts that did not end a run of their
/// own (the runtime's `Outcome::name` gives the rest).
pub mod outcome {
    /// Cancelled before or while it ran.
    pub const CANCELLED: &str = "cancelled";
    /// It could not run, or failed on the host.
    pub const TRAPPED: &str = "trapped";
    /// Its node stopped renewing its lease.
    pub const NODE_LOST: &str = "node_lost";
    /// It did not start, or finish, within its deadline.
    pub const DEADLINE_EXCEEDED: &str = "deadline_exceeded";
}

state_enum! {
    /// Where a job is: pending (`Queued`, `Running`) or finished with a result.
    JobState {
        /// Waiting for a slot (or for the jobs it depends on).
        Queued => "queued",
        /// An attempt is running (on a coordinator: leased to a node).
        Running => "running",
        /// Finished: the guest exited 0.
        Succeeded => "succeeded",
        /// Finished: the guest failed, a limit stopped it, or it could not run.
        Failed => "failed",
        /// Finished: cancelled before or while it ran.
        Cancelled => "cancelled",
    }
}

impl JobState {
    /// Whether the job has its final result.
    pub fn is_finished(self) -> bool {
        !matches!(self, JobState::Queued | JobState::Running)
    }
}

state_enum! {
    /// Whether a webhook endpoint gets deliveries.
    WebhookState {
        /// Deliveries are sent.
        Active => "active",
        /// Too many failed attempts (or by hand): nothing is sent until it is enabled.
        Disabled => "disabled",
    }
}

state_enum! {
    /// Where one webhook delivery is.
    DeliveryState {
        /// Waiting for its (next) attempt.
        Pending => "pending",
        /// The endpoint answered 2xx.
        Delivered => "delivered",
        /// Attempts ran out, or the endpoint was disabled.
        Failed => "failed",
    }
}

state_enum! {
    /// Whether a queue takes submissions.
    QueueState {
        /// Takes submissions.
        Active => "active",
        /// Takes none; its jobs finish.
        Draining => "draining",
        /// Takes none; its jobs were cancelled (or it expired idle).
        Cancelled => "cancelled",
    }
}

/// Usage of one run, as results report it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageJson {
    /// Fuel consumed.
    pub fuel: u64,
    /// Wall time in milliseconds.
    pub wall_ms: u64,
    /// Peak linear memory.
    pub peak_memory_bytes: u64,
    /// Memory-time: peak memory times wall time, in byte-seconds.
    #[serde(default)]
    pub memory_byte_seconds: u64,
}

/// The most bytes of events (as JSON) a result keeps inline; more go to a blob.
pub const INLINE_EVENTS_BYTES: usize = 16 << 10;

/// A finished job's result, exactly as `GET /compute/jobs/{lsn}` returns it. It is
/// also what the journal stores and the body of a node's report (`cluster::protocol::
/// Report`), where the coordinator fills in the job's identity, node, attempt and
/// placement from the lease: those fields may be absent there.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    /// The job.
    #[serde(default)]
    pub lsn: u64,
    /// Its action id.
    #[serde(default = "HashHex::empty")]
    pub action: HashHex,
    /// Its worker id.
    #[serde(default = "HashHex::empty")]
    pub worker: HashHex,
    /// `succeeded`, `failed` or `cancelled`.
    pub state: JobState,
    /// How the run ended (see the contract's list).
    pub outcome: String,
    /// The guest's exit code, when it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The trap text (or the reason a job failed without running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Hash of stdout.
    pub output: HashHex,
    /// Bytes of stdout.
    pub output_size: u64,
    /// Hash of stderr.
    pub stderr: HashHex,
    /// Events the guest emitted, when they are small (at most
    /// [`INLINE_EVENTS_BYTES`] as JSON); larger ones are in `events_blob`.
    #[serde(default)]
    pub events: Vec<serde_json::Value>,
    /// The blob holding the events (a JSON array) when they were too large to keep
    /// in the result itself: the tenant's, like the output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_blob: Option<HashHex>,
    /// What it used.
    #[serde(default)]
    pub usage: UsageJson,
    /// The node that ran it.
    #[serde(default)]
    pub node: String,
    /// Attempts made so far.
    #[serde(default)]
    pub attempts: u32,
    /// Whether it was answered from the result cache.
    #[serde(default)]
    pub cached: bool,
    /// On a coordinator: where the job ran and why (`{node, strategy, score, factors}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<serde_json::Value>,
    /// When the run behind this result started and ended (absent for cache answers
    /// and jobs that never ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timing: Option<RunTiming>,
}

impl JobResult {
    /// The result of an attempt that ended without a run of its own (cancelled,
    /// doomed by a dependency, lost with its node, unrunnable, failed on the host):
    /// the one builder of such results, on nodes and coordinators alike.
    pub fn without_run(state: JobState, outcome: &str, message: &str) -> Self {
        Self {
            lsn: 0,
            action: HashHex::empty(),
            worker: HashHex::empty(),
            state,
            outcome: outcome.into(),
            exit_code: None,
            message: Some(message.into()),
            output: HashHex::empty(),
            output_size: 0,
            stderr: HashHex::empty(),
            events: Vec::new(),
            events_blob: None,
            usage: UsageJson::default(),
            node: String::new(),
            attempts: 0,
            cached: false,
            placement: None,
            timing: None,
        }
    }
}

/// When a run started and ended: Unix milliseconds on the clock of the node that ran
/// it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunTiming {
    /// The sandbox run began.
    pub started_ms: i64,
    /// It ended.
    pub finished_ms: i64,
}

impl RunTiming {
    /// Unix milliseconds now.
    pub fn now_ms() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn canonical_json_sorts_keys_by_bytes_and_drops_whitespace() {
        let value = json!({"b": 1, "a": {"z": [1, 2], "B": "x"}, "é": true, "Z": null});
        let text = String::from_utf8(canonical_json(&value).unwrap()).unwrap();
        assert_eq!(text, r#"{"Z":null,"a":{"B":"x","z":[1,2]},"b":1,"é":true}"#);
    }

    #[test]
    fn canonical_json_refuses_floats_with_their_path() {
        let err = canonical_json(&json!({"limits": {"fuel": 1.5}})).unwrap_err();
        assert!(err.0.contains("$.limits.fuel"), "{err}");
    }

    #[test]
    fn ids_do_not_depend_on_key_order() {
        let a: serde_json::Value = serde_json::from_str(r#"{"name":"x","module":"m"}"#).unwrap();
        let b: serde_json::Value =
            serde_json::from_str(r#"{ "module" : "m", "name" : "x" }"#).unwrap();
        assert_eq!(content_id(&a).unwrap(), content_id(&b).unwrap());
        assert_ne!(
            content_id(&a).unwrap(),
            content_id(&json!({"name": "y", "module": "m"})).unwrap()
        );
    }

    #[test]
    fn output_references_are_found_and_substituted() {
        let hash = HashHex::of(b"x").to_string();
        let mut action = json!({
            "worker": hash,
            "input": {"output_of": 7},
            "files": {"a": {"output_of": 3}, "b": hash, "c": {"output_of": 7}},
            "args": [{"output_of": 9}],
        });
        assert_eq!(output_refs(&action).unwrap(), vec![3, 7]);
        let replaced =
            substitute_refs(&mut action, |lsn| Ok::<_, ()>(HashHex::of(&[lsn as u8]))).unwrap();
        assert_eq!(replaced, 3);
        assert_eq!(action["input"], json!(HashHex::of(&[7]).to_string()));
        assert_eq!(action["files"]["a"], json!(HashHex::of(&[3]).to_string()));
        assert_eq!(action["files"]["b"], json!(hash));
        // Only inputs and files hold references; arguments are left as they are.
        assert_eq!(action["args"], json!([{"output_of": 9}]));
        assert!(output_refs(&action).unwrap().is_empty());
    }

    #[test]
    fn malformed_output_references_are_refused() {
        for bad in [
            json!({"output_of": "7"}),
            json!({"output_of": -1}),
            json!({"output_of": 7, "extra": 1}),
            json!({"lsn": 7}),
        ] {
            let err = output_refs(&json!({"input": bad})).unwrap_err();
            assert!(err.contains("output_of"), "{err}");
        }
    }

    #[test]
    fn hashes_must_be_lowercase_hex_of_the_right_length() {
        let good = HashHex::empty().to_string();
        assert_eq!(good.parse::<HashHex>().unwrap(), HashHex::empty());
        assert!(good.to_uppercase().parse::<HashHex>().is_err());
        assert!(good[1..].parse::<HashHex>().is_err());
        assert!(format!("{}g", &good[1..]).parse::<HashHex>().is_err());
        // 64 bytes, but one character of two bytes: not a hash, and no panic.
        assert!(format!("é{}", &good[2..]).parse::<HashHex>().is_err());
        // Every byte value survives the trip through text, in the order written.
        let all = HashHex(std::array::from_fn(|i| (i as u8).wrapping_mul(37)));
        let text = all.to_string();
        assert_eq!(text, hex::encode(all.0));
        assert_eq!(text.parse::<HashHex>().unwrap(), all);
    }

    #[test]
    fn descriptors_refuse_unknown_fields() {
        let module = HashHex::empty().to_string();
        let ok: Result<WorkerDescriptor, _> =
            serde_json::from_value(json!({"name": "w", "module": module}));
        assert!(ok.is_ok());
        let typo: Result<WorkerDescriptor, _> =
            serde_json::from_value(json!({"name": "w", "module": module, "limtis": {}}));
        assert!(typo.unwrap_err().to_string().contains("limtis"));
    }
}
