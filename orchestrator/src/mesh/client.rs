//! Clients of other nodes' mesh endpoints: HTTP/1.1 over mTLS, presenting
//! one certificate (the node's, or a workload's), resolving node names to
//! the mesh addresses the control plane reported so TLS checks the name
//! in the peer's certificate, and bounding connect plus handshake time.
//! Connections are pooled and reused: the steady path never handshakes.

use super::{Members, NodeIdentity};
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;
use std::collections::HashMap;
use std::future::Ready;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

/// Connecting to a peer node (TCP) may take this long before the next is
/// tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Connecting and the TLS handshake together may take this long: a frozen
/// node's kernel still accepts TCP connections, but it never answers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The body of a request forwarded to another node.
pub(crate) type ForwardBody = UnsyncBoxBody<Bytes, BoxError>;
/// A client of other nodes' mesh endpoints, presenting one certificate.
pub(crate) type MeshClient =
    Client<Bounded<HttpsConnector<HttpConnector<MeshResolver>>>, ForwardBody>;
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Resolves node names (the DNS names in their certificates) to the mesh
/// addresses the control plane reported, so TLS verifies the peer's name.
#[derive(Clone)]
pub(crate) struct MeshResolver {
    addresses: Arc<RwLock<HashMap<String, SocketAddr>>>,
}

impl tower_service::Service<Name> for MeshResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Ready<Result<Self::Response, std::io::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), std::io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let found = self
            .addresses
            .read()
            .expect("mesh address lock")
            .get(name.as_str())
            .copied();
        std::future::ready(found.map(|addr| vec![addr].into_iter()).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no mesh address known for node {}", name.as_str()),
            )
        }))
    }
}

/// A connector that gives up when connecting takes longer than `limit`;
/// the client then reports a connect error, so the request moves on.
#[derive(Clone)]
pub(crate) struct Bounded<C> {
    inner: C,
    limit: Duration,
}

impl<C> tower_service::Service<http::Uri> for Bounded<C>
where
    C: tower_service::Service<http::Uri>,
    C::Response: Send + 'static,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let limit = self.limit;
        Box::pin(async move {
            let count = |outcome| {
                super::metrics::count_handshake("mesh", super::metrics::Side::Client, outcome)
            };
            match tokio::time::timeout(limit, connecting).await {
                Ok(Ok(connected)) => {
                    count("ok");
                    Ok(connected)
                }
                Ok(Err(e)) => {
                    count("failed");
                    Err(e.into())
                }
                Err(_) => {
                    count("timeout");
                    Err(ConnectTimeout(limit).into())
                }
            }
        })
    }
}

/// Connecting and the TLS handshake together took longer than this.
#[derive(Debug)]
struct ConnectTimeout(Duration);

impl std::fmt::Display for ConnectTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no TLS connection within {:?}", self.0)
    }
}

impl std::error::Error for ConnectTimeout {}

/// `error` and each of its sources, joined by ": " (the client's own
/// message alone, "client error (Connect)", does not say what failed).
pub(crate) fn with_sources(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What kind of failure `error` was, in words safe to show any client.
pub(crate) fn failure_kind(error: &hyper_util::client::legacy::Error) -> String {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        if let Some(timeout) = current.downcast_ref::<ConnectTimeout>() {
            return timeout.to_string();
        }
        if current.downcast_ref::<rustls::Error>().is_some() {
            return "TLS handshake failed".to_string();
        }
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            // An io::Error hides the error it wraps from `source()`.
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
            {
                return "TLS handshake failed".to_string();
            }
            // The operating system's own words ("Connection refused (os
            // error 111)") carry no secrets; a wrapped error might.
            return match io.get_ref() {
                None => io.to_string(),
                Some(inner) if inner.is::<ConnectTimeout>() => io.to_string(),
                Some(_) => io.kind().to_string(),
            };
        }
        cause = current.source();
    }
    if error.is_connect() {
        "cannot connect".to_string()
    } else {
        "connection lost".to_string()
    }
}

/// A pooled client presenting `identity` to the peers `members` holds
/// current, at the addresses in `addresses`.
pub(crate) fn client(
    identity: &NodeIdentity,
    members: &Members,
    addresses: &Arc<RwLock<HashMap<String, SocketAddr>>>,
) -> anyhow::Result<MeshClient> {
    let mut http = HttpConnector::new_with_resolver(MeshResolver {
        addresses: addresses.clone(),
    });
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*identity.client_config(members)?).clone())
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(Bounded {
            inner: https,
            limit: HANDSHAKE_TIMEOUT,
        }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Empty;
    use hyper_util::rt::TokioIo;

    /// A connector that fails each connection with `error`, or never
    /// finishes when it gives none.
    #[derive(Clone)]
    struct Failing(Arc<dyn Fn() -> Option<std::io::Error> + Send + Sync>);

    impl tower_service::Service<http::Uri> for Failing {
        type Response = TokioIo<tokio::net::TcpStream>;
        type Error = std::io::Error;
        type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Uri) -> Self::Future {
            match (self.0)() {
                Some(error) => Box::pin(async move { Err(error) }),
                None => Box::pin(std::future::pending()),
            }
        }
    }

    /// What a client is told when connecting fails with `error`.
    async fn told(error: impl Fn() -> Option<std::io::Error> + Send + Sync + 'static) -> String {
        let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(Bounded {
            inner: Failing(Arc::new(error)),
            limit: Duration::from_millis(20),
        });
        let failed = client
            .request(
                hyper::Request::get("http://node-b/")
                    .body(Empty::new())
                    .unwrap(),
            )
            .await
            .expect_err("connecting fails");
        failure_kind(&failed)
    }

    #[tokio::test]
    async fn a_client_learns_the_kind_of_failure_but_not_the_certificates_details() {
        let tls = told(|| {
            Some(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::General(
                    "the peer's certificate names node \"node-c\" of cluster \"prod\"".into(),
                ),
            ))
        })
        .await;
        assert_eq!(tls, "TLS handshake failed");
        assert_eq!(
            told(|| Some(std::io::Error::from_raw_os_error(111))).await,
            "Connection refused (os error 111)"
        );
        assert_eq!(told(|| None).await, "no TLS connection within 20ms");
        let wrapped = told(|| {
            Some(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "peer 10.0.0.7 said something",
            ))
        })
        .await;
        assert_eq!(wrapped, "connection reset");
    }
}
