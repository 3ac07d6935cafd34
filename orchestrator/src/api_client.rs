//! A client of the control plane's `/v1` API over TLS: JSON in and out,
//! errors turned into messages naming the server and what it said. The
//! CLI uses it with the admin token; nodes use it with their certificate.
//!
//! A cluster may have several control planes (on one etcd), of which one
//! leads and the rest stand by: the client knows their URLs, sends to the
//! one that answered last, follows a standby's pointer to the leader
//! ([`LEADER_HEADER`]), and moves on to the next when one cannot be
//! reached.

use crate::api::ErrorBody;
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;

/// How long one API call may take unless the caller says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The header an error answer repeats its reason in, for answers without
/// a body (a HEAD's).
pub const REASON_HEADER: &str = "skiff-error";

/// How long a call waits for the control planes to elect a leader.
const ELECTION_WAIT: Duration = Duration::from_secs(10);

/// The header a standby control plane names the leader's URL in, with
/// its 503.
pub const LEADER_HEADER: &str = "skiff-leader";

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The server could not be reached or did not answer in time.
    #[error(
        "cannot reach the control plane at {server}: {reason} (is `skiff up` or `skiff server` running there?)"
    )]
    Unreachable {
        /// The server's URL.
        server: String,
        /// What went wrong.
        reason: String,
    },
    /// The server answered with an error.
    #[error("{message}")]
    Refused {
        /// The HTTP status.
        status: StatusCode,
        /// The server's message.
        message: String,
    },
    /// The server's answer was not what this version of Skiff expects.
    #[error(
        "unexpected answer from the control plane for {path}: {reason} (is it the same Skiff version as this CLI?)"
    )]
    Decode {
        /// The API path.
        path: String,
        /// What was wrong.
        reason: String,
    },
}

impl ApiError {
    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ApiError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client of a cluster's control planes.
#[derive(Clone)]
pub struct ApiClient {
    servers: Arc<std::sync::Mutex<Servers>>,
    token: Option<String>,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// The control planes' URLs, the one to try first at the front.
#[derive(Debug, Clone)]
struct Servers(Vec<String>);

impl Servers {
    /// `first` moves to the front (added if new).
    fn prefer(&mut self, first: &str) {
        self.0.retain(|s| s != first);
        self.0.insert(0, first.to_string());
    }
}

/// How a try at one server failed.
enum Failed {
    /// Nothing was sent (no connection), or no answer came (a control
    /// plane frozen, or cut off): the next server may take it. A request
    /// that did arrive is one a standby refuses, or a leader makes as it
    /// would once: deploys and scales are declarations.
    NotSent(ApiError),
    /// A standby refused it, naming the leader (if it knows one).
    Standby(ApiError, Option<String>),
    /// Anything else: the answer.
    Final(ApiError),
}

impl ApiClient {
    /// A client of `servers` (`https://host:port`, or several separated by
    /// commas) with `tls` settings and, for admin calls, a bearer `token`.
    pub fn new(servers: &str, tls: Arc<rustls::ClientConfig>, token: Option<String>) -> ApiClient {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        ApiClient {
            servers: Arc::new(std::sync::Mutex::new(Servers(split_servers(servers)))),
            token,
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(https),
        }
    }

    /// The server tried first: the one that answered last.
    pub fn server(&self) -> String {
        self.servers.lock().expect("servers lock").0[0].clone()
    }

    /// Every server known, the one tried first at the front, separated by
    /// commas (as [`ApiClient::new`] takes them).
    pub fn servers(&self) -> String {
        self.servers.lock().expect("servers lock").0.join(",")
    }

    /// Learns of the cluster's control planes (a heartbeat names them):
    /// new ones are added after those known, which stay (a URL given by
    /// hand may name one by another address).
    pub fn set_servers(&self, servers: &[String]) {
        let mut known = self.servers.lock().expect("servers lock");
        for server in servers {
            let server = server.trim_end_matches('/');
            let usable = server
                .parse::<http::Uri>()
                .is_ok_and(|uri| uri.scheme_str() == Some("https") && uri.host().is_some());
            if usable && !known.0.iter().any(|k| k == server) {
                known.0.push(server.to_string());
            }
        }
    }

    /// Runs `attempt` against the servers in turn: the one that answered
    /// last, then a leader a standby names, then the others; at most one
    /// try each. While no control plane leads (an election is under way),
    /// tries again for up to [`ELECTION_WAIT`].
    async fn with_failover<T, F, Fut>(&self, mut attempt: F) -> Result<T, ApiError>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = Result<T, Failed>>,
    {
        let deadline = tokio::time::Instant::now() + ELECTION_WAIT;
        loop {
            let mut queue = self.servers.lock().expect("servers lock").0.clone();
            let mut tried: Vec<String> = Vec::new();
            let mut last = None;
            let mut electing = false;
            while let Some(server) = queue.first().cloned() {
                queue.remove(0);
                if tried.contains(&server) {
                    continue;
                }
                tried.push(server.clone());
                match attempt(server.clone()).await {
                    Ok(answer) => {
                        self.servers.lock().expect("servers lock").prefer(&server);
                        return Ok(answer);
                    }
                    Err(Failed::Final(e)) => return Err(e),
                    Err(Failed::NotSent(e)) => last = Some(e),
                    Err(Failed::Standby(e, leader)) => {
                        // A leader already tried is a run of it that is
                        // gone, whose lease has not expired yet.
                        match leader.filter(|l| l.starts_with("https://") && !tried.contains(l)) {
                            Some(leader) => queue.insert(0, leader),
                            None => electing = true,
                        }
                        // Why no control plane can lead (its store) says
                        // more than a standby's pointer: it is kept.
                        let says_why = |e: &ApiError| e.to_string().contains("store unavailable");
                        if !last.as_ref().is_some_and(says_why) || says_why(&e) {
                            last = Some(e);
                        }
                    }
                }
            }
            if !electing || tokio::time::Instant::now() >= deadline {
                return Err(last.expect("there is always a server to try"));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Sends `request` (whose URI is a path) to `server`; the answer's
    /// status and head, or how it failed.
    async fn exchange(
        &self,
        server: &str,
        method: &Method,
        path: &str,
        body: Option<&(Bytes, &str)>,
        timeout: Duration,
    ) -> Result<hyper::Response<hyper::body::Incoming>, Failed> {
        let unreachable = |reason: String| ApiError::Unreachable {
            server: server.to_string(),
            reason,
        };
        let mut request = http::Request::builder()
            .method(method.clone())
            .uri(format!("{server}{path}"));
        if let Some(token) = &self.token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some((bytes, content_type)) => {
                request = request.header(http::header::CONTENT_TYPE, *content_type);
                Full::new(bytes.clone())
            }
            None => Full::new(Bytes::new()),
        };
        // A URL that makes no request (a bad one learned) is skipped.
        let request = request
            .body(body)
            .map_err(|e| Failed::NotSent(unreachable(format!("bad request {path}: {e}"))))?;
        let response = match tokio::time::timeout(timeout, self.client.request(request)).await {
            Err(_) => {
                return Err(Failed::NotSent(unreachable(format!(
                    "no answer within {timeout:?}"
                ))));
            }
            Ok(Err(e)) => {
                let not_sent = e.is_connect();
                let mut reason = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(inner) = source {
                    reason = format!("{reason}: {inner}");
                    source = inner.source();
                }
                let error = unreachable(reason);
                return Err(if not_sent {
                    Failed::NotSent(error)
                } else {
                    Failed::Final(error)
                });
            }
            Ok(Ok(response)) => response,
        };
        if response.status() == StatusCode::SERVICE_UNAVAILABLE
            && let Some(leader) = response.headers().get(LEADER_HEADER)
        {
            let leader = leader
                .to_str()
                .ok()
                .map(|l| l.trim_end_matches('/').to_string());
            let error = refusal(response, timeout).await;
            return Err(Failed::Standby(error, leader.filter(|l| !l.is_empty())));
        }
        Ok(response)
    }

    /// Sends one request and returns the body of a 2xx answer.
    ///
    /// # Errors
    ///
    /// [`ApiError`]: unreachable, refused (with the server's message), or
    /// over `timeout`.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(Bytes, &str)>,
        timeout: Duration,
    ) -> Result<Bytes, ApiError> {
        self.with_failover(|server| {
            let (method, body) = (&method, body.as_ref());
            async move {
                let response = self.exchange(&server, method, path, body, timeout).await?;
                if !response.status().is_success() {
                    return Err(Failed::Final(refusal(response, timeout).await));
                }
                let collected = tokio::time::timeout(timeout, response.into_body().collect());
                match collected.await {
                    Ok(Ok(body)) => Ok(body.to_bytes()),
                    Ok(Err(e)) => Err(Failed::Final(ApiError::Unreachable {
                        server,
                        reason: e.to_string(),
                    })),
                    Err(_) => Err(Failed::Final(ApiError::Unreachable {
                        server,
                        reason: format!("no answer within {timeout:?}"),
                    })),
                }
            }
        })
        .await
    }

    /// `GET path`, answering with the body of a 2xx answer as a stream, for
    /// bodies too large to hold in memory. Only the wait for the answer's
    /// head is bounded, by `timeout`; the caller bounds the body.
    ///
    /// # Errors
    ///
    /// As [`ApiClient::send`].
    pub async fn download(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Result<http_body_util::BodyDataStream<hyper::body::Incoming>, ApiError> {
        self.with_failover(|server| async move {
            let response = self
                .exchange(&server, &Method::GET, path, None, timeout)
                .await?;
            if response.status().is_success() {
                return Ok(response.into_body().into_data_stream());
            }
            Err(Failed::Final(refusal(response, timeout).await))
        })
        .await
    }

    /// `GET path`, decoding JSON.
    ///
    /// # Errors
    ///
    /// As [`ApiClient::send`], or an answer that does not decode.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        let bytes = self.send(Method::GET, path, None, DEFAULT_TIMEOUT).await?;
        decode(path, &bytes)
    }

    /// `method path` with a JSON body, decoding a JSON answer.
    ///
    /// # Errors
    ///
    /// As [`ApiClient::get`].
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<T, ApiError> {
        let json = Bytes::from(serde_json::to_vec(body).expect("a request serializes"));
        let bytes = self
            .send(method, path, Some((json, "application/json")), timeout)
            .await?;
        decode(path, &bytes)
    }

    /// `POST path` with a JSON body, decoding a JSON answer.
    ///
    /// # Errors
    ///
    /// As [`ApiClient::get`].
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ApiError> {
        self.call(Method::POST, path, body, DEFAULT_TIMEOUT).await
    }
}

/// The servers in `text`, separated by commas, without trailing slashes.
fn split_servers(text: &str) -> Vec<String> {
    let servers: Vec<String> = text
        .split(',')
        .map(|s| s.trim().trim_end_matches('/').to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if servers.is_empty() {
        vec![text.to_string()]
    } else {
        servers
    }
}

/// The error an answer that is not 2xx says: its JSON message, else its
/// status and text (at most 64 KiB of it is read).
async fn refusal(response: hyper::Response<hyper::body::Incoming>, timeout: Duration) -> ApiError {
    let status = response.status();
    let reason = response
        .headers()
        .get(REASON_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_string);
    let bytes = tokio::time::timeout(
        timeout,
        http_body_util::Limited::new(response.into_body(), 64 << 10).collect(),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .map(|c| c.to_bytes())
    .unwrap_or_default();
    let message = serde_json::from_slice::<ErrorBody>(&bytes)
        .map(|e| e.error)
        .ok()
        .or(reason)
        .unwrap_or_else(|| format!("{status}: {}", String::from_utf8_lossy(&bytes).trim()));
    ApiError::Refused { status, message }
}

fn decode<T: DeserializeOwned>(path: &str, bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::Decode {
        path: path.to_string(),
        reason: e.to_string(),
    })
}
