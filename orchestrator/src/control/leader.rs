//! Which of the control planes sharing one etcd leads. Each registers its
//! URL under a lease it keeps alive; the first to write the leader key
//! (held with its lease) leads: it reads the cluster's state, runs the
//! controller and the package collector, and answers the API. The others
//! stand by: they refuse API calls with a pointer to the leader (see
//! `api.rs`), copy the leader's packages (see `mirror.rs`), and try to
//! take over each second. A leader cut off from etcd stands down before its lease can
//! expire, and its writes are fenced meanwhile (see
//! [`crate::state::EtcdStore::lead`]), so two never act at once.

use super::{Live, Shared, desired};
use crate::state::REQUEST_TIMEOUT;
use crate::state::{EtcdStore, Leadership, StateError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// How long a control plane's lease lives unless kept alive, seconds:
/// how long a dead leader is waited for. Room for a tick, a keep-alive
/// call that fails ([`REQUEST_TIMEOUT`]) and a margin.
const LEASE_TTL: i64 = 6;

/// How long after taking over a leader waits before counting a node's
/// silence: a node's heartbeat to a frozen old leader times out after a
/// heartbeat interval plus 10 s before it turns to another.
const TAKEOVER_GRACE: Duration = Duration::from_secs(12);

/// The control planes' URLs are read again every tick while etcd answers
/// a keep-alive within [`SLOW`], else every this many ticks, so that a
/// slow etcd is asked only what keeps leases alive.
const REFRESH_EVERY: u64 = 5;
const SLOW: Duration = Duration::from_millis(300);

/// How often leases are kept alive and standbys try to take over.
const TICK: Duration = Duration::from_secs(1);

/// What a control plane is doing now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Role {
    /// It leads: it answers the API and runs the controller.
    Leading,
    /// It stands by; the leader's URL, when one is known.
    Standing(Option<String>),
    /// It led, and lost etcd: it shows the last state it had, refuses
    /// changes and nodes (which turn to another control plane, or keep
    /// what they run), and leads again once it wins an election.
    CutOff,
}

/// Runs the election for `shared` (whose store is `etcd`), announcing
/// `url`, until the controller stops unexpectedly (its panic is the
/// error).
pub(super) async fn run(shared: Arc<Shared>, etcd: Arc<EtcdStore>, url: String) -> String {
    let id = super::random_hex(8);
    let mirror = tokio::spawn(super::mirror::run(shared.clone()));
    let _mirror = AbortOnDrop(mirror);
    let mut complained = false;
    loop {
        let lease = match blocking(&etcd, |e| e.grant_lease(LEASE_TTL)).await {
            Ok(lease) => lease,
            Err(e) => {
                if !std::mem::replace(&mut complained, true) {
                    tracing::error!("cannot join the election of the cluster's leader: {e}");
                }
                tokio::time::sleep(TICK).await;
                continue;
            }
        };
        complained = false;
        let registered = {
            let (id, url) = (id.clone(), url.clone());
            blocking(&etcd, move |e| e.register(&id, &url, lease)).await
        };
        if let Err(e) = registered {
            if !std::mem::replace(&mut complained, true) {
                tracing::warn!("cannot register this control plane: {e}");
            }
            tokio::time::sleep(TICK).await;
            continue;
        }
        if let Some(stopped) = stand_by(&shared, &etcd, &url, lease).await {
            return stopped;
        }
    }
}

/// Stands by under `lease` until it expires (then `None`: a new one is
/// needed), leading whenever the leader key is free.
async fn stand_by(
    shared: &Arc<Shared>,
    etcd: &Arc<EtcdStore>,
    url: &str,
    lease: i64,
) -> Option<String> {
    let mut kept_alive = Instant::now();
    let mut ticks: u64 = 0;
    let mut etcd_was_quick = true;
    loop {
        ticks += 1;
        let attempt = {
            let url = url.to_string();
            blocking(etcd, move |e| e.lead(&url, lease)).await
        };
        match attempt {
            Ok(Leadership::Won) => {
                tracing::info!(url, "this control plane leads the cluster now");
                match lead(shared, etcd, lease).await {
                    Led::LostLease => return None,
                    Led::ControllerStopped(why) => return Some(why),
                }
            }
            Ok(Leadership::Held(leader)) => {
                // Its own URL is a run of this control plane that is gone,
                // whose lease has not expired yet: no leader to point at.
                let leader = leader.filter(|l| l != url);
                let mut was_cut_off = false;
                let changed = shared.role.send_if_modified(|role| {
                    let standing = Role::Standing(leader.clone());
                    was_cut_off = *role == Role::CutOff;
                    std::mem::replace(role, standing.clone()) != standing
                });
                if was_cut_off {
                    // Another leads: what this one showed is stale.
                    *shared.live() = Live::default();
                }
                if changed {
                    match &leader {
                        Some(leader) => tracing::info!(leader = leader.as_str(), "standing by"),
                        None => tracing::info!("standing by; no control plane leads yet"),
                    }
                }
            }
            Err(e) if e.to_string().contains("lease not found") => return None,
            Err(e) => tracing::debug!("cannot take part in the election now: {e}"),
        }
        if ticks % REFRESH_EVERY == 1 || etcd_was_quick {
            refresh_servers(shared, etcd).await;
        }
        tokio::time::sleep(TICK).await;
        let asked = Instant::now();
        let kept = blocking(etcd, move |e| e.keep_alive(lease)).await;
        etcd_was_quick = asked.elapsed() < SLOW;
        match kept {
            Ok(true) => kept_alive = Instant::now(),
            Ok(false) => return None,
            // Past its TTL, a lease not kept alive is gone: a new one.
            Err(_) if kept_alive.elapsed() >= Duration::from_secs(LEASE_TTL as u64) => {
                return None;
            }
            Err(e) => tracing::debug!("cannot keep this control plane's lease alive: {e}"),
        }
    }
}

/// How leading ended.
enum Led {
    /// The lease could not be kept alive: stand by again with a new one.
    LostLease,
    /// The controller stopped (it panicked).
    ControllerStopped(String),
}

/// Leads the cluster under `lease`: reads its state afresh, runs the
/// controller and collector, answers the API; until the lease cannot be
/// kept alive for long enough that it may expire.
async fn lead(shared: &Arc<Shared>, etcd: &Arc<EtcdStore>, lease: i64) -> Led {
    if let Err(e) = take_over(shared).await {
        tracing::error!("cannot read the cluster's state to lead it: {e:#}; standing down");
        stand_down(shared, etcd, lease, Vec::new()).await;
        // It has no state to show: it stands by, rather than answer reads
        // with an empty cluster.
        *shared.live() = Live::default();
        shared.role.send_replace(Role::Standing(None));
        return Led::LostLease;
    }
    let mut controller = tokio::spawn(super::reconcile::run(shared.clone()));
    let collector = tokio::spawn(super::collect::run(shared.clone()));
    let acme = tokio::spawn(super::acme::run(shared.clone()));
    shared.role.send_replace(Role::Leading);
    let mut kept_alive = Instant::now();
    // Stand down while the lease surely still lives: its TTL, less a tick
    // and a whole keep-alive call (which may take that long to fail).
    let give_up_after = Duration::from_secs(LEASE_TTL as u64) - TICK - REQUEST_TIMEOUT;
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            stopped = &mut controller => {
                collector.abort();
                acme.abort();
                return Led::ControllerStopped(format!("{stopped:?}"));
            }
            () = tokio::time::sleep(TICK) => {}
        }
        ticks += 1;
        let asked = Instant::now();
        let kept = blocking(etcd, move |e| e.keep_alive(lease)).await;
        if kept.is_ok() && (asked.elapsed() < SLOW || ticks.is_multiple_of(REFRESH_EVERY)) {
            refresh_servers(shared, etcd).await;
        }
        match kept {
            Ok(true) => kept_alive = Instant::now(),
            Ok(false) => {
                tracing::error!("this control plane's lease expired: standing down");
                break;
            }
            Err(e) if kept_alive.elapsed() >= give_up_after => {
                tracing::error!(
                    "cannot keep leading: {e}; standing down before another control plane takes over"
                );
                break;
            }
            Err(e) => tracing::warn!("cannot keep this control plane's lease alive yet: {e}"),
        }
    }
    stand_down(shared, etcd, lease, vec![controller, collector, acme]).await;
    Led::LostLease
}

/// Reads the cluster's state from the store into `shared`, as a restart
/// would: every node gets a fresh heartbeat window, and a new epoch has
/// each node take its whole desired state.
async fn take_over(shared: &Arc<Shared>) -> anyhow::Result<()> {
    let loaded = {
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || Live::load(shared.store.as_ref(), &shared.packages))
            .await??
    };
    let mut live = shared.live();
    let overcommit = live.overcommit;
    *live = loaded;
    live.overcommit = overcommit;
    // Each node gets a fresh window, beginning once a heartbeat it sent
    // to the old leader (which may be frozen rather than dead) has timed
    // out and it has turned to this one.
    let window_starts = Instant::now() + TAKEOVER_GRACE;
    for node in live.nodes.values_mut() {
        node.last_seen = window_starts;
    }
    *shared.desired() = desired::DesiredLog::new(super::new_epoch());
    shared.publish_tls(&live);
    drop(live);
    shared
        .version
        .send_modify(|v| *v = (*v + 1).max(crate::clock::unix_ms()));
    Ok(())
}

/// Stops leading: changes and nodes are refused (reads show the last
/// state until another control plane is seen to lead), `tasks` stop, and
/// the lease is revoked (if etcd can be reached) so that another control
/// plane takes over at once.
async fn stand_down(
    shared: &Arc<Shared>,
    etcd: &Arc<EtcdStore>,
    lease: i64,
    tasks: Vec<JoinHandle<()>>,
) {
    shared.role.send_replace(Role::CutOff);
    for task in tasks {
        task.abort();
    }
    // Writes stay fenced by the leadership just lost: a request this one
    // was still answering cannot change what its successor decides.
    if let Err(e) = blocking(etcd, move |e| e.revoke(lease)).await {
        tracing::debug!("cannot revoke the lease: {e}");
    }
}

/// Refreshes the control planes' URLs nodes are told of.
async fn refresh_servers(shared: &Arc<Shared>, etcd: &Arc<EtcdStore>) {
    if let Ok(mut servers) = blocking(etcd, |e| e.servers()).await
        && !servers.is_empty()
    {
        servers.sort();
        servers.dedup();
        *shared.servers.lock().expect("servers lock") = servers;
    }
}

/// Aborts its task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `call` on `etcd` on a blocking thread: its calls wait for etcd.
async fn blocking<T: Send + 'static>(
    etcd: &Arc<EtcdStore>,
    call: impl FnOnce(&EtcdStore) -> Result<T, StateError> + Send + 'static,
) -> Result<T, StateError> {
    let etcd = etcd.clone();
    tokio::task::spawn_blocking(move || call(&etcd))
        .await
        .unwrap_or_else(|e| Err(StateError::Store(format!("an etcd call failed: {e}"))))
}
