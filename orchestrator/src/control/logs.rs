//! Guest logs gathered from every node, kept in a bounded ring per control
//! plane so `skiff logs` can read and follow them. They live in memory:
//! a restarted control plane starts with an empty log.

use crate::api::{GuestLine, LogEntry, LogsResponse};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;

/// Lines kept across all apps; older ones are dropped first.
pub const MAX_LINES: usize = 20_000;

/// The log ring.
pub struct LogRing {
    lines: Mutex<(VecDeque<LogEntry>, u64)>,
    appended: Notify,
}

impl Default for LogRing {
    /// Positions start from the clock, so a client following the log of a
    /// control plane that restarted does not skip the new lines.
    fn default() -> Self {
        let start = crate::clock::unix_ms() * 1000;
        LogRing {
            lines: Mutex::new((VecDeque::new(), start)),
            appended: Notify::new(),
        }
    }
}

impl LogRing {
    /// Appends `lines` shipped by `node`.
    pub fn append(&self, node: &str, lines: Vec<GuestLine>) {
        if lines.is_empty() {
            return;
        }
        let mut guard = self.lines.lock().expect("log ring lock");
        let (ring, next) = &mut *guard;
        for line in lines {
            *next += 1;
            ring.push_back(LogEntry {
                seq: *next,
                node: node.to_string(),
                line,
            });
            if ring.len() > MAX_LINES {
                ring.pop_front();
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
        component: Option<&str>,
        after: u64,
        wait: Option<Duration>,
    ) -> LogsResponse {
        let deadline = wait.map(|wait| tokio::time::Instant::now() + wait);
        loop {
            let appended = self.appended.notified();
            let response = self.snapshot(app, component, after);
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

    fn snapshot(&self, app: &str, component: Option<&str>, after: u64) -> LogsResponse {
        let guard = self.lines.lock().expect("log ring lock");
        let (ring, next) = &*guard;
        let lines = ring
            .iter()
            .filter(|entry| entry.seq > after && entry.line.app == app)
            .filter(|entry| component.is_none_or(|c| entry.line.component == c))
            .cloned()
            .collect();
        LogsResponse {
            lines,
            next: (*next).max(after),
        }
    }
}
