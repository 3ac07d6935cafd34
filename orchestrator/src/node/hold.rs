//! Requests held for a component scaled to zero: rather than refused, a
//! request for a component with `min = 0` and no replica anywhere waits
//! here while the control plane places one (it hears of the held
//! requests at once, as demand, and prefers this node), and is served as
//! soon as a replica is ready, here or on another node. Holding is
//! bounded: at most [`MAX_HELD`] requests per component on one node, each
//! for at most the node's hold limit (default [`HOLD_LIMIT`]); past either the answer is 503 with
//! `Retry-After`.

use super::NodeShared;
use super::routing::AppRoutes;
use bytes::Bytes;
use http_body::Body;
use skiff_runtime::invoke::{Answer, invoke, retry_shortly};
use skiff_runtime::mesh::Inbound;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmtime_wasi_http::Error as HttpError;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The longest a request is held waiting for a replica, unless the node
/// is told otherwise (`--hold-limit`).
pub const HOLD_LIMIT: Duration = Duration::from_secs(30);

/// The most requests held for one component on one node.
pub(crate) const MAX_HELD: u32 = 1_000;

/// `(app, component)`.
type Key = (String, String);

/// The requests held now, by component.
#[derive(Default)]
pub(crate) struct Holds {
    counts: Mutex<HashMap<Key, u32>>,
}

/// One request held; it counts until dropped.
pub(crate) struct Hold<'a> {
    holds: &'a Holds,
    key: Key,
}

impl Holds {
    /// Holds one more request for `app`/`component`, unless
    /// [`MAX_HELD`] already are.
    fn enter(&self, app: &str, component: &str) -> Option<Hold<'_>> {
        let key = (app.to_string(), component.to_string());
        let mut counts = self.counts.lock().expect("holds lock");
        let count = counts.entry(key.clone()).or_default();
        if *count >= MAX_HELD {
            return None;
        }
        *count += 1;
        Some(Hold { holds: self, key })
    }

    /// The requests held now, by component (none listed has none).
    pub(crate) fn counts(&self) -> HashMap<Key, u32> {
        self.counts.lock().expect("holds lock").clone()
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        let mut counts = self.holds.counts.lock().expect("holds lock");
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// Holds `request` for `app`'s `component`, which runs no replica, until
/// one is ready: served here when it is placed here, sent on to the node
/// it is placed on otherwise; 503 with `Retry-After` when too many are
/// held or none is ready within the node's hold limit.
pub(crate) async fn until_ready<B>(
    node: &Arc<NodeShared>,
    app: &AppRoutes,
    component: &str,
    request: hyper::Request<B>,
    inbound: Inbound,
) -> Answer
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<HttpError> + Into<BoxError>,
{
    let name = app.name.as_str();
    let Some(hold) = node.holds.enter(name, component) else {
        tracing::warn!(
            app = name,
            component,
            reason = "hold_full",
            "request refused: {MAX_HELD} requests already held for a replica"
        );
        return retry_shortly(format!(
            "app \"{name}\" component \"{component}\" is starting and {MAX_HELD} requests already wait for it here; retry shortly\n"
        ));
    };
    // The control plane hears of the held request now.
    node.urgent.notify_one();
    let limit = node.config.hold_limit;
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        // Registered before looking, so a change in between is not missed.
        let routed = node.routing_changed.notified();
        let settled = node.replicas.settled();
        if let Some((local, sink)) =
            node.replicas
                .serving(name, component, super::replicas::Pick::Any)
        {
            drop(hold);
            return invoke(&local, request, &sink, inbound).await;
        }
        // Placed here, and its load failed: no use waiting for the retry.
        if node.replicas.failed(name, component) {
            tracing::warn!(
                app = name,
                component,
                reason = "load_failed",
                "held request refused: the replica placed here failed to load"
            );
            return retry_shortly(format!(
                "app \"{name}\" component \"{component}\" failed to start; see `skiff ps {name}`\n"
            ));
        }
        let current = node.routing.read().expect("routing lock").app(name);
        match current {
            // The app was deleted while the request waited.
            None => {
                return retry_shortly(format!(
                    "app \"{name}\" was removed while this request waited for it\n"
                ));
            }
            // A new version dropped the component: answered as any
            // request for it now is. (One pinned while this waits keeps
            // waiting: its replica is coming.)
            Some(current) if !current.has_component(component) => {
                drop(hold);
                return Box::pin(super::reach::reach(
                    node, &current, component, request, inbound,
                ))
                .await;
            }
            Some(current)
                if current
                    .endpoints(component)
                    .iter()
                    .any(|e| e.node != node.config.name) =>
            {
                drop(hold);
                return Box::pin(super::reach::reach(
                    node, &current, component, request, inbound,
                ))
                .await;
            }
            Some(_) => {}
        }
        tokio::select! {
            () = routed => {}
            () = settled => {}
            () = tokio::time::sleep_until(deadline) => {
                tracing::warn!(
                    app = name,
                    component,
                    reason = "hold_timeout",
                    "request refused: no replica was ready within {limit:?}"
                );
                return retry_shortly(format!(
                    "app \"{name}\" component \"{component}\" had no replica ready within {} of this request; see `skiff events {name}` and `skiff ps {name}`\n",
                    humantime::format_duration(limit)
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_count_until_dropped_and_stop_at_the_bound() {
        let holds = Holds::default();
        let key = ("shop".to_string(), "api".to_string());
        let mut held: Vec<_> = (0..MAX_HELD)
            .map(|_| holds.enter("shop", "api").expect("under the bound"))
            .collect();
        assert!(holds.enter("shop", "api").is_none());
        assert!(holds.enter("shop", "web").is_some());
        assert_eq!(holds.counts()[&key], MAX_HELD);
        held.truncate(1);
        assert_eq!(holds.counts()[&key], 1);
        held.clear();
        assert!(!holds.counts().contains_key(&key));
    }
}
