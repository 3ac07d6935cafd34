//! The mesh's Prometheus metrics: requests forwarded to other nodes by
//! peer and outcome, TLS handshakes by endpoint, side and outcome, and
//! when this process's certificates expire.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use std::sync::LazyLock;

/// What became of one attempt to forward a request to a peer node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ForwardOutcome {
    /// The peer answered (any status but those below).
    Answered,
    /// The peer answered with a server error other than 503.
    ServerError,
    /// The peer refused it before any guest code ran (overload, memory).
    Refused,
    /// The peer no longer runs the replica.
    NotHere,
    /// No answer within the request's time.
    Timeout,
    /// No connection, a TLS failure, or the connection was lost.
    Failed,
}

impl ForwardOutcome {
    fn as_str(self) -> &'static str {
        match self {
            ForwardOutcome::Answered => "answered",
            ForwardOutcome::ServerError => "server_error",
            ForwardOutcome::Refused => "refused",
            ForwardOutcome::NotHere => "not_here",
            ForwardOutcome::Timeout => "timeout",
            ForwardOutcome::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ForwardLabels {
    peer: String,
    outcome: &'static str,
}

/// Forwards to other nodes, by peer and outcome.
#[derive(Debug, Clone, Default)]
pub(crate) struct ForwardMetrics {
    forwards: Family<ForwardLabels, Counter>,
}

impl ForwardMetrics {
    /// Counts one attempt to `peer`.
    pub(crate) fn record(&self, peer: &str, outcome: ForwardOutcome) {
        self.forwards
            .get_or_create(&ForwardLabels {
                peer: peer.to_string(),
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// Adds these to `registry`.
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "mesh_forwards",
            "Attempts to forward a request to a peer node, by peer and outcome",
            self.forwards.clone(),
        );
    }
}

/// Which side of a TLS handshake this process was on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// It accepted the connection.
    Server,
    /// It opened the connection (TCP connect included).
    Client,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    endpoint: &'static str,
    side: &'static str,
    outcome: &'static str,
}

/// TLS handshakes of this process: one family whatever serves them (the
/// control plane's API, a node's mesh endpoint, its mesh client), as
/// `skiff up` runs them all in one process.
static HANDSHAKES: LazyLock<Family<HandshakeLabels, Counter>> = LazyLock::new(Family::default);

/// Counts one handshake on `endpoint` (`api`, `mesh`, `ingress` for
/// HTTPS ingress): `outcome` is
/// `ok`, `refused` or `timeout` (client side: `failed` covers the TCP
/// connect too).
pub fn count_handshake(endpoint: &'static str, side: Side, outcome: &'static str) {
    HANDSHAKES
        .get_or_create(&HandshakeLabels {
            endpoint,
            side: match side {
                Side::Server => "server",
                Side::Client => "client",
            },
            outcome,
        })
        .inc();
}

/// Adds the handshake counters to `registry`; once per process.
pub fn register_handshakes(registry: &mut Registry) {
    registry.register(
        "tls_handshakes",
        "TLS handshakes, by endpoint (api, mesh, ingress), side and outcome",
        HANDSHAKES.clone(),
    );
}

/// Reports when certificates expire, read at each scrape: `read` gives
/// each certificate's name and its PEM (the first certificate in it
/// counts).
pub(crate) struct CertificateExpiry<F>(pub(crate) F);

impl<F> std::fmt::Debug for CertificateExpiry<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertificateExpiry")
    }
}

impl<F> Collector for CertificateExpiry<F>
where
    F: Fn() -> Vec<(&'static str, String)> + Send + Sync + 'static,
{
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "certificate_expiry_timestamp",
            "When a certificate this process presents or trusts stops being valid, Unix time.",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        for (name, pem) in (self.0)() {
            let Some(not_after) = not_after(&pem) else {
                continue;
            };
            ConstGauge::new(not_after).encode(family.encode_family(&[("certificate", name)])?)?;
        }
        Ok(())
    }
}

/// The `not_after` of the first certificate in `pem`, Unix seconds.
fn not_after(pem: &str) -> Option<i64> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(cert.validity().not_after.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_and_certificate_expiry_are_encoded() {
        let forwards = ForwardMetrics::default();
        forwards.record("b", ForwardOutcome::Answered);
        forwards.record("b", ForwardOutcome::Answered);
        forwards.record("c", ForwardOutcome::Timeout);
        let ca = crate::mesh::ca::ClusterCa::create("test").expect("a CA");
        let pem = ca.cert_pem().to_string();
        let mut registry = Registry::with_prefix("skiff");
        forwards.register(&mut registry);
        registry.register_collector(Box::new(CertificateExpiry(move || {
            vec![("ca", pem.clone()), ("broken", "not a pem".to_string())]
        })));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"skiff_mesh_forwards_total{peer="b",outcome="answered"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"skiff_mesh_forwards_total{peer="c",outcome="timeout"} 1"#));
        let line = text
            .lines()
            .find(|line| {
                line.starts_with(r#"skiff_certificate_expiry_timestamp_seconds{certificate="ca"}"#)
            })
            .unwrap_or_else(|| panic!("{text}"));
        let expiry: i64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(expiry > crate::clock::unix_secs() as i64, "{line}");
        assert!(!text.contains("broken"));
    }
}
