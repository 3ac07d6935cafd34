//! The control plane's recent scheduling and scaling decisions (`skiff
//! events`): where each replica went and by which scores, why one cannot
//! be placed, each autoscaling change and its reason, components that
//! fail to load, nodes going down and coming back, and each step of a
//! rollout (started, a canary step, done, rolled back with the evidence).
//! Kept in memory, the newest [`KEPT`]; each is also a log line of the
//! control plane.

use crate::api::EventView;
use std::collections::VecDeque;

/// Events kept; older ones are dropped.
pub(crate) const KEPT: usize = 2_000;

/// What kind of decision an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum EventKind {
    /// The autoscaler changed a component's replica count.
    Scaled,
    /// `skiff scale` pinned a component or set its autoscaling bounds.
    ScaleSet,
    /// A replica was placed on a node.
    Placed,
    /// A replica moved off a draining or down node.
    Moved,
    /// A replica cannot be placed (a new reason).
    Unschedulable,
    /// A node stopped heartbeating.
    NodeDown,
    /// A node down came back.
    NodeBack,
    /// A node reported that a component failed to load.
    LoadFailed,
    /// A deploy started moving an app to a new version.
    RolloutStarted,
    /// A canary took a larger share of requests, or was promoted.
    RolloutStep,
    /// Every replica runs the new version (and, later, its watch ended).
    RolloutDone,
    /// A new version was rolled back, by itself or by hand.
    RolledBack,
}

impl EventKind {
    fn as_str(self) -> &'static str {
        match self {
            EventKind::Scaled => "scaled",
            EventKind::ScaleSet => "scale_set",
            EventKind::Placed => "placed",
            EventKind::Moved => "moved",
            EventKind::Unschedulable => "unschedulable",
            EventKind::NodeDown => "node_down",
            EventKind::NodeBack => "node_back",
            EventKind::LoadFailed => "load_failed",
            EventKind::RolloutStarted => "rollout_started",
            EventKind::RolloutStep => "rollout_step",
            EventKind::RolloutDone => "rollout_done",
            EventKind::RolledBack => "rolled_back",
        }
    }
}

/// The newest events, oldest first.
#[derive(Debug, Default)]
pub(crate) struct EventLog {
    events: VecDeque<EventView>,
    next: u64,
}

impl EventLog {
    /// Records an event about `workload` (`(app, component)`), if any.
    pub(crate) fn record(
        &mut self,
        kind: EventKind,
        workload: Option<(&str, &str)>,
        message: String,
    ) {
        self.next += 1;
        if self.events.len() == KEPT {
            self.events.pop_front();
        }
        self.events.push_back(EventView {
            seq: self.next,
            unix_ms: crate::clock::unix_ms(),
            kind: kind.as_str().to_string(),
            app: workload.map(|(app, _)| app.to_string()),
            component: workload.map(|(_, component)| component.to_string()),
            message,
        });
    }

    /// Records an event about app `app` as a whole.
    pub(crate) fn record_app(&mut self, kind: EventKind, app: &str, message: String) {
        self.record(kind, Some((app, "")), message);
        if let Some(event) = self.events.back_mut() {
            event.component = None;
        }
    }

    /// Events after `after` (a `seq`), of `app` when given, oldest first.
    pub(crate) fn read(&self, app: Option<&str>, after: u64) -> Vec<EventView> {
        // Sequence numbers are consecutive: skip straight to `after`.
        let first = self.events.front().map_or(0, |e| e.seq);
        let skip = after.saturating_sub(first.saturating_sub(1));
        self.events
            .iter()
            .skip(usize::try_from(skip).unwrap_or(usize::MAX))
            .filter(|e| app.is_none_or(|app| e.app.as_deref() == Some(app)))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_after_a_cursor_by_app_and_keeps_only_the_newest() {
        let mut log = EventLog::default();
        for i in 0..KEPT + 10 {
            let app = if i % 2 == 0 { "shop" } else { "blog" };
            log.record(EventKind::Scaled, Some((app, "api")), format!("{i}"));
        }
        let all = log.read(None, 0);
        assert_eq!(all.len(), KEPT);
        assert_eq!(all[0].seq, 11);
        let after = log.read(None, KEPT as u64);
        assert_eq!(after.len(), 10);
        assert_eq!(after[0].seq, KEPT as u64 + 1);
        let shop = log.read(Some("shop"), 0);
        assert_eq!(shop.len(), KEPT / 2);
        assert!(shop.iter().all(|e| e.app.as_deref() == Some("shop")));
        assert!(log.read(None, u64::MAX).is_empty());
    }
}
