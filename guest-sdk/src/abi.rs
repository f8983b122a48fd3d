//! The raw `wasmesh` host imports and their safe wrappers. On targets other than wasm32
//! the same calls are served by a thread-local stand-in, so job logic can be unit-tested
//! natively.

#[cfg(target_arch = "wasm32")]
mod imports {
    #[link(wasm_import_module = "wasmesh")]
    unsafe extern "C" {
        pub fn emit(
            type_ptr: *const u8,
            type_len: usize,
            fields_ptr: *const u8,
            fields_len: usize,
        ) -> i32;
        pub fn progress(fraction: f64);
        pub fn log(level: i32, ptr: *const u8, len: usize);
        pub fn checkpoint_save(ptr: *const u8, len: usize) -> i32;
        pub fn checkpoint_load(ptr: *mut u8, cap: usize) -> i64;
    }
}

/// Emits an event; false when the host refused it as malformed.
#[cfg(target_arch = "wasm32")]
pub(crate) fn emit(event_type: &str, fields: &[u8]) -> bool {
    // SAFETY: both slices are valid for their lengths for the duration of the call; the
    // host only reads them.
    unsafe {
        imports::emit(
            event_type.as_ptr(),
            event_type.len(),
            fields.as_ptr(),
            fields.len(),
        ) == 0
    }
}

#[cfg(target_arch = "wasm32")]
pub(crate) fn progress(fraction: f64) {
    // SAFETY: passes a plain float.
    unsafe { imports::progress(fraction) }
}

#[cfg(target_arch = "wasm32")]
pub(crate) fn log(level: i32, message: &str) {
    // SAFETY: the slice is valid for its length during the call; the host only reads it.
    unsafe { imports::log(level, message.as_ptr(), message.len()) }
}

#[cfg(target_arch = "wasm32")]
pub(crate) fn checkpoint_save(bytes: &[u8]) {
    // SAFETY: the slice is valid for its length during the call; the host only reads it.
    unsafe { imports::checkpoint_save(bytes.as_ptr(), bytes.len()) };
}

#[cfg(target_arch = "wasm32")]
pub(crate) fn checkpoint_load() -> Option<Vec<u8>> {
    // First ask for the length with an empty buffer, then fetch into one that fits.
    // SAFETY: a zero capacity makes the host write nothing.
    let len = unsafe { imports::checkpoint_load(core::ptr::null_mut(), 0) };
    if len < 0 {
        return None;
    }
    let mut buffer = vec![0u8; len as usize];
    // SAFETY: `buffer` is valid for writes of `buffer.len()` bytes, and the host writes
    // only when the capacity holds the whole checkpoint.
    let again = unsafe { imports::checkpoint_load(buffer.as_mut_ptr(), buffer.len()) };
    (again == len).then_some(buffer)
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::cell::RefCell;

    thread_local! {
        pub static CHECKPOINT: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn emit(event_type: &str, fields: &[u8]) -> bool {
    eprintln!(
        "[wasmesh event] {event_type} {}",
        String::from_utf8_lossy(fields)
    );
    !event_type.is_empty()
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn progress(fraction: f64) {
    eprintln!("[wasmesh progress] {fraction:.3}");
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn log(level: i32, message: &str) {
    eprintln!("[wasmesh log {level}] {message}");
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn checkpoint_save(bytes: &[u8]) {
    native::CHECKPOINT.with(|c| *c.borrow_mut() = Some(bytes.to_vec()));
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn checkpoint_load() -> Option<Vec<u8>> {
    native::CHECKPOINT.with(|c| c.borrow().clone())
}
