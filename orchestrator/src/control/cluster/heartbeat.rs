//! Heartbeats: what a node reports taken into the live state, the
//! heartbeat held while nothing changes for the node, and the answer with
//! what changed for it; and what a node's lost connection says.

use super::Refused;
use super::members::not_a_member;
use crate::api::{LoadState, SharedJson, SyncRequest, SyncResponse};
use crate::control::Shared;
use crate::mesh::NodeCert;
use crate::state::NodeRecord;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// A heartbeat being held. While any is, the node is known to be
/// listening. If the handler is dropped before answering (the connection
/// closed under it), the node has lost its connection, unless a newer
/// heartbeat from it already arrived.
struct HeldHeartbeat<'a> {
    shared: &'a Shared,
    node: &'a str,
    heartbeat: u64,
    armed: bool,
}

impl<'a> HeldHeartbeat<'a> {
    fn hold(shared: &'a Shared, node: &'a str, heartbeat: u64) -> HeldHeartbeat<'a> {
        shared.with_node(node, |entry| {
            entry.holding += 1;
            // A connection that closed while this heartbeat was arriving
            // says nothing: the node is here.
            if entry.heartbeats == heartbeat {
                entry.connection_lost = None;
            }
        });
        HeldHeartbeat {
            shared,
            node,
            heartbeat,
            armed: true,
        }
    }
}

impl Drop for HeldHeartbeat<'_> {
    fn drop(&mut self) {
        let cut_short = self.armed;
        self.shared.with_node(self.node, |node| {
            node.holding = node.holding.saturating_sub(1);
            if cut_short && node.heartbeats == self.heartbeat {
                node.connection_lost = Some(Instant::now());
                self.shared.wake.notify_one();
            }
        });
    }
}

/// A node's connection closed. Unless one of its heartbeats is being held
/// on another connection, it may be gone: if it does not heartbeat again
/// soon, the controller marks it down (a killed node closes its sockets,
/// so this is much sooner than `down_after`).
pub(crate) fn connection_closed(shared: &Shared, node: &NodeCert) {
    shared.with_node(&node.name, |entry| {
        // A certificate of an earlier join says nothing about this one.
        if entry.holding == 0 && entry.record.incarnation == node.incarnation {
            entry.connection_lost = Some(Instant::now());
            shared.wake.notify_one();
        }
    });
}

/// What a node learns from its heartbeat, once taken.
pub(crate) struct Taken {
    /// The node's number of this heartbeat.
    heartbeat: u64,
    /// The desired-state version and run the node applied, as it said.
    version: u64,
    epoch: u64,
    /// Whether its status was taken (else it is asked for all of it).
    status_known: bool,
    /// The node's number of the status held for it.
    status_seq: Option<u64>,
    /// The labels and memory it is placed by.
    placed_by: (std::collections::BTreeMap<String, String>, u64),
    /// Signalled when the node has news to send.
    news: Arc<Notify>,
    /// The digest of the TLS bundle the node holds, and whether it serves
    /// HTTPS.
    tls: (String, bool),
    /// Whether the node lacks the TLS bundle meant for it and is due to
    /// be sent it (see [`tls_due`]): then it is answered at once.
    tls_due: bool,
    /// The least time between two answers to the node that a change of
    /// the desired state calls for (see [`answer_gap`]).
    gap: Duration,
    /// About when the node was last answered: when it was last heard
    /// from before this heartbeat (the end of its last hold, or its last
    /// heartbeat when that was answered at once).
    last_answered: Instant,
}

/// The least time between two moves of a node's addresses that are
/// taken (and written to the store).
pub(crate) const MOVE_EVERY: Duration = Duration::from_secs(1);

/// Per node in the cluster, the time added to the least gap between two
/// answers a change calls for: every change answers every node's held
/// heartbeat, so with thousands of nodes and changes every few
/// milliseconds (a fleet deploying), answers would come in storms of
/// thousands, each taking the node's whole heartbeat round again.
/// 5,000 nodes are answered at most every half second each (a change
/// reaches all of them within that), 10 nodes within a millisecond.
const GAP_PER_NODE: Duration = Duration::from_micros(100);

/// The least gap between two answers to a node that a change calls for,
/// in a cluster of `nodes`, answered at least every `heartbeat` anyway.
fn answer_gap(nodes: usize, heartbeat: Duration) -> Duration {
    GAP_PER_NODE
        .saturating_mul(u32::try_from(nodes).unwrap_or(u32::MAX))
        .min(heartbeat)
}

/// A node's heartbeat (`POST /v1/node/sync`), whole: takes what it
/// reports, holds it while the node is up to date (at most a heartbeat
/// interval), and answers with what changed for it.
pub(crate) async fn heartbeat(
    shared: &Shared,
    caller: &NodeCert,
    sync: SyncRequest,
) -> Result<SyncResponse<SharedJson>, Refused> {
    let taken = take(shared, caller, sync)?;
    hold(shared, &caller.name, &taken).await;
    answer(shared, caller, &taken).await
}

/// Takes what a heartbeat reports, in one go under the state lock: the
/// node's addresses and memory (its addresses written to the store when
/// they moved), that it is alive (and back, if it was down), the status
/// of what it holds, its load and traffic, the outcomes of versions under
/// rollout, load failures as events, and its guest log lines. Wakes the
/// controller and moves the desired-state version when what it reports
/// calls for it.
pub(crate) fn take(
    shared: &Shared,
    caller: &NodeCert,
    sync: SyncRequest,
) -> Result<Taken, Refused> {
    let node = caller.name.as_str();
    let started = Instant::now();
    let https = sync.https.iter().map(|addr| ("https", addr));
    for (what, addr) in [("ingress", &sync.ingress), ("mesh", &sync.mesh)]
        .into_iter()
        .chain(https)
    {
        check_reported_address(what, addr, shared.api_addr, &shared.hosts)
            .map_err(Refused::Invalid)?;
    }
    let mut wake = false;
    let mut bump = false;
    let mut reported_outcomes;
    let heartbeat;
    let fresh_logs: Vec<_>;
    let placed_by;
    let status_seq;
    let status_known;
    let news;
    let gap;
    let last_answered;
    let tls_due_now;
    {
        let mut live = shared.live();
        gap = answer_gap(live.nodes.len(), shared.config.heartbeat);
        let now = Instant::now();
        // Only a join makes a node, and only that join's certificate speaks
        // for it: a node forgotten (or joined again) while this body was
        // arriving is refused, not brought back.
        let entry = live
            .nodes
            .get_mut(node)
            .filter(|n| n.record.incarnation == caller.incarnation)
            .ok_or_else(|| not_a_member(caller))?;
        // What a heartbeat may change: the node's addresses (ports may
        // differ after a restart), and the memory it offers, up to what it
        // declared at join. Labels stay as joined or set by an admin.
        let updated = NodeRecord {
            ingress: sync.ingress.clone(),
            mesh: sync.mesh.clone(),
            ..entry.record.clone()
        };
        // A node moves when it restarts: one whose addresses change again
        // within [`MOVE_EVERY`] keeps those it had until the next
        // heartbeat after that, so it cannot have the store written at
        // the rate it sends heartbeats.
        let moved = entry.record != updated
            && entry
                .moved_at
                .is_none_or(|at| now.saturating_duration_since(at) >= MOVE_EVERY);
        if moved {
            shared.store.put_node(&updated)?;
            entry.record = updated;
            entry.moved_at = Some(now);
            wake = true;
        }
        if entry.reported_memory != sync.memory {
            let before = entry.memory();
            entry.reported_memory = sync.memory;
            wake |= entry.memory() != before;
        }
        entry.used = sync.used;
        // A digest is 64 hex digits: anything else is held by no node.
        if sync.tls.len() <= 64 && entry.tls != sync.tls {
            entry.tls.clone_from(&sync.tls);
        }
        if entry.https != sync.https {
            entry.https.clone_from(&sync.https);
        }
        tls_due_now = tls_due(entry, &shared.tls.borrow(), now);
        if entry.pressure != sync.pressure {
            if sync.pressure {
                tracing::warn!(
                    node,
                    used = sync.used,
                    "node under memory pressure: no new replicas go there"
                );
            } else {
                tracing::info!(
                    node,
                    used = sync.used,
                    "node no longer under memory pressure"
                );
            }
            entry.pressure = sync.pressure;
            wake = true;
        }
        placed_by = (entry.record.labels.clone(), entry.record.memory);
        news = entry.news.clone();
        last_answered = entry.last_seen;
        entry.last_seen = now;
        // First word since the control plane started: endpoints that were
        // trusted from the store now follow what the node reports.
        bump |= !entry.heard;
        entry.heard = true;
        entry.connection_lost = None;
        entry.heartbeats += 1;
        heartbeat = entry.heartbeats;
        let back = entry.down;
        if back {
            tracing::info!(node, "node is back");
            entry.down = false;
            wake = true;
            bump = true;
        }
        // Demand that grew (or requests held for a component with no
        // replica) wakes the autoscaler now, not at the next pass.
        // What the control plane assigned the node, not what it says it
        // holds, decides whose traffic it may report.
        let assigned = if sync.load.iter().any(|l| l.traffic.is_some()) || !entry.traffic_is_empty()
        {
            shared.desired().assigned_to(node)
        } else {
            Default::default()
        };
        let (urgent, outcomes) = entry.take_load(sync.load, &assigned);
        wake |= urgent;
        reported_outcomes = outcomes;
        // Loads that failed since the node last reported: events.
        let failed_now: Vec<(String, String, String)> = sync
            .status
            .components
            .iter()
            .filter(|c| c.state == LoadState::Failed)
            .filter(|c| {
                entry
                    .component(&c.app, &c.component, &c.package)
                    .is_none_or(|before| before.state != LoadState::Failed)
            })
            .take(crate::control::events::KEPT)
            .map(|c| {
                let error: String = c
                    .error
                    .as_deref()
                    .unwrap_or("no reason given")
                    .chars()
                    .take(500)
                    .collect();
                (c.app.clone(), c.component.clone(), error)
            })
            .collect();
        // What other nodes route by changed: they hear of it with the
        // next version, within this node's bump budget.
        let serving_changed = entry.take_status(sync.status);
        let failed_now = if serving_changed.is_some() {
            failed_now
        } else {
            Vec::new()
        };
        status_known = serving_changed.is_some();
        status_seq = entry.status_seq.map(|(_, seq)| seq);
        bump |= entry
            .bumps
            .take(moved || serving_changed == Some(true), now);
        // Keep each line once, and only for apps this node was given.
        let seen = entry.logs_seen;
        if let Some(last) = sync
            .logs_first_seq
            .checked_add(sync.logs.len() as u64)
            .and_then(|end| end.checked_sub(1))
            .filter(|_| !sync.logs.is_empty())
        {
            entry.logs_seen = seen.max(last);
        }
        if back {
            live.events.record(
                crate::control::events::EventKind::NodeBack,
                None,
                format!("node {node} is back"),
            );
        }
        for (app, component, versions) in std::mem::take(&mut reported_outcomes) {
            // A version under rollout failing is judged now.
            wake |=
                crate::control::rollout::take_outcomes(&mut live, node, &app, &component, versions);
        }
        for (app, component, error) in failed_now {
            live.events.record(
                crate::control::events::EventKind::LoadFailed,
                Some((&app, &component)),
                format!("{app}/{component} failed to load on {node}: {error}"),
            );
        }
        // Most heartbeats carry no lines: skip the scan of every replica.
        let assigned: std::collections::BTreeSet<(&str, &str)> = if sync.logs.is_empty() {
            Default::default()
        } else {
            live.replicas
                .values()
                .filter(|r| r.node.as_deref() == Some(node))
                .map(|r| (r.app.as_str(), r.component.as_str()))
                .collect()
        };
        fresh_logs = crate::control::logs::bounded(
            node,
            sync.logs
                .into_iter()
                .zip(sync.logs_first_seq..=u64::MAX)
                .filter(|(line, seq)| {
                    *seq > seen && assigned.contains(&(line.app.as_str(), line.component.as_str()))
                })
                .map(|(line, _)| line),
        );
    }
    shared.logs.append(node, fresh_logs);
    if wake {
        shared.wake.notify_one();
    }
    if bump {
        shared.bump();
    }
    shared.metrics.record_heartbeat(started.elapsed());
    Ok(Taken {
        heartbeat,
        version: sync.version,
        epoch: sync.epoch,
        status_known,
        status_seq,
        placed_by,
        news,
        gap,
        last_answered,
        tls: (
            if sync.tls.len() <= 64 {
                sync.tls
            } else {
                String::new()
            },
            sync.https.is_some(),
        ),
        tls_due: tls_due_now,
    })
}

#[cfg(test)]
impl Taken {
    /// Whether the heartbeat is answered at once to send the TLS bundle.
    pub(crate) fn tls_due_for_tests(&self) -> bool {
        self.tls_due
    }
}

/// A node whose TLS bundle is not the one meant for it is sent it again
/// no more often than this, unless the bundle changed: a node that does
/// not take it (one of an earlier release, or a hostile one) is not
/// answered at once with every certificate on every heartbeat.
const TLS_RESEND_EVERY: Duration = Duration::from_secs(30);

/// Whether `node` is due to be sent the bundle of `published` meant for
/// it at `now`: it lacks it, and was sent none since this publication,
/// or none lately. (Keyed on the publication, not on the bundle meant: a
/// node saying it serves HTTPS one heartbeat and not the next must not
/// be sent a bundle on every one.)
fn tls_due(
    node: &crate::control::LiveNode,
    published: &crate::control::certs::Published,
    now: Instant,
) -> bool {
    node.tls != published.for_node(node.https.is_some()).digest
        && node.tls_sent.as_ref().is_none_or(|(publication, at)| {
            *publication != published.full.digest
                || now.saturating_duration_since(*at) >= TLS_RESEND_EVERY
        })
}

/// Holds a heartbeat while the node is up to date both ways, until the
/// desired state changes, the node has news, or a heartbeat interval has
/// passed. A change is answered no sooner than the node's answer gap
/// after its last answer (whether this heartbeat was up to date or not:
/// with versions moving every few milliseconds, a node answered at once
/// would come straight back for the next). A node of another run of the
/// control plane, or whose status the control plane could not take, is
/// answered at once.
pub(crate) async fn hold(shared: &Shared, node: &str, taken: &Taken) {
    let epoch = shared.desired().epoch();
    let mut version = shared.version.subscribe();
    let heartbeat = taken.heartbeat;
    // A node without the cluster's certificates (or an ACME challenge
    // the cluster waits on) is answered at once.
    if taken.epoch != epoch || !taken.status_known || taken.tls_due {
        return;
    }
    let up_to_date = *version.borrow_and_update() == taken.version;
    let paced = tokio::time::Instant::from_std(taken.last_answered + taken.gap);
    if !up_to_date && paced <= tokio::time::Instant::now() {
        return;
    }
    let mut held = HeldHeartbeat::hold(shared, node, heartbeat);
    let changed = !up_to_date
        || tokio::select! {
            _ = version.changed() => true,
            // The node has something to report (see [`news`]).
            () = taken.news.notified() => false,
            () = tokio::time::sleep(shared.config.heartbeat) => false,
        };
    if changed {
        tokio::select! {
            () = taken.news.notified() => {}
            () = tokio::time::sleep_until(paced) => {}
        }
    }
    held.armed = false;
    // Held this long, the node was listening all along.
    shared.with_node(node, |entry| {
        if entry.heartbeats == heartbeat {
            entry.last_seen = Instant::now();
        }
    });
}

/// The answer to a heartbeat taken: the desired-state version, and what
/// changed for the node since the version it applied (computed once per
/// version for every node, and no more often than the last computation's
/// cost allows).
pub(crate) async fn answer(
    shared: &Shared,
    caller: &NodeCert,
    taken: &Taken,
) -> Result<SyncResponse<SharedJson>, Refused> {
    let node = caller.name.as_str();
    let epoch = shared.desired().epoch();
    let mut current = *shared.version.borrow();
    let desired = if current != taken.version || taken.epoch != epoch {
        // Computing the desired state is work in proportion to the whole
        // cluster: with many apps, versions moving fast share computations.
        let rest = shared.desired().rest_before(current, taken.gap / 4);
        if !rest.is_zero() {
            tokio::time::sleep(rest).await;
        }
        let live = shared.live();
        // Forgotten while its heartbeat was held: it learns nothing more.
        if live
            .nodes
            .get(node)
            .is_none_or(|n| n.record.incarnation != caller.incarnation)
        {
            return Err(not_a_member(caller));
        }
        let mut log = shared.desired();
        // Read under the state lock: a change made after the version was
        // read above must not be stamped with that older version.
        current = log.refresh(&live, *shared.version.borrow());
        // What changed for this node is read off the log alone: thousands
        // of nodes answered after one change must not hold up deploys, the
        // controller and heartbeats waiting for the state.
        drop(live);
        Some(log.change_for(node, taken.epoch, taken.version))
    } else {
        None
    };
    Ok(SyncResponse {
        version: current,
        epoch,
        status_seq: taken.status_seq,
        desired,
        heartbeat_ms: shared.config.heartbeat.as_millis() as u64,
        labels: taken.placed_by.0.clone(),
        memory: taken.placed_by.1,
        // Only a cluster of several control planes (on etcd) has others.
        servers: match shared.etcd {
            Some(_) => shared.servers.lock().expect("servers lock").clone(),
            None => Vec::new(),
        },
        tls: tls_to_send(shared, node, taken),
    })
}

/// The TLS bundle to send with an answer to `node`, if it is due one
/// (recorded as sent).
fn tls_to_send(shared: &Shared, node: &str, taken: &Taken) -> Option<Arc<crate::api::TlsBundle>> {
    let published = shared.tls.borrow().clone();
    let (held, https) = &taken.tls;
    let meant = published.for_node(*https);
    if *held == meant.digest {
        return None;
    }
    let mut due = false;
    shared.with_node(node, |entry| {
        due = tls_due(entry, &published, Instant::now());
        if due {
            entry.tls_sent = Some((published.full.digest.clone(), Instant::now()));
        }
    });
    due.then(|| meant.clone())
}

/// `POST /v1/node/news`: the calling node has something to report (a
/// replica loaded, memory pressure): its heartbeat being held is answered
/// now rather than at the end of the heartbeat interval, and the node
/// reports with the next one. Asking, rather than abandoning the held
/// heartbeat, keeps its connection: a node starting thousands of replicas
/// has news every few milliseconds, and a new connection (and TLS
/// handshake) per news would keep its heartbeats from ever arriving.
/// News that arrives between two heartbeats answers the next one at once.
pub(crate) fn news(shared: &Shared, caller: &NodeCert) -> Result<(), Refused> {
    let live = shared.live();
    let node = live
        .nodes
        .get(&caller.name)
        .filter(|n| n.record.incarnation == caller.incarnation)
        .ok_or_else(|| not_a_member(caller))?;
    node.news.notify_one();
    Ok(())
}

/// Checks an address a node reports for itself (`what`: ingress or mesh):
/// `ip:port` with a real port, not multicast or broadcast, not the control
/// plane's own API (`api`, or any of `hosts` at its port when it listens
/// on every address), and for the mesh, which other nodes dial, not
/// unspecified. (Ingress may listen on every address: it is only shown.)
pub(crate) fn check_reported_address(
    what: &str,
    addr: &str,
    api: std::net::SocketAddr,
    hosts: &[String],
) -> Result<std::net::SocketAddr, String> {
    let parsed: std::net::SocketAddr = addr
        .parse()
        .map_err(|_| format!("invalid {what} address {addr:?}: expected ip:port"))?;
    let ip = parsed.ip().to_canonical();
    let broadcast = ip == std::net::IpAddr::V4(std::net::Ipv4Addr::BROADCAST);
    let reason = if parsed.port() == 0 {
        Some("port 0 cannot be dialled")
    } else if ip.is_multicast() || broadcast {
        Some("it is a multicast or broadcast address")
    } else if what == "mesh" && ip.is_unspecified() {
        Some("it is unspecified; report an address other nodes can reach")
    } else if parsed.port() == api.port()
        && (ip == api.ip().to_canonical()
            || (api.ip().is_unspecified()
                && (ip.is_loopback()
                    || ip.is_unspecified()
                    || hosts.iter().any(|h| h.parse() == Ok(ip)))))
    {
        Some("it is the control plane's own API address")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(format!(
            "invalid {what} address {addr:?}: {reason}; start the node with a --listen or --mesh-listen address of its own"
        )),
        None => Ok(parsed),
    }
}
