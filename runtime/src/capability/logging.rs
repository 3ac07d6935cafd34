//! Guest logs: an instance's stdout and stderr, split into lines and handed
//! to the node's [`LogSink`] under the component's name.

use super::{Capability, PrepareContext};
use crate::instance::InstanceBuilder;
use crate::manifest::ComponentSpec;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Longest line kept whole; longer output is split so that a guest writing
/// without newlines cannot grow host memory.
const MAX_LINE: usize = 16 * 1024;

/// Lines one instance may log; past this its output is dropped, so a guest
/// printing in a loop cannot flood the node's logs.
pub const MAX_LINES_PER_INSTANCE: u32 = 1000;

/// Which guest stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    /// The guest's stdout.
    Stdout,
    /// The guest's stderr.
    Stderr,
}

/// Where guest log lines go.
pub trait LogSink: Send + Sync {
    /// Records one line (without its newline) written by `component`.
    fn line(&self, component: &str, stream: LogStream, line: &str);
}

/// Writes guest lines to the process's stderr as `[component] line`, with
/// control characters escaped.
pub struct StderrSink;

impl LogSink for StderrSink {
    fn line(&self, component: &str, _stream: LogStream, line: &str) {
        eprintln!("[{component}] {}", crate::printable::printable(line));
    }
}

/// The log capability of one component.
pub struct GuestLogs {
    component: Arc<str>,
}

impl GuestLogs {
    /// Logging needs no configuration; every component may log.
    ///
    /// # Errors
    ///
    /// None today; the signature matches the other capabilities.
    pub fn prepare(_spec: &ComponentSpec, cx: &PrepareContext<'_>) -> Result<GuestLogs, String> {
        Ok(GuestLogs {
            component: Arc::from(cx.component.as_str()),
        })
    }
}

impl Capability for GuestLogs {
    fn grant(&self, instance: &mut InstanceBuilder) -> Result<(), String> {
        let sink = instance.log_sink.clone();
        let budget = Arc::new(AtomicU32::new(MAX_LINES_PER_INSTANCE));
        instance.wasi.stdout(GuestOutput {
            component: self.component.clone(),
            stream: LogStream::Stdout,
            sink: sink.clone(),
            budget: budget.clone(),
        });
        instance.wasi.stderr(GuestOutput {
            component: self.component.clone(),
            stream: LogStream::Stderr,
            sink,
            budget,
        });
        Ok(())
    }
}

/// One guest output stream.
struct GuestOutput {
    component: Arc<str>,
    stream: LogStream,
    sink: Arc<dyn LogSink>,
    /// Lines the instance may still log, shared by its stdout and stderr.
    budget: Arc<AtomicU32>,
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            component: self.component.clone(),
            stream: self.stream,
            sink: self.sink.clone(),
            budget: self.budget.clone(),
            pending: Vec::new(),
        })
    }
}

/// Buffers bytes until a newline, then emits the line.
struct LineWriter {
    component: Arc<str>,
    stream: LogStream,
    sink: Arc<dyn LogSink>,
    budget: Arc<AtomicU32>,
    pending: Vec<u8>,
}

impl LineWriter {
    fn emit(&mut self, upto: usize) {
        let line: Vec<u8> = self.pending.drain(..upto).collect();
        let left = self
            .budget
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        match left {
            Err(_) => return,
            Ok(1) => {
                self.sink.line(
                    &self.component,
                    self.stream,
                    &format!("(log limit of {MAX_LINES_PER_INSTANCE} lines reached; further output of this instance dropped)"),
                );
                return;
            }
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.strip_suffix('\n').unwrap_or(&text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        self.sink.line(&self.component, self.stream, text);
    }

    fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        while let Some(newline) = self.pending.iter().position(|&b| b == b'\n') {
            self.emit(newline + 1);
        }
        while self.pending.len() >= MAX_LINE {
            self.emit(MAX_LINE);
        }
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if !self.pending.is_empty() {
            let len = self.pending.len();
            self.emit(len);
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            let len = self.pending.len();
            self.emit(len);
        }
    }
}
