//! Which connections an mTLS listener (the control plane's API, a node's
//! mesh endpoint) takes: at most so many at once, and at most so many
//! from one address until the peer proves to be a node of the cluster, so
//! no stranger, with or without a credential, can hold every file
//! descriptor. A connection over either limit is closed at once, before
//! its handshake costs anything; refusals are logged at most once a
//! second, with how many there were.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Default cap on API connections open at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Default cap on API connections open at once from one IP address.
pub const MAX_CONNECTIONS_PER_IP: usize = 256;
/// Cap on a node's mesh connections whose peer has not proved to be a
/// member (its handshake runs, or it is a stranger's): member nodes'
/// connections count toward no cap, so strangers cannot crowd them out.
pub const MESH_MAX_UNPROVEN: usize = 1024;
/// Of those, at most this many from one address.
pub const MESH_MAX_UNPROVEN_PER_IP: usize = 256;

/// How often refusals are logged, at most.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// Counts a listener's open connections, in total and per address.
pub(crate) struct Admission {
    /// What listens, for the log: "API", "mesh".
    listener: &'static str,
    total: Arc<Semaphore>,
    max_total: usize,
    max_per_ip: usize,
    /// How an operator raises each limit, e.g. `--max-connections`.
    raise: [&'static str; 2],
    /// What a peer proved a member is freed from.
    trust: Trust,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    per_ip: HashMap<IpAddr, usize>,
    /// Refused since the last log line.
    refused: u64,
    last_logged: Option<Instant>,
}

/// What a connection whose peer proved to be a member node stops counting
/// toward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trust {
    /// Its address's cap (many nodes may share one, behind NAT); it still
    /// counts toward the total.
    Address,
    /// Both caps: they bound only connections not yet proved a member's.
    Both,
}

/// One admitted connection; its place is given back when dropped.
pub(crate) struct Slot {
    admission: Arc<Admission>,
    ip: Option<IpAddr>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Admission {
    /// Admission to `listener` of at most `max_total` connections, and
    /// `max_per_ip` from one address; `raise` says how each is raised,
    /// `trust` what a member's connection is freed from.
    pub(crate) fn new(
        listener: &'static str,
        max_total: usize,
        max_per_ip: usize,
        raise: [&'static str; 2],
        trust: Trust,
    ) -> Arc<Admission> {
        Arc::new(Admission {
            listener,
            total: Arc::new(Semaphore::new(max_total)),
            max_total,
            max_per_ip,
            raise,
            trust,
            state: Mutex::new(State::default()),
        })
    }

    /// A place for a connection from `ip`, or `None` (logged) when either
    /// limit is reached.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let ip = source(ip);
        let mut state = self.state.lock().expect("admission lock");
        let from_ip = state.per_ip.get(&ip).copied().unwrap_or(0);
        let permit = if from_ip >= self.max_per_ip {
            None
        } else {
            self.total.clone().try_acquire_owned().ok()
        };
        let Some(permit) = permit else {
            state.refused += 1;
            let now = Instant::now();
            if state
                .last_logged
                .is_none_or(|at| now.duration_since(at) >= LOG_EVERY)
            {
                let why = if from_ip >= self.max_per_ip {
                    format!(
                        "{ip} already has {from_ip} open ({} {})",
                        self.raise[1], self.max_per_ip
                    )
                } else {
                    format!("{} are open ({})", self.max_total, self.raise[0])
                };
                tracing::warn!(
                    refused = state.refused,
                    "{} connection limit reached: closed {} new connection(s), the last from {ip}: {why}; raise the limit if these are real clients",
                    self.listener,
                    state.refused
                );
                state.refused = 0;
                state.last_logged = Some(now);
            }
            return None;
        };
        *state.per_ip.entry(ip).or_default() += 1;
        Some(Slot {
            admission: self.clone(),
            ip: Some(ip),
            permit: Some(permit),
        })
    }

    fn release_ip(&self, ip: IpAddr) {
        let mut state = self.state.lock().expect("admission lock");
        if let Some(count) = state.per_ip.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                state.per_ip.remove(&ip);
            }
        }
    }
}

impl Slot {
    /// The peer proved to be a node of this cluster: its connection no
    /// longer counts against its address, nor against the total where the
    /// admission's [`Trust`] says so.
    pub(crate) fn trusted(&mut self) {
        if let Some(ip) = self.ip.take() {
            self.admission.release_ip(ip);
        }
        if self.admission.trust == Trust::Both {
            self.permit = None;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(ip) = self.ip.take() {
            self.admission.release_ip(ip);
        }
    }
}

/// The source a connection counts against: an IPv4 address (also when
/// written IPv4-mapped), or an IPv6 address's /64, which one host
/// usually holds whole.
fn source(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_per_address_and_in_total_and_places_come_back() {
        let admission = Admission::new(
            "API",
            3,
            2,
            ["--max-connections", "--max-connections-per-ip"],
            Trust::Address,
        );
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let a1 = admission.admit(a).expect("first from a");
        let mut a2 = admission.admit(a).expect("second from a");
        assert!(admission.admit(a).is_none(), "a third from one address");
        a2.trusted();
        let a3 = admission
            .admit(a)
            .expect("a node's connection frees its address");
        assert!(admission.admit(b).is_none(), "the total is reached");
        drop(a1);
        let b1 = admission.admit(b).expect("a place came back");
        drop((a2, a3, b1));
        assert!(admission.state.lock().unwrap().per_ip.is_empty());
        assert_eq!(admission.total.available_permits(), 3);
    }

    #[test]
    fn where_members_count_toward_no_cap_strangers_cannot_crowd_them_out() {
        let admission = Admission::new("mesh", 2, 2, ["a cap", "a cap per address"], Trust::Both);
        let node: IpAddr = "127.0.0.2".parse().unwrap();
        let stranger: IpAddr = "127.0.0.9".parse().unwrap();
        let mut members = Vec::new();
        for _ in 0..5 {
            let mut slot = admission.admit(node).expect("a member's handshake");
            slot.trusted();
            members.push(slot);
        }
        let s1 = admission.admit(stranger).expect("first stranger");
        let _s2 = admission.admit(stranger).expect("second stranger");
        assert!(admission.admit(stranger).is_none());
        assert!(admission.admit(node).is_none(), "unproven places are full");
        drop(s1);
        assert!(admission.admit(node).is_some(), "a place came back");
        drop(members);
    }

    #[test]
    fn an_ipv6_host_counts_as_its_64_and_mapped_ipv4_as_itself() {
        let admission = Admission::new(
            "API",
            10,
            2,
            ["--max-connections", "--max-connections-per-ip"],
            Trust::Address,
        );
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        let _one = admission.admit(a).unwrap();
        let _two = admission.admit(b).unwrap();
        assert!(admission.admit("2001:db8::3".parse().unwrap()).is_none());
        assert!(
            admission
                .admit("2001:db8:0:1::1".parse().unwrap())
                .is_some()
        );
        let _v4 = admission.admit("10.0.0.1".parse().unwrap()).unwrap();
        let _mapped = admission.admit("::ffff:10.0.0.1".parse().unwrap()).unwrap();
        assert!(admission.admit("10.0.0.1".parse().unwrap()).is_none());
    }
}
