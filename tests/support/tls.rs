//! TLS from the outside, as a peer or a stranger would see it: one
//! exchange with a server, and what identifies the certificates involved.

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a TLS exchange ended, and how long it took.
pub struct Exchange {
    /// The certificate the server presented and the first bytes of its
    /// answer, or the TLS error that ended the exchange (anything else,
    /// including no answer within 30 s, as `Error::General`).
    pub answer: Result<(CertificateDer<'static>, String), rustls::Error>,
    /// From connecting to the answer or the error.
    pub took: Duration,
}

/// Sends `request` over TLS with `tls` to `addr`, expecting the server
/// to be `server` (a name or an IP address). Under TLS 1.3 a refused
/// client certificate shows on the first read, as the server's alert.
pub fn exchange(
    runtime: &tokio::runtime::Runtime,
    addr: &str,
    server: &str,
    tls: Arc<rustls::ClientConfig>,
    request: &[u8],
) -> Exchange {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tls_error = |e: std::io::Error| match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => tls.clone(),
        None => rustls::Error::General(format!("not a TLS error: {e}")),
    };
    let server = rustls::pki_types::ServerName::try_from(server.to_string()).unwrap();
    let started = Instant::now();
    let answer = runtime.block_on(async {
        let exchange = async {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let connector = tokio_rustls::TlsConnector::from(tls);
            let mut stream = connector.connect(server, stream).await.map_err(tls_error)?;
            let presented = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
            let _ = stream.write_all(request).await;
            let mut buf = [0u8; 64];
            match stream.read(&mut buf).await.map_err(tls_error)? {
                0 => Err(rustls::Error::General("closed without an answer".into())),
                n => Ok((presented, String::from_utf8_lossy(&buf[..n]).into_owned())),
            }
        };
        tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .unwrap_or_else(|_| Err(rustls::Error::General("no answer within 30s".into())))
    });
    Exchange {
        answer,
        took: started.elapsed(),
    }
}

/// What identifies a certificate: its serial number, and its expiry (Unix
/// seconds).
#[derive(Clone, Debug, PartialEq)]
pub struct CertInfo {
    /// Hex, colon-separated.
    pub serial: String,
    /// Unix seconds.
    pub not_after: i64,
}

impl CertInfo {
    /// Of the certificate `der`.
    pub fn of(der: &[u8]) -> CertInfo {
        let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        CertInfo {
            serial: cert.raw_serial_as_string(),
            not_after: cert.validity().not_after.timestamp(),
        }
    }

    /// Of the first certificate in `pem`.
    pub fn of_pem(pem: &str) -> CertInfo {
        CertInfo::of(&CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
    }
}

/// Now, in Unix seconds, as certificates count time.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// What an HTTPS request came back with.
#[derive(Debug)]
pub struct HttpsAnswer {
    /// The HTTP version spoken (ALPN's choice).
    pub version: http::Version,
    /// The status.
    pub status: u16,
    /// The headers.
    pub headers: http::HeaderMap,
    /// The body, as text.
    pub body: String,
    /// The certificate the server presented.
    pub certificate: CertificateDer<'static>,
}

/// A TLS client trusting only the roots in `roots_pem`, offering `alpn`.
pub fn client_trusting(roots_pem: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// `GET path` over TLS at `addr` as `host` (its SNI and authority),
/// speaking HTTP/2 if ALPN chose it, else HTTP/1.1; `Err` with the
/// handshake's or request's error.
pub fn https_get(
    addr: &str,
    host: &str,
    tls: Arc<rustls::ClientConfig>,
    path: &str,
) -> Result<HttpsAnswer, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let fetch = async {
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| e.to_string())?;
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .map_err(|e| e.to_string())?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, stream)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            let certificate = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            let io = hyper_util::rt::TokioIo::new(stream);
            let empty = http_body_util::Empty::<bytes::Bytes>::new();
            let response = if h2 {
                let (mut sender, connection) =
                    hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                        .await
                        .map_err(|e| e.to_string())?;
                tokio::spawn(connection);
                let request = http::Request::get(format!("https://{host}{path}"))
                    .body(empty)
                    .unwrap();
                sender.send_request(request).await
            } else {
                let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(connection);
                let request = http::Request::get(path)
                    .header(http::header::HOST, host)
                    .body(empty)
                    .unwrap();
                sender.send_request(request).await
            }
            .map_err(|e| e.to_string())?;
            let version = response.version();
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            use http_body_util::BodyExt;
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok(HttpsAnswer {
                version,
                status,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
                certificate,
            })
        };
        tokio::time::timeout(Duration::from_secs(30), fetch)
            .await
            .unwrap_or_else(|_| Err("no answer within 30s".to_string()))
    })
}
