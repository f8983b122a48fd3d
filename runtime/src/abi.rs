//! The host side of the `wasmesh` import module that the guest SDK calls: events,
//! progress, logs and checkpoints.
//!
//! The ABI (all pointers and lengths are i32 offsets into the guest's exported
//! `memory`):
//! - `emit(type_ptr, type_len, fields_ptr, fields_len) -> i32`: 0, or -1 when the type
//!   is not 1..=256 bytes of UTF-8 or the fields are not a JSON object.
//! - `progress(fraction: f64)`: clamped to `0.0..=1.0`; NaN is ignored.
//! - `log(level, ptr, len)`: level 0 debug, 1 info, 2 warn, 3 error.
//! - `checkpoint_save(ptr, len) -> i32`: 0.
//! - `checkpoint_load(ptr, cap) -> i64`: -1 when there is no checkpoint, else its length;
//!   the bytes are copied only when `cap` is at least that length.
//!
//! Going past an event, event-size or checkpoint-size cap traps the guest and ends the
//! run as `OutputExceeded`.

use std::sync::Arc;

use wasmtime::{Caller, Linker, Memory};

use crate::io::OutputLimitExceeded;
use crate::outcome::{Event, LogLevel, LogLine};
use crate::sandbox::{Ctx, RunObserver};

/// The import module name the guest SDK links against.
pub(crate) const MODULE: &str = "wasmesh";

/// Longest event type accepted.
const MAX_EVENT_TYPE: usize = 256;
/// Longest log line kept; the rest is cut so logs cannot carry bulk data.
const MAX_LOG_LINE: usize = 4096;

/// Per-run state behind the `wasmesh` imports.
#[derive(Default)]
pub(crate) struct GuestState {
    pub(crate) events: Vec<Event>,
    pub(crate) checkpoint_in: Option<Arc<[u8]>>,
    pub(crate) checkpoint_out: Option<Vec<u8>>,
    pub(crate) progress: Option<f32>,
    pub(crate) logs: Vec<LogLine>,
    pub(crate) logs_dropped: u64,
    pub(crate) exceeded: bool,
    pub(crate) observer: Option<Arc<dyn RunObserver>>,
    pub(crate) max_events: usize,
    pub(crate) max_event_bytes: usize,
    pub(crate) max_events_total_bytes: usize,
    /// Bytes of the events emitted so far.
    pub(crate) events_bytes: usize,
    pub(crate) max_checkpoint_bytes: usize,
    pub(crate) max_log_lines: usize,
}

impl GuestState {
    fn breach(&mut self, cap: usize) -> wasmtime::Error {
        self.exceeded = true;
        wasmtime::Error::new(OutputLimitExceeded(cap as u64))
    }
}

fn memory(caller: &mut Caller<'_, Ctx>) -> wasmtime::Result<Memory> {
    caller
        .get_export("memory")
        .and_then(|export| export.into_memory())
        .ok_or_else(|| {
            wasmtime::format_err!("the module calls `wasmesh` imports but exports no `memory`")
        })
}

/// Copies `len` bytes at `ptr` out of guest memory; out of bounds traps.
fn read(caller: &mut Caller<'_, Ctx>, ptr: i32, len: usize) -> wasmtime::Result<Vec<u8>> {
    let memory = memory(caller)?;
    let start = ptr as u32 as usize;
    start
        .checked_add(len)
        .and_then(|end| memory.data(&*caller).get(start..end))
        .map(<[u8]>::to_vec)
        .ok_or_else(|| wasmtime::format_err!("wasmesh import: guest pointer out of bounds"))
}

pub(crate) fn add_to_linker(linker: &mut Linker<Ctx>) -> wasmtime::Result<()> {
    linker.func_wrap(
        MODULE,
        "emit",
        |mut caller: Caller<'_, Ctx>,
         type_ptr: i32,
         type_len: i32,
         fields_ptr: i32,
         fields_len: i32| {
            let (type_len, fields_len) = (type_len as u32 as usize, fields_len as u32 as usize);
            let state = &mut caller.data_mut().guest;
            if state.events.len() >= state.max_events {
                let cap = state.max_events;
                return Err(state.breach(cap));
            }
            if type_len.saturating_add(fields_len) > state.max_event_bytes {
                let cap = state.max_event_bytes;
                return Err(state.breach(cap));
            }
            let total = state
                .events_bytes
                .saturating_add(type_len)
                .saturating_add(fields_len);
            if total > state.max_events_total_bytes {
                let cap = state.max_events_total_bytes;
                return Err(state.breach(cap));
            }
            state.events_bytes = total;
            let event_type = read(&mut caller, type_ptr, type_len)?;
            let fields = read(&mut caller, fields_ptr, fields_len)?;
            let Ok(event_type) = String::from_utf8(event_type) else {
                return Ok(-1);
            };
            if event_type.is_empty() || event_type.len() > MAX_EVENT_TYPE {
                return Ok(-1);
            }
            let fields = if fields.is_empty() {
                serde_json::Map::new()
            } else {
                match serde_json::from_slice::<serde_json::Value>(&fields) {
                    Ok(serde_json::Value::Object(map)) => map,
                    _ => return Ok(-1),
                }
            };
            let event = Event { event_type, fields };
            let state = &mut caller.data_mut().guest;
            if let Some(observer) = &state.observer {
                observer.event(&event);
            }
            state.events.push(event);
            Ok(0i32)
        },
    )?;

    linker.func_wrap(
        MODULE,
        "progress",
        |mut caller: Caller<'_, Ctx>, fraction: f64| {
            if fraction.is_nan() {
                return;
            }
            let fraction = fraction.clamp(0.0, 1.0) as f32;
            let state = &mut caller.data_mut().guest;
            state.progress = Some(fraction);
            if let Some(observer) = &state.observer {
                observer.progress(fraction);
            }
        },
    )?;

    linker.func_wrap(
        MODULE,
        "log",
        |mut caller: Caller<'_, Ctx>, level: i32, ptr: i32, len: i32| -> wasmtime::Result<()> {
            let bytes = read(&mut caller, ptr, (len as u32 as usize).min(MAX_LOG_LINE))?;
            let line = LogLine {
                level: LogLevel::from_abi(level),
                message: String::from_utf8_lossy(&bytes).into_owned(),
            };
            let state = &mut caller.data_mut().guest;
            if let Some(observer) = &state.observer {
                observer.log(&line);
            }
            if state.logs.len() < state.max_log_lines {
                state.logs.push(line);
            } else {
                state.logs_dropped += 1;
            }
            Ok(())
        },
    )?;

    linker.func_wrap(
        MODULE,
        "checkpoint_save",
        |mut caller: Caller<'_, Ctx>, ptr: i32, len: i32| -> wasmtime::Result<i32> {
            let len = len as u32 as usize;
            let state = &mut caller.data_mut().guest;
            if len > state.max_checkpoint_bytes {
                let cap = state.max_checkpoint_bytes;
                return Err(state.breach(cap));
            }
            let bytes = read(&mut caller, ptr, len)?;
            let state = &mut caller.data_mut().guest;
            if let Some(observer) = &state.observer {
                observer.checkpoint(&bytes);
            }
            state.checkpoint_out = Some(bytes);
            Ok(0)
        },
    )?;

    linker.func_wrap(
        MODULE,
        "checkpoint_load",
        |mut caller: Caller<'_, Ctx>, ptr: i32, cap: i32| -> wasmtime::Result<i64> {
            // The latest checkpoint saved in this run wins over the one handed in, so a
            // guest that saves and then loads sees its own state.
            let state = &caller.data().guest;
            let bytes: Arc<[u8]> = match (&state.checkpoint_out, &state.checkpoint_in) {
                (Some(out), _) => Arc::from(out.as_slice()),
                (None, Some(input)) => input.clone(),
                (None, None) => return Ok(-1),
            };
            if (cap as u32 as usize) >= bytes.len() {
                let memory = memory(&mut caller)?;
                memory
                    .write(&mut caller, ptr as u32 as usize, &bytes)
                    .map_err(|_| {
                        wasmtime::format_err!("wasmesh import: guest pointer out of bounds")
                    })?;
            }
            Ok(bytes.len() as i64)
        },
    )?;
    Ok(())
}
