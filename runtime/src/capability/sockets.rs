//! Sockets: outbound TCP to exactly the `host:port`s that `tcp://` and
//! `*://` entries of `allowed_outbound_hosts` name (a port written, not a
//! wildcard scheme's default), under outbound HTTP's rule for internal
//! addresses: loopback, private and link-local ones only where an entry
//! names them as an IP literal, a range, or `localhost`. A name is looked
//! up only when such an entry names it, and a connection goes only to an
//! address the instance looked up for a name an entry allows, or to an
//! address an entry names. No listening, no UDP. `wasi:sockets` stays in
//! the linker for every component, so those importing it (many
//! toolchains' do) load; each refusal is logged with
//! `reason="socket_denied"`, at most [`LOGGED_DENIALS`] an instance.

use super::outbound_http::OutboundPolicy;
use super::{Capability, PrepareContext};
use crate::instance::InstanceBuilder;
use crate::manifest::ComponentSpec;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use wasmtime::component::{HasData, Linker, Resource};
use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, IpAddress, IpAddressFamily};
use wasmtime_wasi::p2::bindings::sockets::{
    ip_name_lookup, network, tcp_create_socket, udp_create_socket,
};
use wasmtime_wasi::p2::{DynPollable, Network, SocketError, SocketResult, TcpSocket, UdpSocket};
use wasmtime_wasi::sockets::{SocketAddrUse, WasiSocketsCtxView};

/// The reason logged when a guest is refused a socket or a name lookup.
pub const REASON: &str = "socket_denied";

/// Names kept per looked-up address: several allowed names may share
/// one address.
const NAMES_PER_ADDRESS: usize = 16;

/// Refusals logged per instance; a guest retrying in a loop is cut off
/// from the log after these (and one line saying so).
pub const LOGGED_DENIALS: usize = 8;

/// The socket capability of one component: its name, for the log, and
/// its TCP policy when an entry grants TCP.
pub struct Sockets {
    component: Arc<str>,
    tcp: Option<Arc<OutboundPolicy>>,
}

impl Sockets {
    /// Reads which `allowed_outbound_hosts` entries grant TCP.
    ///
    /// # Errors
    ///
    /// None today; the signature matches the other capabilities.
    pub fn prepare(spec: &ComponentSpec, cx: &PrepareContext<'_>) -> Result<Sockets, String> {
        let tcp: Vec<_> = spec
            .allowed_outbound_hosts
            .iter()
            .filter(|entry| entry.grants_tcp())
            .cloned()
            .collect();
        Ok(Sockets {
            component: Arc::from(cx.component.as_str()),
            tcp: (!tcp.is_empty())
                .then(|| Arc::new(OutboundPolicy::new(cx.component.as_str(), tcp))),
        })
    }
}

impl Capability for Sockets {
    fn grant(&self, instance: &mut InstanceBuilder) -> Result<(), String> {
        let grant = SocketGrant {
            component: self.component.clone(),
            tcp: self.tcp.clone(),
            resolved: Arc::default(),
            lookups: HashMap::new(),
            denials: Arc::default(),
        };
        if let Some(policy) = &self.tcp {
            let policy = policy.clone();
            let resolved = grant.resolved.clone();
            let component = grant.component.clone();
            let denials = grant.denials.clone();
            instance
                .wasi
                .allow_tcp(true)
                .allow_ip_name_lookup(true)
                .socket_addr_check(move |addr, using| {
                    let permitted = match using {
                        // The implicit bind of a connect: any local port.
                        SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
                        // As the address itself, or as any allowed name
                        // it was looked up for.
                        SocketAddrUse::TcpConnect => {
                            policy.permits_tcp(addr.ip(), addr.port(), None)
                                || resolved
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .get(&addr.ip())
                                    .is_some_and(|names| {
                                        names.iter().any(|name| {
                                            policy.permits_tcp(addr.ip(), addr.port(), Some(name))
                                        })
                                    })
                        }
                        _ => false,
                    };
                    if !permitted {
                        match using {
                            SocketAddrUse::TcpConnect => deny(
                                &component,
                                &denials,
                                &format!("TcpConnect to {addr}"),
                                NOT_NAMED,
                            ),
                            // Never allowed, whatever the manifest says.
                            _ => deny(
                                &component,
                                &denials,
                                &format!("{using:?} on {addr}"),
                                "guests may not listen or bind",
                            ),
                        };
                    }
                    Box::pin(std::future::ready(permitted))
                });
        }
        instance.sockets = grant;
        Ok(())
    }
}

/// Why a TCP connection or lookup was refused.
const NOT_NAMED: &str =
    "no tcp:// or *:// entry of allowed_outbound_hosts names this host and port";

/// Logs a refusal of `what` for `why`, while the instance has logged
/// fewer than [`LOGGED_DENIALS`].
fn deny(component: &str, denials: &AtomicUsize, what: &str, why: &str) -> ErrorCode {
    let count = denials.fetch_add(1, Ordering::Relaxed);
    if count < LOGGED_DENIALS {
        tracing::warn!(component, reason = REASON, "{what} refused: {why}");
    } else if count == LOGGED_DENIALS {
        tracing::warn!(
            component,
            reason = REASON,
            "more socket calls refused; not logged for the rest of this instance"
        );
    }
    ErrorCode::AccessDenied
}

/// One instance's sockets: what it may do, the names it looked up, and
/// its refusals.
#[derive(Debug, Default)]
pub struct SocketGrant {
    component: Arc<str>,
    /// `None`: no TCP at all.
    tcp: Option<Arc<OutboundPolicy>>,
    /// Addresses the instance looked up, with the names each came from
    /// (at most [`NAMES_PER_ADDRESS`]).
    resolved: Arc<Mutex<HashMap<IpAddr, Vec<String>>>>,
    /// The name each open lookup (by its resource) is for.
    lookups: HashMap<u32, String>,
    /// Refusals so far.
    denials: Arc<AtomicUsize>,
}

impl SocketGrant {
    /// Refuses `what`, logging it (see [`deny`]).
    fn deny(&self, what: &str, why: &str) -> ErrorCode {
        deny(&self.component, &self.denials, what, why)
    }
}

/// What the socket functions need of an instance's state.
pub struct DeniedSocketsView<'a> {
    /// The instance's grant and refusals.
    pub denials: &'a mut SocketGrant,
    /// wasmtime's socket state, which serves what is not refused here
    /// (error conversions, dropping handles).
    pub sockets: WasiSocketsCtxView<'a>,
}

/// Store state that can lend a [`DeniedSocketsView`].
pub trait DeniedSocketsState: Send + 'static {
    /// The view of this instance's socket state.
    fn denied_sockets(&mut self) -> DeniedSocketsView<'_>;
}

struct DeniedSockets;

impl HasData for DeniedSockets {
    type Data<'a> = DeniedSocketsView<'a>;
}

/// Replaces the functions of `wasi:sockets` that could open a socket or
/// resolve a name (already in `linker` from `wasmtime_wasi`) with ones
/// that refuse and log.
///
/// # Errors
///
/// When the linker refuses the definitions.
pub fn add_to_linker<T: DeniedSocketsState>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let added = tcp_create_socket::add_to_linker::<T, DeniedSockets>(linker, T::denied_sockets)
        .and_then(|()| {
            udp_create_socket::add_to_linker::<T, DeniedSockets>(linker, T::denied_sockets)
        })
        .and_then(|()| {
            ip_name_lookup::add_to_linker::<T, DeniedSockets>(linker, T::denied_sockets)
        });
    linker.allow_shadowing(false);
    added
}

// === impl DeniedSocketsView ===

// Error conversions and the network handle: wasmtime's.
impl network::Host for DeniedSocketsView<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<ErrorCode> {
        self.sockets.convert_error_code(error)
    }

    fn network_error_code(
        &mut self,
        error: Resource<wasmtime::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        self.sockets.network_error_code(error)
    }
}

impl network::HostNetwork for DeniedSocketsView<'_> {
    fn drop(&mut self, network: Resource<Network>) -> wasmtime::Result<()> {
        network::HostNetwork::drop(&mut self.sockets, network)
    }
}

impl tcp_create_socket::Host for DeniedSocketsView<'_> {
    fn create_tcp_socket(&mut self, family: IpAddressFamily) -> SocketResult<Resource<TcpSocket>> {
        if self.denials.tcp.is_none() {
            let why = "no tcp:// or *:// entry of allowed_outbound_hosts names a host and port";
            return Err(self.denials.deny("tcp socket", why).into());
        }
        // Where it may connect is the socket address check's to say.
        tcp_create_socket::Host::create_tcp_socket(&mut self.sockets, family)
    }
}

impl udp_create_socket::Host for DeniedSocketsView<'_> {
    async fn create_udp_socket(
        &mut self,
        _family: IpAddressFamily,
    ) -> SocketResult<Resource<UdpSocket>> {
        Err(self.denials.deny("udp socket", "guests get no UDP").into())
    }
}

impl ip_name_lookup::Host for DeniedSocketsView<'_> {
    fn resolve_addresses(
        &mut self,
        network: Resource<Network>,
        name: String,
    ) -> SocketResult<Resource<ip_name_lookup::ResolveAddressStream>> {
        let name = name.to_ascii_lowercase();
        let allowed = self
            .denials
            .tcp
            .as_ref()
            .is_some_and(|policy| policy.may_resolve(&name));
        if !allowed {
            return Err(self
                .denials
                .deny(&format!("name lookup of {name:?}"), NOT_NAMED)
                .into());
        }
        let stream =
            ip_name_lookup::Host::resolve_addresses(&mut self.sockets, network, name.clone())?;
        self.denials.lookups.insert(stream.rep(), name);
        Ok(stream)
    }
}

impl ip_name_lookup::HostResolveAddressStream for DeniedSocketsView<'_> {
    fn resolve_next_address(
        &mut self,
        stream: Resource<ip_name_lookup::ResolveAddressStream>,
    ) -> SocketResult<Option<IpAddress>> {
        let rep = stream.rep();
        let next = self.sockets.resolve_next_address(stream)?;
        // Each address the platform looked up for an allowed name may be
        // connected to, as that name.
        if let (Some(address), Some(name)) = (&next, self.denials.lookups.get(&rep)) {
            let mut resolved = self
                .denials
                .resolved
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let names = resolved.entry(ip_of(address)).or_default();
            if !names.contains(name) && names.len() < NAMES_PER_ADDRESS {
                names.push(name.clone());
            }
        }
        Ok(next)
    }

    fn subscribe(
        &mut self,
        stream: Resource<ip_name_lookup::ResolveAddressStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        self.sockets.subscribe(stream)
    }

    fn drop(
        &mut self,
        stream: Resource<ip_name_lookup::ResolveAddressStream>,
    ) -> wasmtime::Result<()> {
        self.denials.lookups.remove(&stream.rep());
        ip_name_lookup::HostResolveAddressStream::drop(&mut self.sockets, stream)
    }
}

/// The std form of a WASI address.
fn ip_of(address: &IpAddress) -> IpAddr {
    match *address {
        IpAddress::Ipv4((a, b, c, d)) => IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
        IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => {
            IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wasi_addresses_convert_to_std_ones() {
        let v4: std::net::SocketAddr = "10.1.2.3:80".parse().unwrap();
        assert_eq!(ip_of(&IpAddress::from(v4.ip())), v4.ip());
        let v6: IpAddr = "fd00::1:2".parse().unwrap();
        assert_eq!(ip_of(&IpAddress::from(v6)), v6);
    }
}
