//! Write wasmesh jobs in plain Rust.
//!
//! A job is a function from its input to its output. `#[job]` makes it the entry point
//! of a `wasm32-wasip1` command: stdin is parsed into the input, the output is written to
//! stdout, and an error ends the job with exit code 1 and its message on stderr.
//!
//! ```no_run
//! use serde::{Deserialize, Serialize};
//! use wasmesh_guest::{Error, Json, emit, job, progress};
//!
//! #[derive(Deserialize)]
//! struct Input { numbers: Vec<i64> }
//!
//! #[derive(Serialize)]
//! struct Output { sum: i64 }
//!
//! #[job]
//! fn run(Json(input): Json<Input>) -> Result<Json<Output>, Error> {
//!     if input.numbers.is_empty() {
//!         wasmesh_guest::bail!("nothing to add");
//!     }
//!     progress(0.5);
//!     let sum = input.numbers.iter().sum();
//!     emit("Summed", &serde_json::json!({ "count": input.numbers.len() }))?;
//!     Ok(Json(Output { sum }))
//! }
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip1` and run it with
//! `wasmesh exec target/wasm32-wasip1/release/NAME.wasm --input input.json`.
//!
//! Besides stdin and stdout a job has its arguments ([`args`]), its environment
//! ([`std::env::var`]), read-only files under `/worker` and `/input` ([`worker_file`],
//! [`input_file`]), an empty writable `/tmp`, and the host calls below: [`emit`],
//! [`progress`], [`log!`] and [`checkpoint`]. It has no network and no other files.
//!
//! **Invariant:** this crate never depends on the runtime or the host; they share only
//! the `wasmesh` import ABI (see `abi.rs`).
#![deny(missing_docs)]

mod abi;

use std::fmt;
use std::io::{Read, Write};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use wasmesh_guest_macros::job;

/// JSON input or output: `Json<T>` parses stdin as `T`, or serializes `T` to stdout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Json<T>(pub T);

/// A job's error: its message goes to stderr and the job exits with code 1.
pub struct Error {
    message: String,
}

impl Error {
    /// An error with this message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
        }
    }
}

impl<E: std::error::Error> From<E> for Error {
    fn from(error: E) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Self { message }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error({:?})", self.message)
    }
}

/// Returns early from a job with an [`Error`] built from a format string.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return ::core::result::Result::Err($crate::Error::msg(::std::format!($($arg)*)))
    };
}

/// Logs a line to the host at info level, formatted like `println!`.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        $crate::log_at($crate::Level::Info, &::std::format!($($arg)*))
    };
}

/// A job's input: how stdin becomes the function's argument.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a job's input",
    label = "a #[job] input must be `Json<T>`, `Vec<u8>`, `String` or `()`",
    note = "wrap your type in `Json<..>` to parse it from JSON on stdin"
)]
pub trait FromInput: Sized {
    /// Parses the whole of stdin.
    fn from_input(bytes: Vec<u8>) -> Result<Self, Error>;
}

impl FromInput for Vec<u8> {
    fn from_input(bytes: Vec<u8>) -> Result<Self, Error> {
        Ok(bytes)
    }
}

impl FromInput for String {
    fn from_input(bytes: Vec<u8>) -> Result<Self, Error> {
        String::from_utf8(bytes).map_err(|e| Error::msg(format!("input is not UTF-8: {e}")))
    }
}

impl FromInput for () {
    fn from_input(_: Vec<u8>) -> Result<Self, Error> {
        Ok(())
    }
}

impl<T: DeserializeOwned> FromInput for Json<T> {
    fn from_input(bytes: Vec<u8>) -> Result<Self, Error> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(Error::msg("expected JSON input on stdin, got nothing"));
        }
        serde_json::from_slice(&bytes)
            .map(Json)
            .map_err(|e| Error::msg(format!("input is not the expected JSON: {e}")))
    }
}

/// A job's output: how the function's result becomes stdout.
pub trait IntoOutput {
    /// The bytes to write to stdout.
    fn into_output(self) -> Result<Vec<u8>, Error>;
}

impl IntoOutput for Vec<u8> {
    fn into_output(self) -> Result<Vec<u8>, Error> {
        Ok(self)
    }
}

impl IntoOutput for String {
    fn into_output(self) -> Result<Vec<u8>, Error> {
        Ok(self.into_bytes())
    }
}

impl IntoOutput for () {
    fn into_output(self) -> Result<Vec<u8>, Error> {
        Ok(Vec::new())
    }
}

impl<T: Serialize> IntoOutput for Json<T> {
    fn into_output(self) -> Result<Vec<u8>, Error> {
        serde_json::to_vec(&self.0).map_err(Error::from)
    }
}

/// What a job function may return: an output, or a `Result` of one.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a job's result",
    label = "a #[job] must return `Json<T>`, `Vec<u8>`, `String`, `()` or a `Result` of one",
    note = "wrap your type in `Json<..>` to write it to stdout as JSON"
)]
pub trait IntoJobResult {
    /// The output type.
    type Output: IntoOutput;
    /// The output, or the error that ends the job.
    fn into_job_result(self) -> Result<Self::Output, Error>;
}

impl<T: IntoOutput, E: Into<Error>> IntoJobResult for Result<T, E> {
    type Output = T;
    fn into_job_result(self) -> Result<T, Error> {
        self.map_err(Into::into)
    }
}

macro_rules! plain_output {
    ($($ty:ty),*) => {$(
        impl IntoJobResult for $ty {
            type Output = $ty;
            fn into_job_result(self) -> Result<$ty, Error> {
                Ok(self)
            }
        }
    )*};
}
plain_output!(Vec<u8>, String, ());

impl<T: Serialize> IntoJobResult for Json<T> {
    type Output = Json<T>;
    fn into_job_result(self) -> Result<Json<T>, Error> {
        Ok(self)
    }
}

/// Emits an event with these fields (which must serialize to a JSON object). The host
/// collects events into the job's result; on the coordinator they are routed to
/// handlers.
pub fn emit(event_type: &str, fields: &impl Serialize) -> Result<(), Error> {
    let fields = serde_json::to_vec(fields)?;
    if abi::emit(event_type, &fields) {
        Ok(())
    } else {
        Err(Error::msg(format!(
            "event {event_type:?} refused: the type must be 1 to 256 bytes and the fields a JSON object"
        )))
    }
}

/// Reports progress as a fraction from 0.0 to 1.0.
pub fn progress(fraction: f64) {
    abi::progress(fraction);
}

/// Severity of a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Fine detail.
    Debug = 0,
    /// Normal information.
    Info = 1,
    /// Something looks wrong.
    Warn = 2,
    /// Something failed.
    Error = 3,
}

/// Logs a line to the host at a level (lines are cut at 4 KiB).
pub fn log_at(level: Level, message: &str) {
    abi::log(level as i32, message);
}

/// Checkpoints: save state as you go; after a retry, resume from the last save.
pub mod checkpoint {
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use crate::{Error, abi};

    /// Saves `bytes` as the job's checkpoint, replacing any earlier one.
    pub fn save(bytes: &[u8]) {
        abi::checkpoint_save(bytes);
    }

    /// The latest checkpoint: this run's last save, or else the one the job was
    /// resumed from; `None` on a fresh start.
    pub fn load() -> Option<Vec<u8>> {
        abi::checkpoint_load()
    }

    /// Saves `state` as JSON.
    pub fn save_json(state: &impl Serialize) -> Result<(), Error> {
        save(&serde_json::to_vec(state)?);
        Ok(())
    }

    /// Loads a JSON checkpoint; `Ok(None)` on a fresh start.
    pub fn load_json<T: DeserializeOwned>() -> Result<Option<T>, Error> {
        load()
            .map(|bytes| serde_json::from_slice(&bytes).map_err(Error::from))
            .transpose()
    }
}

/// The job's arguments (without `argv[0]`).
pub fn args() -> Vec<String> {
    std::env::args().skip(1).collect()
}

/// Reads a file of the worker (mounted read-only under `/worker`).
pub fn worker_file(name: &str) -> std::io::Result<Vec<u8>> {
    std::fs::read(format!("/worker/{name}"))
}

/// Reads an input file of the action (mounted read-only under `/input`).
pub fn input_file(name: &str) -> std::io::Result<Vec<u8>> {
    std::fs::read(format!("/input/{name}"))
}

/// The names of the action's input files, sorted (empty when it has none).
pub fn input_files() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/input")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|entry| entry.file_type().is_ok_and(|t| t.is_file()))
                .filter_map(|entry| entry.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[doc(hidden)]
pub mod __private {
    use super::*;

    /// The body of the `main` that `#[job]` generates.
    pub fn run<I, R, F>(job: F) -> !
    where
        I: FromInput,
        R: IntoJobResult,
        F: FnOnce(I) -> R,
    {
        let mut stdin = Vec::new();
        if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
            eprintln!("wasmesh job: reading stdin: {e}");
            std::process::exit(2);
        }
        let input = match I::from_input(stdin) {
            Ok(input) => input,
            Err(e) => {
                eprintln!("wasmesh job: {e}");
                std::process::exit(2);
            }
        };
        let output = job(input)
            .into_job_result()
            .and_then(IntoOutput::into_output);
        match output {
            Ok(bytes) => {
                let mut stdout = std::io::stdout().lock();
                if let Err(e) = stdout.write_all(&bytes).and_then(|()| stdout.flush()) {
                    eprintln!("wasmesh job: writing stdout: {e}");
                    std::process::exit(1);
                }
                std::process::exit(0);
            }
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_input_rejects_empty_and_malformed() {
        assert!(
            Json::<u32>::from_input(b"  \n".to_vec())
                .unwrap_err()
                .to_string()
                .contains("got nothing")
        );
        assert!(
            Json::<u32>::from_input(b"{".to_vec())
                .unwrap_err()
                .to_string()
                .contains("not the expected JSON")
        );
        assert_eq!(Json::<u32>::from_input(b"42".to_vec()).unwrap().0, 42);
    }

    #[test]
    fn result_errors_keep_their_causes() {
        let parse: Result<u8, _> = "300".parse::<u8>();
        let error: Error = parse.unwrap_err().into();
        assert!(error.to_string().contains("too large"), "{error}");
        let failed: Result<String, std::io::Error> = Err(std::io::Error::other("disk gone"));
        assert_eq!(
            failed.into_job_result().unwrap_err().to_string(),
            "disk gone"
        );
    }

    #[test]
    fn checkpoints_round_trip_natively() {
        assert_eq!(checkpoint::load(), None);
        checkpoint::save_json(&vec![1, 2, 3]).unwrap();
        assert_eq!(
            checkpoint::load_json::<Vec<i32>>().unwrap(),
            Some(vec![1, 2, 3])
        );
    }

    #[test]
    fn emit_refuses_an_empty_type() {
        assert!(emit("", &serde_json::json!({})).is_err());
        assert!(emit("Ok", &serde_json::json!({"a": 1})).is_ok());
    }
}
