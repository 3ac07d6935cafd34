//! The control plane's `/v1` API over TLS. Three kinds of caller: the CLI
//! (bearer admin token), nodes (their CA-signed client certificate), and
//! joining nodes (a one-time join token in the body). Every refusal is a
//! JSON `{"error": ...}` naming what was wrong.

use super::cluster::{Refused, apps, certs, heartbeat, members, nodes};
use super::deadline::{self, BodyError, TimedBody};
use super::leader::Role;
use super::{Shared, views};
use crate::api::ErrorBody;
use crate::api_client::{LEADER_HEADER, REASON_HEADER};
use crate::mesh::NodeCert;
use crate::mesh::admission::{Admission, Trust};
use crate::state::ReplicaRecord;
use bytes::Bytes;
use futures::TryStreamExt;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use skiff_runtime::package::blob::{BlobSize, MAX_BLOB_SIZE};
use skiff_runtime::package::{Digest, StoreError};
use skiff_runtime::server::{accept_until, serve_http1};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Largest blob a deploy may upload.
pub const MAX_BLOB: u64 = MAX_BLOB_SIZE;
/// How long an upload may go without sending data.
const BLOB_IDLE: Duration = Duration::from_secs(60);
/// Largest JSON body.
const MAX_JSON: usize = 16 << 20;
/// Largest join body: a join is a token, a name and a CSR, a few KiB. It
/// is read before any credential is checked, so it is kept small.
const MAX_JOIN: usize = 64 << 10;
/// Largest certificate body: a chain and a key, each at most
/// [`crate::certs::MAX_PEM_BYTES`], JSON-escaped.
const MAX_CERT: usize = 4 * crate::certs::MAX_PEM_BYTES;

/// A response body: a small buffer, or a blob streamed from its file.
pub(super) type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;
type Response = hyper::Response<Body>;

pub(super) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}
/// A request whose body must arrive by its deadline.
pub(super) type Request = hyper::Request<TimedBody>;

/// Accepts TLS connections and serves the API until `shutdown`.
pub(super) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let admission = Admission::new(
        "API",
        shared.config.max_connections,
        shared.config.max_connections_per_ip,
        ["--max-connections", "--max-connections-per-ip"],
        Trust::Address,
    );
    accept_until(
        listener,
        shutdown,
        Duration::from_secs(5),
        move |accepted| {
            // Over a limit, the connection is closed here, before the TLS
            // handshake costs anything.
            let Some(mut slot) = admission.admit(accepted.peer.ip()) else {
                return;
            };
            let acceptor = acceptor.clone();
            let shared = shared.clone();
            tokio::spawn(async move {
                let Some(tls) =
                    crate::mesh::tls::accept("api", &acceptor, accepted.stream, accepted.peer)
                        .await
                else {
                    return;
                };
                let node = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .and_then(|cert| NodeCert::of(cert, &shared.cluster));
                // Only a current member escapes the per-address cap: a
                // forgotten node's certificate still chains to the CA.
                let leading = *shared.role.borrow() == Role::Leading;
                if leading
                    && node
                        .as_ref()
                        .is_some_and(|n| members::member(&shared, n).is_ok())
                {
                    slot.trusted();
                }
                let expires = crate::mesh::tls::peer_expiry(tls.get_ref().1);
                let closing = (shared.clone(), node.clone());
                let service = hyper::service::service_fn(move |request| {
                    let shared = shared.clone();
                    // A certificate that expired since the handshake no
                    // longer speaks for its node, as in a new handshake.
                    let node = node.clone().filter(|_| {
                        expires.is_some_and(|at| (crate::clock::unix_secs() as i64) < at)
                    });
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            handle(&shared, node.as_ref(), request).await,
                        )
                    }
                });
                serve_http1(accepted.watcher, TokioIo::new(tls), service).await;
                drop(slot);
                if let (shared, Some(node)) = closing {
                    heartbeat::connection_closed(&shared, &node);
                }
            });
        },
    )
    .await;
}

/// A refusal with a status and a message.
#[derive(Debug)]
pub(super) struct Refusal(StatusCode, String);

impl Refusal {
    fn bad(message: impl Into<String>) -> Refusal {
        Refusal(StatusCode::BAD_REQUEST, message.into())
    }
    fn not_found(message: impl Into<String>) -> Refusal {
        Refusal(StatusCode::NOT_FOUND, message.into())
    }
    fn internal(e: impl std::fmt::Display) -> Refusal {
        Refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

type Handled = Result<Response, Refusal>;

impl From<Refused> for Refusal {
    fn from(refused: Refused) -> Refusal {
        let status = match &refused {
            Refused::Invalid(_) => StatusCode::BAD_REQUEST,
            Refused::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Refused::Forbidden(_) => StatusCode::FORBIDDEN,
            Refused::NotFound(_) => StatusCode::NOT_FOUND,
            Refused::Conflict(_) => StatusCode::CONFLICT,
            Refused::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refused::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Refusal(status, refused.message().to_string())
    }
}

/// `value` as a 200 JSON answer.
fn ok<T: Serialize>(value: &T) -> Handled {
    json(StatusCode::OK, value)
}

async fn handle(
    shared: &Shared,
    node: Option<&NodeCert>,
    request: hyper::Request<Incoming>,
) -> Response {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let mut accounted = Accounted {
        shared,
        method: &method,
        path: &path,
        started,
        status: None,
    };
    let query = request.uri().query().unwrap_or("").to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    // The body's deadline runs from now, whoever reads it.
    let deadline = match (&method, segments.as_slice()) {
        (&Method::PUT, ["v1", "blobs", _] | ["v1", "standby", "blobs", _]) => deadline::for_upload(
            shared.config.body_timeout,
            content_length(&request).unwrap_or(MAX_BLOB),
        ),
        _ => shared.config.body_timeout,
    };
    let request = request.map(|body| TimedBody::new(body, deadline));
    // The leader pushes a package to its standbys before a deploy declares
    // it (`/v1/standby/blobs/DIGEST`, with the admin token); the CLI's
    // uploads (`/v1/blobs/DIGEST`) go to the leader.
    let blob = matches!(method, Method::HEAD | Method::PUT)
        && segments.starts_with(&["v1", "standby", "blobs"]);
    // Read without copying (every heartbeat passes here), in a block of
    // its own: the guard must not live across an await.
    let refused = match &*shared.role.borrow() {
        Role::Leading => None,
        Role::Standing(_) if blob => None,
        Role::Standing(leader) => Some(standing_by(&method, &path, &query, leader.as_deref())),
        // Cut off from etcd: the last state, read only, and not to nodes.
        // (and the dashboard's pages, which read it).
        Role::CutOff
            if method == Method::GET
                && (segments.first() == Some(&"ui")
                    || segments.first() == Some(&"v1") && segments.get(1) != Some(&"node")) =>
        {
            None
        }
        Role::CutOff => Some(cut_off()),
    };
    if let Some(response) = refused {
        accounted.status = Some(response.status());
        return response;
    }
    let result = route(shared, node, &method, &path, &segments, &query, request).await;
    let response = result.unwrap_or_else(|Refusal(status, error)| {
        if status.is_server_error() {
            tracing::error!("{method} {path}: {error}");
        }
        with_reason(
            json(
                status,
                &ErrorBody {
                    error: error.clone(),
                },
            )
            .expect("an error serializes"),
            &error,
        )
    });
    accounted.status = Some(response.status());
    response
}

/// Counts and times a request in the API metrics when it is answered, or
/// when it is dropped unanswered, as 499 (its client left: a held
/// heartbeat whose node died, a call given up on), so the longest waits
/// are not the ones missing.
struct Accounted<'a> {
    shared: &'a Shared,
    method: &'a Method,
    path: &'a str,
    started: std::time::Instant,
    /// The answer's status, once answered.
    status: Option<StatusCode>,
}

/// nginx's status for a request whose client closed the connection first.
const CLIENT_LEFT: u16 = 499;

impl Drop for Accounted<'_> {
    fn drop(&mut self) {
        let status = self.status.unwrap_or_else(|| {
            StatusCode::from_u16(CLIENT_LEFT).expect("499 is a valid status code")
        });
        self.shared
            .metrics
            .record_api(self.method, self.path, status, self.started.elapsed());
    }
}

/// `response` with `reason` also in [`REASON_HEADER`], where a client
/// reads it when the answer has no body (a HEAD's).
fn with_reason(mut response: Response, reason: &str) -> Response {
    let printable: String = reason
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(1000)
        .collect();
    if let Ok(value) = http::HeaderValue::from_str(&printable) {
        response.headers_mut().insert(REASON_HEADER, value);
    }
    response
}

/// The answer of a control plane standing by for the leader at `leader`:
/// its health, a browser sent to the leader's dashboard, and for anything
/// else a 503 naming the leader in [`LEADER_HEADER`], which the CLI and
/// nodes follow.
fn standing_by(method: &Method, path: &str, query: &str, leader: Option<&str>) -> Response {
    let says = match leader {
        Some(leader) => format!("this control plane is standing by; the leader is {leader}"),
        None => "this control plane is standing by, and no control plane leads right now (an election is under way); try again in a few seconds".to_string(),
    };
    if path == "/v1/health" {
        let health = serde_json::json!({"ok": true, "role": "standby", "leader": leader});
        return json(StatusCode::OK, &health).expect("health serializes");
    }
    if let (&Method::GET, Some(leader)) = (method, leader)
        && path.starts_with("/ui")
    {
        return hyper::Response::builder()
            .status(StatusCode::TEMPORARY_REDIRECT)
            .header(
                http::header::LOCATION,
                match query {
                    "" => format!("{leader}{path}"),
                    query => format!("{leader}{path}?{query}"),
                },
            )
            .body(full(Bytes::new()))
            .expect("a redirect builds");
    }
    let mut response = with_reason(
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            &ErrorBody {
                error: says.clone(),
            },
        )
        .expect("an error serializes"),
        &says,
    );
    // Empty while no control plane leads: clients wait for the election.
    let value = leader
        .and_then(|l| http::HeaderValue::from_str(l).ok())
        .unwrap_or(http::HeaderValue::from_static(""));
    response.headers_mut().insert(LEADER_HEADER, value);
    response
}

/// The answer of a control plane that led and lost etcd, to anything but
/// a read.
fn cut_off() -> Response {
    let error = "cluster state store unavailable: this control plane lost its leadership because etcd could not take its writes (unreachable, or without a majority); changes are refused until it leads again, and reads show the state as it last knew it".to_string();
    let mut response = with_reason(
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            &ErrorBody {
                error: error.clone(),
            },
        )
        .expect("an error serializes"),
        &error,
    );
    // No leader it knows of: clients try the other control planes.
    response
        .headers_mut()
        .insert(LEADER_HEADER, http::HeaderValue::from_static(""));
    response
}

/// Routes a request by caller: joins, nodes (by client certificate),
/// the dashboard, and the admin API.
async fn route(
    shared: &Shared,
    node: Option<&NodeCert>,
    method: &Method,
    path: &str,
    segments: &[&str],
    query: &str,
    request: Request,
) -> Handled {
    match (method, segments) {
        (&Method::GET, ["v1", "health"]) => ok(&match *shared.role.borrow() {
            Role::CutOff => serde_json::json!({"ok": false, "role": "cut-off"}),
            _ => serde_json::json!({"ok": true, "role": "leader"}),
        }),
        (&Method::POST, ["v1", "join"]) => {
            let join = read_json_within(request, MAX_JOIN).await?;
            ok(&members::join(shared, join)?)
        }
        (_, ["v1", "node", rest @ ..]) => match node {
            None => Err(Refusal(
                StatusCode::UNAUTHORIZED,
                "node calls need a client certificate signed by the cluster CA".to_string(),
            )),
            Some(caller) => match members::member(shared, caller) {
                Err(refused) => Err(refused.into()),
                Ok(node) => match (method, rest) {
                    (&Method::POST, ["sync"]) => {
                        let sync = read_json(request).await?;
                        ok(&heartbeat::heartbeat(shared, caller, sync).await?)
                    }
                    (&Method::POST, ["news"]) => {
                        heartbeat::news(shared, caller)?;
                        Ok(empty(StatusCode::NO_CONTENT))
                    }
                    (&Method::POST, ["renew"]) => {
                        let renew = read_json(request).await?;
                        ok(&members::renew(shared, caller, renew)?)
                    }
                    (&Method::POST, ["workload-cert"]) => {
                        let asked = read_json(request).await?;
                        ok(&members::workload_cert(shared, caller, asked)?)
                    }
                    (&Method::GET, ["blobs", digest]) => {
                        let app = query_params(query).remove("app");
                        get_blob(shared, node, digest, app.as_deref())
                    }
                    _ => Err(Refusal::not_found(format!("no API {method} {path}"))),
                },
            },
        },
        (_, ["ui", rest @ ..]) => {
            Ok(super::ui::handle(&shared.ui, &shared.admin_token, rest, query, request).await)
        }
        _ => match authorize(shared, &request) {
            Err(refusal) => Err(refusal),
            Ok(()) => admin(shared, method, segments, query, request).await,
        },
    }
}

fn authorize(shared: &Shared, request: &Request) -> Result<(), Refusal> {
    let presented = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // The dashboard's session reads, and only reads.
    if presented.is_none() {
        match super::ui::session(&shared.ui, request.headers()) {
            super::ui::SessionCookie::Absent => {}
            super::ui::SessionCookie::Dead => {
                return Err(Refusal(
                    StatusCode::UNAUTHORIZED,
                    "the dashboard session has expired: log in again at /ui".to_string(),
                ));
            }
            super::ui::SessionCookie::Live(_) => {
                if super::ui::session_may(request.method(), request.uri().path()) {
                    return Ok(());
                }
                return Err(Refusal(
                    StatusCode::FORBIDDEN,
                    "a dashboard session may only read what the dashboard shows; anything else needs the admin token".to_string(),
                ));
            }
        }
    }
    // Compare digests, so the time taken says nothing about the token.
    use sha2::{Digest as _, Sha256};
    match presented {
        Some(token) if Sha256::digest(token) == Sha256::digest(&shared.admin_token) => Ok(()),
        Some(_) => Err(Refusal(
            StatusCode::UNAUTHORIZED,
            "the admin token is not valid for this cluster".to_string(),
        )),
        None => Err(Refusal(
            StatusCode::UNAUTHORIZED,
            "missing admin token: send `Authorization: Bearer <token>` (the CLI reads it from cluster.json or SKIFF_TOKEN)".to_string(),
        )),
    }
}

async fn admin(
    shared: &Shared,
    method: &Method,
    segments: &[&str],
    query: &str,
    request: Request,
) -> Handled {
    match (method, segments) {
        (&Method::HEAD, ["v1", "blobs", digest] | ["v1", "standby", "blobs", digest]) => {
            let digest = parse_digest(digest)?;
            // A deploy is in progress: keep what it relies on.
            shared.collector.touch();
            let status = if shared.packages.blob_path(&digest).exists() {
                StatusCode::OK
            } else {
                StatusCode::NOT_FOUND
            };
            Ok(empty(status))
        }
        (&Method::GET, ["v1", "blobs", digest]) => {
            // Any blob, to an admin: a control plane standing by copies
            // the leader's packages this way.
            stream_blob(shared, &parse_digest(digest)?)
        }
        (&Method::PUT, ["v1", "blobs", digest] | ["v1", "standby", "blobs", digest]) => {
            // Streamed to a temporary file while hashing; stored under its
            // digest only when complete and matching.
            let digest = parse_digest(digest)?;
            let _upload = shared.collector.busy();
            let declared = request
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            let size = match declared {
                Some(n) if n > MAX_BLOB => {
                    return Err(Refusal(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("blob refused: {n} bytes is over the limit of {MAX_BLOB} bytes"),
                    ));
                }
                Some(n) => BlobSize::Exactly(n),
                None => BlobSize::AtMost(MAX_BLOB),
            };
            let writer = shared
                .packages
                .writer(&digest, size)
                .map_err(Refusal::internal)?;
            writer
                .receive(request.into_body().into_data_stream(), BLOB_IDLE)
                .await
                .map_err(|e| match e {
                    StoreError::TooLarge { .. } => {
                        Refusal(StatusCode::PAYLOAD_TOO_LARGE, format!("blob refused: {e}"))
                    }
                    StoreError::Corrupt { digest, actual } => Refusal::bad(format!(
                        "blob refused: the uploaded bytes hash to {actual}, not {digest}"
                    )),
                    StoreError::Io { .. } => Refusal::internal(e),
                    e => Refusal::bad(format!("blob refused: {e}")),
                })?;
            Ok(empty(StatusCode::CREATED))
        }
        (&Method::POST, ["v1", "apps"]) => {
            ok(&apps::deploy(shared, read_json(request).await?).await?)
        }
        (&Method::GET, ["v1", "apps"]) => ok(&views::app_views(shared)),
        (&Method::GET, ["v1", "top"]) => ok(&*views::top_view(shared)),
        (&Method::POST, ["v1", "ui", "links"]) => json(
            StatusCode::CREATED,
            &serde_json::json!({
                "once": shared.ui.new_link(),
                "expires_secs": super::ui::LINK_LIFETIME.as_secs(),
                "api_certificate_sha256": shared.api_fingerprint,
            }),
        ),
        (&Method::DELETE, ["v1", "apps", app]) => {
            apps::delete(shared, app)?;
            ok(&serde_json::json!({"deleted": app}))
        }
        (&Method::POST, ["v1", "apps", app, "scale"]) => {
            ok(&apps::scale(shared, app, read_json(request).await?).await?)
        }
        (&Method::POST, ["v1", "apps", app, "rollback"]) => ok(&apps::rollback(shared, app)?),
        (&Method::POST, ["v1", "apps", app, "promote"]) => ok(&apps::promote(shared, app)?),
        (&Method::GET, ["v1", "events"]) => {
            let params = query_params(query);
            let after = params
                .get("after")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let app = params.get("app").map(String::as_str);
            let live = shared.live();
            if let Some(app) = app
                && !live.apps.contains_key(app)
            {
                return Err(Refusal::not_found(format!(
                    "no app {app:?}; see `skiff apps`"
                )));
            }
            json(StatusCode::OK, &live.events.read(app, after))
        }
        (&Method::GET, ["v1", "apps", app, "logs"]) => {
            let params = query_params(query);
            let after = params
                .get("after")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let wait = params
                .get("wait_ms")
                .and_then(|v| v.parse().ok())
                .map(|ms: u64| Duration::from_millis(ms.min(30_000)));
            let component = params.get("component").map(String::as_str);
            {
                let live = shared.live();
                if !live.apps.contains_key(*app) {
                    return Err(Refusal::not_found(format!(
                        "no app {app:?}; see `skiff apps`"
                    )));
                }
                if let (Some(component), Some(spec)) = (component, live.spec(app))
                    && !spec.components.contains_key(component)
                {
                    return Err(Refusal::not_found(format!(
                        "app {app:?} has no component {component:?}"
                    )));
                }
            }
            let trace_id = params.get("trace").map(String::as_str);
            let filter = super::logs::LogFilter {
                component,
                trace_id,
            };
            let logs = shared.logs.read(app, &filter, after, wait).await;
            json(StatusCode::OK, &logs)
        }
        (&Method::GET, ["v1", "replicas"]) => {
            let params = query_params(query);
            if let Some(app) = params.get("app")
                && !shared.live().apps.contains_key(app)
            {
                return Err(Refusal::not_found(format!(
                    "no app {app:?}; see `skiff apps`"
                )));
            }
            json(
                StatusCode::OK,
                &views::replica_views(shared, params.get("app").map(String::as_str)),
            )
        }
        (&Method::GET, ["v1", "nodes"]) => ok(&views::node_views(shared)),
        (&Method::GET, ["v1", "certs"]) => ok(&certs::list(shared)),
        (&Method::POST, ["v1", "certs"]) => {
            let request = read_json_within(request, MAX_CERT).await?;
            json(StatusCode::CREATED, &certs::add(shared, request)?)
        }
        (&Method::DELETE, ["v1", "certs", domain]) => {
            let served_by = certs::remove(shared, domain)?;
            ok(&serde_json::json!({"removed": domain, "served_by": served_by}))
        }
        (&Method::POST, ["v1", "nodes", name, "labels"]) => {
            ok(&nodes::label(shared, name, read_json(request).await?)?)
        }
        (&Method::POST, ["v1", "nodes", name, action]) => {
            nodes::act(shared, name, action)?;
            ok(&serde_json::json!({"node": name, "action": action}))
        }
        (&Method::DELETE, ["v1", "nodes", name]) => {
            nodes::forget(shared, name)?;
            ok(&serde_json::json!({"forgotten": name}))
        }
        (&Method::POST, ["v1", "join-tokens"]) => {
            let token = shared.new_join_token().map_err(Refused::from)?;
            json(StatusCode::CREATED, &token)
        }
        _ => Err(Refusal::not_found(format!(
            "no API {method} /{}",
            segments.join("/")
        ))),
    }
}

fn get_blob(shared: &Shared, node: &str, digest: &str, app: Option<&str>) -> Handled {
    let digest = parse_digest(digest)?;
    blob_assigned(shared, node, &digest, app)?;
    stream_blob(shared, &digest)
}

/// Blob `digest`, streamed from its file; the receiver verifies the
/// digest as it writes.
fn stream_blob(shared: &Shared, digest: &Digest) -> Handled {
    let (file, size) = shared
        .packages
        .open_blob(digest)
        .map_err(|e| Refusal::not_found(e.to_string()))?;
    let chunks =
        tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), 256 << 10)
            .map_ok(hyper::body::Frame::data);
    Ok(hyper::Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/octet-stream")
        .header(http::header::CONTENT_LENGTH, size)
        .body(http_body_util::StreamBody::new(chunks).boxed_unsync())
        .expect("a valid response"))
}

/// Refuses blob `digest` to `node` unless it belongs to the package (its
/// manifest, config or a layer) of an app with a replica assigned to the
/// node: another app's config holds that app's environment. A node sees a
/// new package in its desired state only once it is assigned, so it never
/// fetches one before it may. The refusal is the same whether or not the
/// blob exists. A node names the `app` it fetches for, so only that app's
/// replicas are looked at, not every replica in the cluster.
fn blob_assigned(
    shared: &Shared,
    node: &str,
    digest: &Digest,
    app: Option<&str>,
) -> Result<(), Refusal> {
    let live = shared.live();
    let on_node = |r: &&ReplicaRecord| r.node.as_deref() == Some(node);
    // The replica's own version: during a rollout, an old one moves too.
    let has_blob = |r: &ReplicaRecord| {
        live.specs
            .get(&r.package)
            .is_some_and(|s| s.blobs.contains(digest))
    };
    let assigned = match app {
        Some(app) => live
            .replicas_under(&format!("{app}/"))
            .filter(on_node)
            .any(has_blob),
        None => live.replicas.values().filter(on_node).any(has_blob),
    };
    if assigned {
        Ok(())
    } else {
        Err(Refusal(
            StatusCode::FORBIDDEN,
            format!(
                "blob {digest} is not part of a package assigned to node {node:?}; a node fetches only the packages of replicas placed on it"
            ),
        ))
    }
}

fn parse_digest(text: &str) -> Result<Digest, Refusal> {
    text.parse()
        .map_err(|e| Refusal::bad(format!("bad digest {text:?}: {e}")))
}

fn query_params(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The `Content-Length` the client announced, if any.
fn content_length<B>(request: &hyper::Request<B>) -> Option<u64> {
    request
        .headers()
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Reads the whole body: refused at once when it announces more than
/// `limit` bytes, cut off when it sends more or misses its deadline.
pub(super) async fn body(request: Request, limit: usize) -> Result<Bytes, Refusal> {
    if let Some(length) = content_length(&request)
        && length > limit as u64
    {
        return Err(Refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body of {length} bytes is over the limit of {limit} bytes for {} {}",
                request.method(),
                request.uri().path()
            ),
        ));
    }
    Limited::new(request.into_body(), limit)
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|e| match e.downcast::<BodyError>() {
            Ok(e) if matches!(*e, BodyError::TimedOut(_)) => Refusal(
                StatusCode::REQUEST_TIMEOUT,
                format!("{e}: send the whole body promptly"),
            ),
            Ok(e) => Refusal::bad(format!("cannot read the request body: {e}")),
            Err(e) => Refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("cannot read the request body (limit {limit} bytes): {e}"),
            ),
        })
}

async fn read_json<T: DeserializeOwned>(request: Request) -> Result<T, Refusal> {
    read_json_within(request, MAX_JSON).await
}

async fn read_json_within<T: DeserializeOwned>(
    request: Request,
    limit: usize,
) -> Result<T, Refusal> {
    let bytes = body(request, limit).await?;
    serde_json::from_slice(&bytes).map_err(|e| Refusal::bad(format!("invalid JSON body: {e}")))
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Handled {
    Ok(hyper::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(full(
            serde_json::to_vec(value).expect("a response serializes"),
        ))
        .expect("a valid response"))
}

fn empty(status: StatusCode) -> Response {
    hyper::Response::builder()
        .status(status)
        .body(full(Bytes::new()))
        .expect("a valid response")
}
