//! A client of the control plane's `/v1` API over TLS: JSON in and out,
//! errors turned into messages naming the server and what it said. The
//! CLI uses it with the admin token; nodes use it with their certificate.

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

/// A client of one control plane.
#[derive(Clone)]
pub struct ApiClient {
    server: String,
    token: Option<String>,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl ApiClient {
    /// A client of `server` (`https://host:port`) with `tls` settings and,
    /// for admin calls, a bearer `token`.
    pub fn new(server: &str, tls: Arc<rustls::ClientConfig>, token: Option<String>) -> ApiClient {
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
            server: server.trim_end_matches('/').to_string(),
            token,
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(https),
        }
    }

    /// The server's URL.
    pub fn server(&self) -> &str {
        &self.server
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
        let unreachable = |reason: String| ApiError::Unreachable {
            server: self.server.clone(),
            reason,
        };
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.server));
        if let Some(token) = &self.token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some((bytes, content_type)) => {
                request = request.header(http::header::CONTENT_TYPE, content_type);
                Full::new(bytes)
            }
            None => Full::new(Bytes::new()),
        };
        let request = request
            .body(body)
            .map_err(|e| unreachable(format!("bad request {path}: {e}")))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                let mut reason = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(inner) = source {
                    reason = format!("{reason}: {inner}");
                    source = inner.source();
                }
                unreachable(reason)
            })?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            Ok::<_, ApiError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {timeout:?}")))??;
        if status.is_success() {
            return Ok(bytes);
        }
        let message = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|e| e.error)
            .unwrap_or_else(|_| format!("{status}: {}", String::from_utf8_lossy(&bytes).trim()));
        Err(ApiError::Refused { status, message })
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
        let unreachable = |reason: String| ApiError::Unreachable {
            server: self.server.clone(),
            reason,
        };
        let mut request = http::Request::builder()
            .method(Method::GET)
            .uri(format!("{}{path}", self.server));
        if let Some(token) = &self.token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|e| unreachable(format!("bad request {path}: {e}")))?;
        let response = tokio::time::timeout(timeout, self.client.request(request))
            .await
            .map_err(|_| unreachable(format!("no answer within {timeout:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response.into_body().into_data_stream());
        }
        // An error answer is small; read at most 64 KiB of it.
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
            .unwrap_or_else(|_| format!("{status}: {}", String::from_utf8_lossy(&bytes).trim()));
        Err(ApiError::Refused { status, message })
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

fn decode<T: DeserializeOwned>(path: &str, bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::Decode {
        path: path.to_string(),
        reason: e.to_string(),
    })
}
