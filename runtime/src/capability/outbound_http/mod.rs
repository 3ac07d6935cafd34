//! Outbound HTTP: requests a guest makes through `wasi:http/outgoing-handler`.
//! Denied unless the destination matches `allowed_outbound_hosts`; internal
//! addresses are refused even then unless an entry names them with the
//! request's exact scheme, host and port; every call is bounded in time,
//! and each instance in number.

pub mod address;
pub mod client;
pub mod policy;

pub use address::is_internal;
pub use client::OutboundClient;
pub use policy::{OutboundHost, OutboundPolicy};

use super::{Capability, PrepareContext};
use crate::instance::InstanceBuilder;
use crate::manifest::ComponentSpec;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// Time to the response head (connect included) when the guest sets none.
const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest pause between response body frames when the guest sets none.
const DEFAULT_BETWEEN_BYTES_TIMEOUT: Duration = Duration::from_secs(30);

/// The outbound HTTP capability of one component: its policy and client.
pub struct OutboundHttp {
    grant: Arc<OutboundGrant>,
}

/// What an instance may call, and through which client.
pub struct OutboundGrant {
    policy: Arc<OutboundPolicy>,
    /// Made on the first permitted call: most components never call out,
    /// and a node holding thousands of them keeps no client for those.
    client: OnceLock<OutboundClient>,
}

impl OutboundGrant {
    fn client(&self) -> Result<&OutboundClient, HttpError> {
        if let Some(client) = self.client.get() {
            return Ok(client);
        }
        let client = OutboundClient::new(self.policy.clone()).map_err(|e| {
            tracing::error!(component = self.policy.component(), "{e}");
            HttpError::InternalError(Some(e))
        })?;
        // Two first calls at once may both build one; either will do.
        Ok(self.client.get_or_init(|| client))
    }
}

impl OutboundHttp {
    /// Builds the component's policy and client.
    ///
    /// # Errors
    ///
    /// When the TLS client cannot be configured.
    pub fn prepare(spec: &ComponentSpec, cx: &PrepareContext<'_>) -> Result<OutboundHttp, String> {
        let policy = Arc::new(OutboundPolicy::new(
            cx.component.as_str(),
            spec.allowed_outbound_hosts.clone(),
        ));
        client::check_tls()?;
        Ok(OutboundHttp {
            grant: Arc::new(OutboundGrant {
                policy,
                client: OnceLock::new(),
            }),
        })
    }
}

impl Capability for OutboundHttp {
    fn grant(&self, instance: &mut InstanceBuilder) -> Result<(), String> {
        instance.outbound = Some(self.grant.clone());
        Ok(())
    }
}

/// The `wasi:http` hooks of one instance: policy, address and count checks
/// in front of the component's client.
pub struct OutboundHooks {
    /// `None`: no outbound HTTP at all.
    pub grant: Option<Arc<OutboundGrant>>,
    /// Outbound requests this instance may still attempt.
    pub remaining: u32,
    /// Whether running out of `remaining` was logged already.
    pub limit_logged: bool,
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

impl OutboundHooks {
    /// Decides whether `uri` may be requested now; on refusal logs why and
    /// returns the error code the guest sees.
    fn admit(&mut self, uri: &http::Uri) -> Result<Arc<OutboundGrant>, HttpError> {
        let Some(grant) = self.grant.clone() else {
            return Err(HttpError::HttpRequestDenied);
        };
        let component = grant.policy.component();
        // Every attempt counts, refused ones included, so a guest looping on
        // a forbidden call is cut off (and logged) a bounded number of times.
        if self.remaining == 0 {
            if !self.limit_logged {
                self.limit_logged = true;
                tracing::warn!(component, %uri, reason = "outbound_limit", "outbound request refused: limits.max_outbound_requests reached");
            }
            return Err(HttpError::ConnectionLimitReached);
        }
        self.remaining -= 1;
        if !grant.policy.allows(uri) {
            tracing::warn!(component, %uri, reason = "outbound_denied", "outbound request denied: not in allowed_outbound_hosts");
            return Err(HttpError::HttpRequestDenied);
        }
        // An IP literal is checked here; names are checked once resolved,
        // by the client's connector.
        let scheme = uri.scheme_str().unwrap_or("http");
        let port = uri
            .port_u16()
            .unwrap_or_else(|| policy::default_port(scheme));
        if let Some(host) = uri.host()
            && let Ok(ip) = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
            && !grant.policy.permits_address(scheme, host, port, ip)
        {
            tracing::warn!(component, %uri, reason = "outbound_internal_address", "outbound request refused: internal address not named with this scheme and port in allowed_outbound_hosts");
            return Err(HttpError::DestinationIpProhibited);
        }
        Ok(grant)
    }
}

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        let grant = match self.admit(request.uri()) {
            Ok(grant) => grant,
            Err(code) => return Box::new(async move { Err(code) }),
        };
        let options = options.unwrap_or_default();
        let head_timeout = match (options.connect_timeout, options.first_byte_timeout) {
            (None, None) => DEFAULT_HEAD_TIMEOUT,
            (connect, first_byte) => {
                connect.unwrap_or(client::CONNECT_TIMEOUT)
                    + first_byte.unwrap_or(DEFAULT_HEAD_TIMEOUT)
            }
        };
        let between_bytes = options
            .between_bytes_timeout
            .unwrap_or(DEFAULT_BETWEEN_BYTES_TIMEOUT);
        Box::new(async move {
            let response = grant
                .client()?
                .send(request, head_timeout, between_bytes)
                .await?;
            Ok((
                response,
                Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}
