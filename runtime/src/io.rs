//! Captured stdout/stderr with a hard byte cap.
//!
//! wasmtime-wasi's `MemoryOutputPipe` either traps with an untyped error or reports a
//! closed stream when full, so a breach could not be told apart from other failures.
//! `CappedPipe` records the breach in a flag the sandbox reads after the run, which
//! turns it into `Outcome::OutputExceeded` without looking at any message.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// The trap raised when a guest writes past its output cap.
#[derive(Debug, thiserror::Error)]
#[error("output limit of {0} bytes exceeded")]
pub(crate) struct OutputLimitExceeded(pub u64);

#[derive(Debug)]
struct Inner {
    buffer: Mutex<BytesMut>,
    exceeded: AtomicBool,
    cap: u64,
}

/// An in-memory output stream that keeps at most `cap` bytes and traps the guest on a
/// write that would go past it.
#[derive(Clone, Debug)]
pub(crate) struct CappedPipe(Arc<Inner>);

impl CappedPipe {
    pub(crate) fn new(cap: u64) -> Self {
        CappedPipe(Arc::new(Inner {
            buffer: Mutex::new(BytesMut::new()),
            exceeded: AtomicBool::new(false),
            cap,
        }))
    }

    /// True once a write was refused for going past the cap.
    pub(crate) fn exceeded(&self) -> bool {
        self.0.exceeded.load(Ordering::Acquire)
    }

    /// What was written, within the cap.
    pub(crate) fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.buffer.lock().unwrap_or_else(|e| e.into_inner())).to_vec()
    }

    fn append(&self, bytes: &[u8]) -> Result<(), OutputLimitExceeded> {
        let mut buffer = self.0.buffer.lock().unwrap_or_else(|e| e.into_inner());
        if buffer.len() as u64 + bytes.len() as u64 > self.0.cap {
            self.0.exceeded.store(true, Ordering::Release);
            return Err(OutputLimitExceeded(self.0.cap));
        }
        buffer.extend_from_slice(bytes);
        Ok(())
    }
}

/// Permit size handed to the guest per write; the cap is checked on the write itself.
const PERMIT: usize = 64 << 10;

impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.append(&bytes)
            .map_err(|e| StreamError::Trap(wasmtime::Error::new(e)))
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CappedPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(
            self.append(buf)
                .map(|()| buf.len())
                .map_err(std::io::Error::other),
        )
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}
