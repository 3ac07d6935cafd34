//! Guest logs gathered from every node, kept in a bounded ring per control
//! plane so `skiff logs` can read and follow them. They live in memory:
//! a restarted control plane starts with an empty log.

use crate::api::{GuestLine, LogEntry, LogsResponse, MAX_LOG_LINES_PER_SYNC};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;

/// Lines kept of one app; its older ones are dropped first, so one app's
/// flood never evicts another's lines.
pub const MAX_LINES_PER_APP: usize = 5_000;
/// Bytes of lines kept of one app.
pub const MAX_BYTES_PER_APP: usize = 8 << 20;
/// Bytes of lines kept across all apps; past it, the oldest lines of the
/// app holding the most go first.
pub const MAX_BYTES: usize = 32 << 20;

/// The lines of one heartbeat from `node`, bounded: each cut to
/// [`crate::api::MAX_LOG_LINE_BYTES`], and past
/// [`MAX_LOG_LINES_PER_SYNC`] lines the rest dropped and counted, with
/// one line per component saying how many of its lines were dropped. A
/// node that ships as it should never reaches either bound.
pub fn bounded(node: &str, lines: impl Iterator<Item = GuestLine>) -> Vec<GuestLine> {
    let mut kept = Vec::new();
    let mut cut = 0usize;
    let mut dropped: BTreeMap<(String, String), u64> = BTreeMap::new();
    for mut line in lines {
        if kept.len() < MAX_LOG_LINES_PER_SYNC {
            if line.stream != "stdout" && line.stream != "stderr" {
                line.stream = "stderr".to_string();
            }
            cut += usize::from(line.clip());
            if !is_trace_id(&line.trace_id) {
                // Not what a node makes: nothing to filter by.
                line.trace_id.clear();
            }
            kept.push(line);
        } else {
            *dropped.entry((line.app, line.component)).or_default() += 1;
        }
    }
    if cut > 0 {
        tracing::warn!(node, cut, "log lines longer than the limit were cut");
    }
    let unix_ms = crate::clock::unix_ms();
    for ((app, component), count) in dropped {
        tracing::warn!(node, app, component, count, "log lines dropped");
        kept.push(GuestLine {
            app,
            component,
            stream: "stderr".to_string(),
            line: format!(
                "({count} log lines dropped: node {node:?} sent more than {MAX_LOG_LINES_PER_SYNC} in one heartbeat)"
            ),
            unix_ms,
            trace_id: String::new(),
        });
    }
    kept
}

/// Which of an app's lines to read.
#[derive(Debug, Default)]
pub struct LogFilter<'a> {
    /// Only this component's.
    pub component: Option<&'a str>,
    /// Only those written while serving this trace.
    pub trace_id: Option<&'a str>,
}

/// Whether `text` is a trace id: 32 lower-case hex digits.
fn is_trace_id(text: &str) -> bool {
    text.len() == 32
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The log ring: one bounded ring per app, and a bound on them all.
pub struct LogRing {
    inner: Mutex<Rings>,
    appended: Notify,
}

/// The rings, the last position given, and the bytes of all lines.
struct Rings {
    apps: BTreeMap<String, AppLines>,
    next: u64,
    bytes: usize,
}

/// One app's lines, oldest first, and their bytes.
#[derive(Default)]
struct AppLines {
    lines: VecDeque<LogEntry>,
    bytes: usize,
}

impl Default for LogRing {
    /// Positions start from the clock, so a client following the log of a
    /// control plane that restarted does not skip the new lines.
    fn default() -> Self {
        LogRing {
            inner: Mutex::new(Rings {
                apps: BTreeMap::new(),
                next: crate::clock::unix_ms() * 1000,
                bytes: 0,
            }),
            appended: Notify::new(),
        }
    }
}

impl Rings {
    /// Drops the oldest line of `app`; false when it has none.
    fn drop_oldest(&mut self, app: &str) -> bool {
        let Some(ring) = self.apps.get_mut(app) else {
            return false;
        };
        let Some(oldest) = ring.lines.pop_front() else {
            return false;
        };
        let freed = size(&oldest.line);
        ring.bytes -= freed;
        self.bytes -= freed;
        if ring.lines.is_empty() {
            self.apps.remove(app);
        }
        true
    }
}

impl LogRing {
    /// Appends `lines` shipped by `node`.
    pub fn append(&self, node: &str, lines: Vec<GuestLine>) {
        if lines.is_empty() {
            return;
        }
        let mut guard = self.inner.lock().expect("log ring lock");
        let rings = &mut *guard;
        for line in lines {
            rings.next += 1;
            let bytes = size(&line);
            let app = line.app.clone();
            rings.bytes += bytes;
            let ring = rings.apps.entry(app.clone()).or_default();
            ring.bytes += bytes;
            ring.lines.push_back(LogEntry {
                seq: rings.next,
                node: node.to_string(),
                line,
            });
            while rings
                .apps
                .get(&app)
                .is_some_and(|r| r.lines.len() > MAX_LINES_PER_APP || r.bytes > MAX_BYTES_PER_APP)
                && rings.drop_oldest(&app)
            {}
            while rings.bytes > MAX_BYTES {
                let largest = rings
                    .apps
                    .iter()
                    .max_by_key(|(_, r)| r.bytes)
                    .map(|(name, _)| name.clone());
                if !largest.is_some_and(|name| rings.drop_oldest(&name)) {
                    break;
                }
            }
        }
        drop(guard);
        self.appended.notify_waiters();
    }

    /// Lines of `app` (and `component`, if given) after `after`; when there
    /// are none and `wait` is set, waits up to `wait` for some.
    pub async fn read(
        &self,
        app: &str,
        filter: &LogFilter<'_>,
        after: u64,
        wait: Option<Duration>,
    ) -> LogsResponse {
        let deadline = wait.map(|wait| tokio::time::Instant::now() + wait);
        loop {
            let appended = self.appended.notified();
            let response = self.snapshot(app, filter, after);
            let Some(deadline) = deadline else {
                return response;
            };
            if !response.lines.is_empty()
                || tokio::time::timeout_at(deadline, appended).await.is_err()
            {
                return response;
            }
        }
    }

    fn snapshot(&self, app: &str, filter: &LogFilter<'_>, after: u64) -> LogsResponse {
        let guard = self.inner.lock().expect("log ring lock");
        let lines = guard
            .apps
            .get(app)
            .map(|ring| {
                ring.lines
                    .iter()
                    .filter(|entry| entry.seq > after)
                    .filter(|entry| filter.component.is_none_or(|c| entry.line.component == c))
                    .filter(|entry| filter.trace_id.is_none_or(|t| entry.line.trace_id == t))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        LogsResponse {
            lines,
            next: guard.next.max(after),
        }
    }
}

/// Roughly what a line costs in the ring, bytes.
fn size(line: &GuestLine) -> usize {
    line.line.len() + line.app.len() + line.component.len() + line.stream.len() + 64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MAX_LOG_LINE_BYTES;

    fn line(app: &str, component: &str, text: String) -> GuestLine {
        GuestLine {
            app: app.to_string(),
            component: component.to_string(),
            stream: "stdout".to_string(),
            line: text,
            unix_ms: 1,
            trace_id: String::new(),
        }
    }

    #[test]
    fn a_flood_of_lines_is_bounded_and_counted() {
        let flood = (0..100_000).map(|i| {
            let component = if i % 2 == 0 { "a" } else { "b" };
            line("web", component, format!("line {i}"))
        });
        let kept = bounded("node-1", flood);
        assert_eq!(kept.len(), MAX_LOG_LINES_PER_SYNC + 2);
        assert_eq!(kept[MAX_LOG_LINES_PER_SYNC - 1].line, "line 1999");
        let markers: Vec<(&str, &str)> = kept[MAX_LOG_LINES_PER_SYNC..]
            .iter()
            .map(|l| (l.component.as_str(), l.line.as_str()))
            .collect();
        assert_eq!(
            markers,
            [
                (
                    "a",
                    "(49000 log lines dropped: node \"node-1\" sent more than 2000 in one heartbeat)"
                ),
                (
                    "b",
                    "(49000 log lines dropped: node \"node-1\" sent more than 2000 in one heartbeat)"
                ),
            ]
        );
    }

    #[tokio::test]
    async fn lines_are_read_by_trace_and_a_node_cannot_tag_them_with_anything_else() {
        let traced = "0af7651916cd43dd8448eb211c80319c";
        let mut lines = Vec::new();
        for (text, trace) in [("a", traced), ("b", ""), ("c", "\u{1b}[31mnot-a-trace")] {
            let mut line = line("shop", "api", text.to_string());
            line.trace_id = trace.to_string();
            lines.push(line);
        }
        let kept = bounded("node-1", lines.into_iter());
        assert_eq!(kept[2].trace_id, "", "a malformed trace id is dropped");
        let ring = LogRing::default();
        ring.append("node-1", kept);
        let filter = LogFilter {
            component: None,
            trace_id: Some(traced),
        };
        let read = ring.read("shop", &filter, 0, None).await;
        let texts: Vec<&str> = read.lines.iter().map(|e| e.line.line.as_str()).collect();
        assert_eq!(texts, ["a"]);
    }

    #[test]
    fn a_long_line_is_cut_and_says_so() {
        let huge = "é".repeat(5 << 20);
        let kept = bounded("node-1", std::iter::once(line("web", "a", huge)));
        let cut = &kept[0].line;
        assert!(cut.len() <= MAX_LOG_LINE_BYTES, "{}", cut.len());
        assert!(cut.starts_with("éé"));
        assert!(cut.ends_with(" bytes cut)"), "{}", &cut[cut.len() - 40..]);
        // A line within the bound is kept as it is.
        let kept = bounded("node-1", std::iter::once(line("web", "a", "ok".into())));
        assert_eq!(kept[0].line, "ok");
    }

    #[test]
    fn the_ring_keeps_a_bounded_number_of_bytes() {
        let ring = LogRing::default();
        // Many apps, each flooding: the total stays bounded, and the
        // counts stay true.
        for i in 0..(MAX_BYTES / MAX_LOG_LINE_BYTES + 100) {
            let mut big = line(
                &format!("app-{}", i % 7),
                "a",
                "x".repeat(MAX_LOG_LINE_BYTES),
            );
            big.clip();
            ring.append("node-1", vec![big]);
        }
        let guard = ring.inner.lock().unwrap();
        assert!(guard.bytes <= MAX_BYTES);
        let counted: usize = guard
            .apps
            .values()
            .flat_map(|r| &r.lines)
            .map(|e| size(&e.line))
            .sum();
        assert_eq!(counted, guard.bytes);
        for ring in guard.apps.values() {
            assert!(ring.bytes <= MAX_BYTES_PER_APP);
            assert_eq!(
                ring.bytes,
                ring.lines.iter().map(|e| size(&e.line)).sum::<usize>()
            );
        }
    }

    #[tokio::test]
    async fn one_apps_flood_does_not_evict_another_apps_lines() {
        let ring = LogRing::default();
        ring.append(
            "node-1",
            vec![line("quiet", "a", "the only line".to_string())],
        );
        for _ in 0..(MAX_LINES_PER_APP * 3) {
            ring.append("node-2", vec![line("loud", "a", "spam".to_string())]);
        }
        let quiet = ring.read("quiet", &LogFilter::default(), 0, None).await;
        assert_eq!(quiet.lines.len(), 1);
        assert_eq!(quiet.lines[0].line.line, "the only line");
        let loud = ring.read("loud", &LogFilter::default(), 0, None).await;
        assert_eq!(loud.lines.len(), MAX_LINES_PER_APP);
    }
}
