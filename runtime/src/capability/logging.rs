//! Guest logs: an instance's stdout and stderr, split into lines and handed
//! to the node's [`LogSink`] under the component's name.

use super::{Capability, PrepareContext};
use crate::instance::InstanceBuilder;
use crate::manifest::ComponentSpec;
use crate::mesh::Span;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Longest line kept whole; longer output is split so that a guest writing
/// without newlines cannot grow host memory.
const MAX_LINE: usize = 16 * 1024;

/// Lines one instance may log, stdout and stderr together; past this its
/// output is dropped after one line saying so, so a guest printing in a
/// loop cannot flood the node's logs.
pub const MAX_LINES_PER_INSTANCE: u32 = 1000;

/// Bytes one instance may log, stdout and stderr together: without it,
/// 1000 lines of [`MAX_LINE`] bytes would be 16 MiB per request.
pub const MAX_BYTES_PER_INSTANCE: usize = 1 << 20;

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
    /// Records one line (without its newline) written by `component`
    /// while serving a request of trace `trace_id` (32 hex digits).
    fn line(&self, component: &str, stream: LogStream, line: &str, trace_id: &str);
}

/// Writes guest lines to the process's stderr as `[component] line`, with
/// control characters escaped.
pub struct StderrSink;

impl LogSink for StderrSink {
    fn line(&self, component: &str, _stream: LogStream, line: &str, _trace_id: &str) {
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
        let budget = Arc::new(Budget::default());
        let span = instance.span();
        instance.wasi.stdout(GuestOutput {
            component: self.component.clone(),
            stream: LogStream::Stdout,
            sink: sink.clone(),
            budget: budget.clone(),
            span,
        });
        instance.wasi.stderr(GuestOutput {
            component: self.component.clone(),
            stream: LogStream::Stderr,
            sink,
            budget,
            span,
        });
        Ok(())
    }
}

/// What an instance may still log, shared by its stdout and stderr.
struct Budget(Mutex<Left>);

struct Left {
    lines: u32,
    bytes: usize,
    /// Whether the line saying the rest is dropped was written.
    spent: bool,
}

/// What to do with one line.
#[derive(Debug, PartialEq)]
enum Verdict {
    Log,
    /// Log the line saying the rest is dropped, instead of this one.
    SayDropped,
    Drop,
}

impl Default for Budget {
    fn default() -> Budget {
        Budget(Mutex::new(Left {
            lines: MAX_LINES_PER_INSTANCE,
            bytes: MAX_BYTES_PER_INSTANCE,
            spent: false,
        }))
    }
}

impl Budget {
    /// Charges a line of `len` bytes, if the budget still holds it.
    fn charge(&self, len: usize) -> Verdict {
        let mut left = self.0.lock().expect("log budget lock");
        if left.spent {
            return Verdict::Drop;
        }
        if left.lines == 0 || left.bytes < len {
            left.spent = true;
            return Verdict::SayDropped;
        }
        left.lines -= 1;
        left.bytes -= len;
        Verdict::Log
    }
}

/// One guest output stream.
struct GuestOutput {
    component: Arc<str>,
    stream: LogStream,
    sink: Arc<dyn LogSink>,
    budget: Arc<Budget>,
    /// The request the instance serves: its lines are tagged with the trace.
    span: Span,
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
            trace_id: self.span.trace_id(),
            pending: Vec::new(),
        })
    }
}

/// Buffers bytes until a newline, then emits the line.
struct LineWriter {
    component: Arc<str>,
    stream: LogStream,
    sink: Arc<dyn LogSink>,
    budget: Arc<Budget>,
    trace_id: String,
    pending: Vec<u8>,
}

impl LineWriter {
    fn emit(&mut self, upto: usize) {
        match self.budget.charge(upto) {
            Verdict::Log => {}
            Verdict::SayDropped => {
                self.pending.drain(..upto);
                self.sink.line(
                    &self.component,
                    self.stream,
                    &format!(
                        "(log limit of {MAX_LINES_PER_INSTANCE} lines or {} MiB reached; further output of this instance dropped)",
                        MAX_BYTES_PER_INSTANCE >> 20
                    ),
                    &self.trace_id,
                );
                return;
            }
            Verdict::Drop => {
                self.pending.drain(..upto);
                return;
            }
        }
        let line: Vec<u8> = self.pending.drain(..upto).collect();
        let text = String::from_utf8_lossy(&line);
        let text = text.strip_suffix('\n').unwrap_or(&text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        self.sink
            .line(&self.component, self.stream, text, &self.trace_id);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Collect(Mutex<Vec<(LogStream, String)>>);

    impl LogSink for Collect {
        fn line(&self, _component: &str, stream: LogStream, line: &str, _trace_id: &str) {
            self.0.lock().unwrap().push((stream, line.to_string()));
        }
    }

    /// Writes `lines` numbered lines into one instance's stdout and stderr
    /// in turn; returns what reached the sink.
    fn log(lines: u32) -> Vec<(LogStream, String)> {
        let sink = Arc::new(Collect::default());
        let budget = Arc::new(Budget::default());
        let writer = |stream| LineWriter {
            component: Arc::from("c"),
            stream,
            sink: sink.clone(),
            budget: budget.clone(),
            trace_id: String::new(),
            pending: Vec::new(),
        };
        let mut out = writer(LogStream::Stdout);
        let mut err = writer(LogStream::Stderr);
        for i in 1..=lines {
            let w = if i % 2 == 1 { &mut out } else { &mut err };
            w.push(format!("line {i}\n").as_bytes());
        }
        drop((out, err));
        sink.0.lock().unwrap().clone()
    }

    #[test]
    fn an_instance_logs_its_first_thousand_lines_then_one_saying_the_rest_is_dropped() {
        let lines = log(1500);
        assert_eq!(lines.len(), MAX_LINES_PER_INSTANCE as usize + 1);
        for (i, (_, line)) in lines[..1000].iter().enumerate() {
            assert_eq!(line, &format!("line {}", i + 1));
        }
        assert_eq!(
            lines[1].0,
            LogStream::Stderr,
            "both streams share the budget"
        );
        assert_eq!(
            lines[1000].1,
            "(log limit of 1000 lines or 1 MiB reached; further output of this instance dropped)"
        );
    }

    #[test]
    fn a_guest_writing_long_lines_keeps_one_mebibyte_then_the_notice() {
        let sink = Arc::new(Collect::default());
        let mut writer = LineWriter {
            component: Arc::from("c"),
            stream: LogStream::Stdout,
            sink: sink.clone(),
            budget: Arc::new(Budget::default()),
            trace_id: String::new(),
            pending: Vec::new(),
        };
        // Lines of 16 KiB with their newline: 64 of them fill 1 MiB.
        let line = format!("{}\n", "x".repeat(MAX_LINE - 1));
        for _ in 0..100 {
            writer.push(line.as_bytes());
        }
        drop(writer);
        let lines = sink.0.lock().unwrap().clone();
        assert_eq!(lines.len(), 65, "64 lines, then the notice");
        assert!(lines[..64].iter().all(|(_, l)| l.len() == MAX_LINE - 1));
        assert!(
            lines[64]
                .1
                .starts_with("(log limit of 1000 lines or 1 MiB reached")
        );
    }

    #[test]
    fn an_instance_logging_long_lines_stops_at_its_byte_budget() {
        let budget = Budget::default();
        let long = MAX_LINE;
        let fit = MAX_BYTES_PER_INSTANCE / long;
        for _ in 0..fit {
            assert_eq!(budget.charge(long), Verdict::Log);
        }
        assert_eq!(budget.charge(long), Verdict::SayDropped);
        assert_eq!(budget.charge(1), Verdict::Drop, "nothing after the notice");
    }

    #[test]
    fn an_instance_at_exactly_the_limit_loses_nothing() {
        let lines = log(MAX_LINES_PER_INSTANCE);
        assert_eq!(lines.len(), 1000);
        assert_eq!(lines[999].1, "line 1000");
    }
}
