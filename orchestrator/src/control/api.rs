//! The control plane's `/v1` API over TLS. Three kinds of caller: the CLI
//! (bearer admin token), nodes (their CA-signed client certificate), and
//! joining nodes (a one-time join token in the body). Every refusal is a
//! JSON `{"error": ...}` naming what was wrong.

use super::deadline::{self, BodyError, TimedBody};
use super::reconcile::replica_running;
use super::{LiveNode, Shared, catalog};
use crate::api::{
    AppView, ComponentView, DeployRequest, DeployResponse, ErrorBody, JoinRequest, JoinResponse,
    LabelRequest, LabelResponse, LoadState, NodeView, RenewRequest, ReplicaView, RolledBackView,
    RolloutResponse, RolloutView, ScaleRequest, ScaleResponse, SyncRequest, SyncResponse,
    WorkloadCertRequest, WorkloadCertResponse,
};
use crate::mesh::NodeCert;
use crate::mesh::admission::{Admission, Trust};
use crate::state::{Applied, NodeRecord, ReplicaRecord, Replicas};
use bytes::Bytes;
use futures::TryStreamExt;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use skiff_runtime::manifest::ComponentName;
use skiff_runtime::mesh::WorkloadId;
use skiff_runtime::package::blob::{BlobSize, MAX_BLOB_SIZE};
use skiff_runtime::package::{Digest, StoreError};
use skiff_runtime::server::{accept_until, serve_http1};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
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
                if node.as_ref().is_some_and(|n| member(&shared, n).is_ok()) {
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
                    node_connection_closed(&shared, &node);
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

async fn handle(
    shared: &Shared,
    node: Option<&NodeCert>,
    request: hyper::Request<Incoming>,
) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    // The body's deadline runs from now, whoever reads it.
    let deadline = match (&method, segments.as_slice()) {
        (&Method::PUT, ["v1", "blobs", _]) => deadline::for_upload(
            shared.config.body_timeout,
            content_length(&request).unwrap_or(MAX_BLOB),
        ),
        _ => shared.config.body_timeout,
    };
    let request = request.map(|body| TimedBody::new(body, deadline));
    let result = match (&method, segments.as_slice()) {
        (&Method::GET, ["v1", "health"]) => json(StatusCode::OK, &serde_json::json!({"ok": true})),
        (&Method::POST, ["v1", "join"]) => join(shared, request).await,
        (_, ["v1", "node", rest @ ..]) => match node {
            None => Err(Refusal(
                StatusCode::UNAUTHORIZED,
                "node calls need a client certificate signed by the cluster CA".to_string(),
            )),
            Some(caller) => match member(shared, caller) {
                Err(refusal) => Err(refusal),
                Ok(node) => match (&method, rest) {
                    (&Method::POST, ["sync"]) => sync(shared, caller, request).await,
                    (&Method::POST, ["news"]) => news(shared, caller),
                    (&Method::POST, ["renew"]) => renew(shared, caller, request).await,
                    (&Method::POST, ["workload-cert"]) => {
                        workload_cert(shared, caller, request).await
                    }
                    (&Method::GET, ["blobs", digest]) => {
                        let app = query_params(&query).remove("app");
                        get_blob(shared, node, digest, app.as_deref())
                    }
                    _ => Err(Refusal::not_found(format!("no API {method} {path}"))),
                },
            },
        },
        (_, ["ui", rest @ ..]) => {
            Ok(super::ui::handle(&shared.ui, &shared.admin_token, rest, &query, request).await)
        }
        _ => match authorize(shared, &request) {
            Err(refusal) => Err(refusal),
            Ok(()) => admin(shared, &method, &segments, &query, request).await,
        },
    };
    let response = result.unwrap_or_else(|Refusal(status, error)| {
        if status.is_server_error() {
            tracing::error!("{method} {path}: {error}");
        }
        json(status, &ErrorBody { error }).expect("an error serializes")
    });
    shared.metrics.record_api(&method, &path, response.status());
    response
}

/// The calling node's name, if the cluster holds a node of that name and
/// of the incarnation in its certificate: a node forgotten (or joined
/// again since the certificate was issued) is refused.
fn member<'a>(shared: &Shared, caller: &'a NodeCert) -> Result<&'a str, Refusal> {
    let live = shared.live.lock().expect("live state lock");
    match live.nodes.get(&caller.name) {
        Some(node) if node.record.incarnation == caller.incarnation => Ok(&caller.name),
        _ => Err(not_a_member(caller)),
    }
}

/// The refusal of a certificate whose node the cluster no longer holds
/// (under that incarnation).
fn not_a_member(caller: &NodeCert) -> Refusal {
    tracing::warn!(
        node = caller.name,
        "refused a certificate that is no longer valid"
    );
    Refusal(
        StatusCode::UNAUTHORIZED,
        format!(
            "node {:?} is not a member of this cluster: it was forgotten, or joined again since this certificate was issued; remove the node's data directory and join again with a new token from `skiff join-token`",
            caller.name
        ),
    )
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
        (&Method::HEAD, ["v1", "blobs", digest]) => {
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
        (&Method::PUT, ["v1", "blobs", digest]) => {
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
        (&Method::POST, ["v1", "apps"]) => deploy(shared, read_json(request).await?).await,
        (&Method::GET, ["v1", "apps"]) => json(StatusCode::OK, &app_views(shared)),
        (&Method::GET, ["v1", "top"]) => json(StatusCode::OK, &*top_view(shared)),
        (&Method::POST, ["v1", "ui", "links"]) => json(
            StatusCode::CREATED,
            &serde_json::json!({
                "once": shared.ui.new_link(),
                "expires_secs": super::ui::LINK_LIFETIME.as_secs(),
                "api_certificate_sha256": shared.api_fingerprint,
            }),
        ),
        (&Method::DELETE, ["v1", "apps", app]) => {
            // Store and memory change under one lock, so a controller pass
            // cannot slip between them.
            {
                let mut live = shared.live.lock().expect("live state lock");
                let existed = shared.store.delete_app(app).map_err(Refusal::internal)?;
                if !existed {
                    return Err(Refusal::not_found(format!(
                        "no app {app:?}; see `skiff apps`"
                    )));
                }
                live.apps.remove(*app);
                live.replicas.retain(|_, r| r.app != *app);
            }
            tracing::info!(app, "app deleted");
            shared.bump();
            shared.collector.wake();
            json(StatusCode::OK, &serde_json::json!({"deleted": app}))
        }
        (&Method::POST, ["v1", "apps", app, "scale"]) => {
            scale(shared, app, read_json(request).await?).await
        }
        (&Method::POST, ["v1", "apps", app, "rollback"]) => change_rollout(
            shared,
            app,
            super::events::EventKind::RolledBack,
            super::rollout::rollback,
        ),
        (&Method::POST, ["v1", "apps", app, "promote"]) => change_rollout(
            shared,
            app,
            super::events::EventKind::RolloutStep,
            |record, now_ms| {
                let (record, from) = super::rollout::promote(record, now_ms)?;
                let message = format!(
                    "{} canary {} promoted from {from}%: it now replaces the old version replica by replica",
                    record.name,
                    crate::node::replicas::short(&record.package)
                );
                Ok((record, message))
            },
        ),
        (&Method::GET, ["v1", "events"]) => {
            let params = query_params(query);
            let after = params
                .get("after")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let app = params.get("app").map(String::as_str);
            let live = shared.live.lock().expect("live state lock");
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
                let live = shared.live.lock().expect("live state lock");
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
                && !shared
                    .live
                    .lock()
                    .expect("live state lock")
                    .apps
                    .contains_key(app)
            {
                return Err(Refusal::not_found(format!(
                    "no app {app:?}; see `skiff apps`"
                )));
            }
            json(
                StatusCode::OK,
                &replica_views(shared, params.get("app").map(String::as_str)),
            )
        }
        (&Method::GET, ["v1", "nodes"]) => json(StatusCode::OK, &node_views(shared)),
        (&Method::POST, ["v1", "nodes", name, "labels"]) => {
            label_node(shared, name, read_json(request).await?)
        }
        (&Method::POST, ["v1", "nodes", name, action]) => node_action(shared, name, action),
        (&Method::DELETE, ["v1", "nodes", name]) => forget_node(shared, name),
        (&Method::POST, ["v1", "join-tokens"]) => {
            let token = shared.new_join_token().map_err(Refusal::internal)?;
            json(StatusCode::CREATED, &token)
        }
        _ => Err(Refusal::not_found(format!(
            "no API {method} /{}",
            segments.join("/")
        ))),
    }
}

/// `POST /v1/apps/APP/scale`: pins a component at a count, or sets the
/// bounds it is autoscaled within, in one store transaction; then waits
/// for the controller to place what changed, as a deploy does.
async fn scale(shared: &Shared, app: &str, request: ScaleRequest) -> Handled {
    let component = request.component.as_str();
    let (before, replicas, applied, passes_before) = {
        let mut live = shared.live.lock().expect("live state lock");
        let record = live
            .apps
            .get(app)
            .ok_or_else(|| Refusal::not_found(format!("no app {app:?}; see `skiff apps`")))?;
        let before = record.scale.get(component).copied().ok_or_else(|| {
            Refusal::not_found(format!(
                "app {app:?} has no component {component:?}; see `skiff apps`"
            ))
        })?;
        // What the manifest declares: its bounds are the ones a pinned
        // component goes back to when given only one.
        let declared = live
            .spec(app)
            .and_then(|spec| spec.components.get(component))
            .map(|plan| plan.replicas);
        let replicas = requested_replicas(&request, before, declared).map_err(Refusal::bad)?;
        let applied = shared
            .store
            .scale(app, component, replicas)
            .map_err(|e| match e {
                crate::state::StateError::UnknownApp(_)
                | crate::state::StateError::UnknownComponent { .. } => {
                    Refusal::not_found(e.to_string())
                }
                e => Refusal::internal(e),
            })?;
        if let Some(record) = shared.store.app(app).map_err(Refusal::internal)? {
            live.apps.insert(record.name.clone(), record);
        }
        if applied != Applied::Unchanged {
            live.events.record(
                super::events::EventKind::ScaleSet,
                Some((app, component)),
                format!("{app}/{component} {replicas} by `skiff scale` (was {before})"),
            );
        }
        (before, replicas, applied, live.passes)
    };
    tracing::info!(
        app,
        component,
        "{app}/{component} set to {replicas} (was {before})"
    );
    if applied != Applied::Unchanged {
        // Nodes route by it (whether requests for it are held while it
        // runs no replica), even when no replica changes.
        shared.bump();
    }
    // Said again when nothing changed: a user running the same scale to
    // check must not be told all is well.
    let warnings = if applied == Applied::Unchanged || placed_after(shared, passes_before).await {
        unplaceable(shared, &format!("{app}/{component}/"))
    } else {
        vec![not_placed_yet(app)]
    };
    json(
        StatusCode::OK,
        &ScaleResponse {
            app: app.to_string(),
            component: component.to_string(),
            replicas,
            before,
            changed: applied != Applied::Unchanged,
            warnings,
        },
    )
}

/// What a scale request asks for, given what the component runs now
/// (`before`) and what its manifest declares: a count pins it; `min` or
/// `max` autoscale it, the bound not given kept from before (or, when it
/// was pinned, from the manifest's bounds, else the defaults).
fn requested_replicas(
    request: &ScaleRequest,
    before: Replicas,
    declared: Option<Replicas>,
) -> Result<Replicas, String> {
    use skiff_runtime::manifest::{DEFAULT_MAX_REPLICAS, MAX_REPLICAS};
    let replicas = match (request.replicas, request.min, request.max) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return Err("give a replica count (pins the component) or --min/--max (autoscales it), not both".to_string());
        }
        (None, None, None) => {
            return Err(
                "nothing to change: give a replica count, or --min and/or --max".to_string(),
            );
        }
        (Some(n), None, None) => Replicas::Fixed(n),
        (None, min, max) => {
            let (was_min, was_max) = match (before, declared) {
                (Replicas::Auto { min, max }, _) | (_, Some(Replicas::Auto { min, max })) => {
                    (min, max)
                }
                _ => (1, DEFAULT_MAX_REPLICAS),
            };
            if let (Some(min), None) = (min, max)
                && min > was_max
            {
                return Err(format!(
                    "--min {min} is above the max of {was_max}: give --max too"
                ));
            }
            let min = min.unwrap_or(was_min);
            let max = max.unwrap_or(was_max);
            if max == 0 {
                return Err(
                    "--max must be at least 1 (--min 0 lets an idle component run no replica)"
                        .to_string(),
                );
            }
            if min > max {
                return Err(format!("--min {min} is above --max {max}"));
            }
            Replicas::Auto { min, max }
        }
    };
    let (_, most) = replicas.bounds();
    if most > MAX_REPLICAS {
        return Err(format!(
            "{most} replicas is over the limit of {MAX_REPLICAS} per component"
        ));
    }
    Ok(replicas)
}

/// The longest a deploy or scale waits for the controller to place its
/// replicas before it answers (without saying which cannot be placed).
const PLACE_WAIT: Duration = Duration::from_secs(10);

async fn deploy(shared: &Shared, request: DeployRequest) -> Handled {
    // No collection between verifying the package and declaring it.
    let _deploying = shared.collector.busy();
    let spec = catalog::read(&shared.packages, &request.package)
        .map_err(|e| Refusal::bad(format!("package refused: {e}")))?;
    let scale: BTreeMap<String, Replicas> = spec
        .components
        .iter()
        .map(|(name, plan)| (name.clone(), plan.replicas))
        .collect();
    let canary = requested_canary(&request, &spec).map_err(Refusal::bad)?;
    let (applied, generation, passes_before, rollout_note) = {
        let mut live = shared.live.lock().expect("live state lock");
        let now_ms = crate::clock::unix_ms();
        let mut notes = Vec::new();
        let applied = shared
            .store
            .update_app(&spec.name, |current| {
                let (record, why) = super::rollout::deploy(
                    current,
                    &spec.name,
                    &request.package,
                    scale,
                    canary.clone(),
                    now_ms,
                );
                notes = why;
                Ok(record)
            })
            .map_err(Refusal::internal)?;
        let record = shared
            .store
            .app(&spec.name)
            .map_err(Refusal::internal)?
            .ok_or_else(|| Refusal::internal("the app vanished after it was stored"))?;
        let generation = record.generation;
        if applied != Applied::Unchanged {
            super::reconcile::start_new_version(&mut live, &record, &spec, Instant::now());
        }
        live.specs
            .insert(request.package.clone(), Arc::new(spec.clone()));
        live.unreadable.remove(&request.package);
        let started = record
            .rollout
            .as_ref()
            .filter(|r| r.started_unix_ms == now_ms && applied != Applied::Unchanged);
        let rollout_note = started.map(|rollout| {
            // A new rollout is judged on its own requests.
            live.tallies.retain(|(app, _), _| app != &spec.name);
            let message = describe_start(&live, &record, rollout, &notes);
            tracing::info!(app = spec.name, "{message}");
            live.events.record_app(
                super::events::EventKind::RolloutStarted,
                &spec.name,
                message.clone(),
            );
            message
        });
        live.apps.insert(record.name.clone(), record);
        (applied, generation, live.passes, rollout_note)
    };
    let outcome = match applied {
        Applied::Created => "created",
        Applied::Updated(_) => "updated",
        Applied::Unchanged => "unchanged",
    };
    tracing::info!(
        app = spec.name,
        package = request.package,
        outcome,
        "deploy"
    );
    let mut response = DeployResponse {
        app: spec.name.clone(),
        outcome: outcome.to_string(),
        generation,
        rollout: rollout_note,
        warnings: route_overlaps(shared, &spec),
    };
    response.warnings.extend(spec.reachability_warnings());
    if applied != Applied::Unchanged {
        if !placed_after(shared, passes_before).await {
            response.warnings.push(not_placed_yet(&spec.name));
        }
        shared.bump();
    }
    if matches!(applied, Applied::Updated(_)) {
        shared.collector.wake();
    }
    // The controller has just tried to place the replicas: say at once
    // which ones cannot be, and why; and which autoscaled components
    // could not grow to their max.
    response
        .warnings
        .extend(unplaceable(shared, &format!("{}/", spec.name)));
    response
        .warnings
        .extend(super::reconcile::headroom_warnings(
            &shared.live.lock().expect("live state lock"),
            &spec.name,
        ));
    json(StatusCode::OK, &response)
}

/// The canary a deploy asks for: its own `canary` steps, else the
/// manifest's; each step lasts the deploy's interval, else the
/// manifest's, else the default. `[100]` asks for a rolling update.
fn requested_canary(
    request: &DeployRequest,
    spec: &catalog::AppSpec,
) -> Result<Option<super::rollout::Canary>, String> {
    use skiff_runtime::manifest::rollout as bounds;
    let interval = match request.canary_interval_ms {
        Some(ms) => bounds::check_canary_interval(Duration::from_millis(ms))
            .map_err(|e| e.replace("canary_interval", "--canary-interval"))?,
        None => spec
            .canary
            .as_ref()
            .map_or(bounds::DEFAULT_CANARY_INTERVAL, |(_, interval)| *interval),
    };
    let steps = match &request.canary {
        Some(steps) => bounds::canary_steps(steps)?,
        None => match &spec.canary {
            Some((steps, _)) => steps.clone(),
            None => return Ok(None),
        },
    };
    if steps == [100] {
        return Ok(None);
    }
    Ok(Some(super::rollout::Canary { steps, interval }))
}

/// What a deploy that started `rollout` of `record` tells the user.
fn describe_start(
    live: &super::Live,
    record: &crate::state::AppRecord,
    rollout: &crate::state::Rollout,
    notes: &[String],
) -> String {
    use crate::state::RolloutStrategy;
    let (to, from) = (
        version_of(live, &record.package),
        version_of(live, &rollout.from),
    );
    let app = &record.name;
    let how = match &rollout.strategy {
        RolloutStrategy::Rolling => format!(
            "rolling out {to} replica by replica, replacing {from}; errors roll it back; `skiff rollback {app}` stops it"
        ),
        RolloutStrategy::Canary {
            steps, interval_ms, ..
        } => {
            let steps: Vec<String> = steps.iter().map(|s| format!("{s}%")).collect();
            format!(
                "canary of {to}: its share of requests goes {} ({} each) unless it fails more than {from}; `skiff promote {app}` skips ahead, `skiff rollback {app}` stops it",
                steps.join(" -> "),
                humantime::format_duration(Duration::from_millis(*interval_ms))
            )
        }
        RolloutStrategy::Rollback { reason } => {
            format!("rolling back to {to} from {from}: {reason}")
        }
    };
    let mut message = format!("{app}: {how}");
    for note in notes {
        message.push_str("; ");
        message.push_str(note);
    }
    message
}

/// `POST /v1/apps/APP/rollback` or `.../promote`: changes the app's
/// rollout by `change` in one store transaction, records `kind` of event,
/// and has nodes hear of it at once.
fn change_rollout(
    shared: &Shared,
    app: &str,
    kind: super::events::EventKind,
    change: impl FnOnce(
        &crate::state::AppRecord,
        u64,
    ) -> Result<(crate::state::AppRecord, String), String>,
) -> Handled {
    let message = {
        let mut live = shared.live.lock().expect("live state lock");
        let now_ms = crate::clock::unix_ms();
        let mut message = String::new();
        let mut refused = None;
        shared
            .store
            .update_app(app, |current| {
                let Some(current) = current else {
                    return Err(crate::state::StateError::UnknownApp(app.to_string()));
                };
                match change(current, now_ms) {
                    Ok((record, said)) => {
                        message = said;
                        Ok(record)
                    }
                    Err(why) => {
                        refused = Some(why);
                        Ok(current.clone())
                    }
                }
            })
            .map_err(|e| match e {
                crate::state::StateError::UnknownApp(_) => Refusal::not_found(e.to_string()),
                e => Refusal::internal(e),
            })?;
        if let Some(why) = refused {
            return Err(Refusal::bad(why));
        }
        let record = shared
            .store
            .app(app)
            .map_err(Refusal::internal)?
            .ok_or_else(|| Refusal::internal("the app vanished after it was stored"))?;
        tracing::info!(app, "{message}");
        live.events.record_app(kind, app, message.clone());
        live.apps.insert(app.to_string(), record);
        message
    };
    shared.bump();
    shared.wake.notify_one();
    json(
        StatusCode::OK,
        &RolloutResponse {
            app: app.to_string(),
            message,
        },
    )
}

/// Wakes the controller and waits (at most [`PLACE_WAIT`]) for a pass
/// that started after pass number `passes_before`, so it has tried to
/// place what changed. Changes arriving together share one pass over the
/// cluster rather than one each.
/// Returns whether it did.
async fn placed_after(shared: &Shared, passes_before: u64) -> bool {
    let mut passed = shared.passed.subscribe();
    shared.wake.notify_one();
    let placed = passed.wait_for(|pass| *pass > passes_before);
    matches!(tokio::time::timeout(PLACE_WAIT, placed).await, Ok(Ok(_)))
}

/// The warning when the controller did not try to place replicas in time.
fn not_placed_yet(app: &str) -> String {
    format!(
        "the controller has not placed the replicas of {app:?} yet (it is busy); `skiff ps {app}` shows where they go, or why they cannot"
    )
}

/// Why the replicas whose ids start with `prefix` (`app/` or
/// `app/component/`) cannot be placed, as warnings: one per reason, naming
/// the replicas (a few, and how many more).
fn unplaceable(shared: &Shared, prefix: &str) -> Vec<String> {
    /// Replicas named in one warning; the rest are counted.
    const NAMED: usize = 3;
    let live = shared.live.lock().expect("live state lock");
    let mut by_reason: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    // Replica ids start with the prefix: no scan of every replica.
    for (id, _) in live
        .replicas
        .range(prefix.to_string()..)
        .take_while(|(id, _)| id.starts_with(prefix))
    {
        if let Some(reason) = live.pending.get(id) {
            by_reason.entry(reason).or_default().push(id);
        }
    }
    by_reason
        .into_iter()
        .map(|(reason, ids)| match ids.as_slice() {
            [one] => format!("{one} cannot be placed: {reason}"),
            _ => {
                let more = ids.len().saturating_sub(NAMED);
                let more = if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                };
                format!(
                    "{} replicas ({}{more}) cannot be placed: {reason}",
                    ids.len(),
                    ids[..ids.len().min(NAMED)].join(", ")
                )
            }
        })
        .collect()
}

/// Routes of `spec` that other apps serve too, as warnings (one per
/// route, naming a few of the others): ingress tells them apart only by
/// `Host`.
fn route_overlaps(shared: &Shared, spec: &catalog::AppSpec) -> Vec<String> {
    /// Other apps named in one warning; the rest are counted.
    const NAMED: usize = 3;
    let live = shared.live.lock().expect("live state lock");
    let mut warnings = Vec::new();
    for (component, plan) in &spec.components {
        let Some(route) = &plan.route else { continue };
        // `/orders/:id` and `/orders/:order` serve the same paths.
        let same = |other: &String| match (
            skiff_runtime::route::Route::try_from(route.clone()),
            skiff_runtime::route::Route::try_from(other.clone()),
        ) {
            (Ok(mine), Ok(theirs)) => mine.same_paths(&theirs),
            _ => other == route,
        };
        let others: Vec<&str> = live
            .apps
            .iter()
            .filter(|(name, _)| **name != spec.name)
            .filter(|(_, other)| {
                live.specs.get(&other.package).is_some_and(|o| {
                    o.components
                        .values()
                        .any(|c| c.route.as_ref().is_some_and(same))
                })
            })
            .map(|(name, _)| name.as_str())
            .collect();
        let Some(first) = others.iter().copied().chain([spec.name.as_str()]).min() else {
            continue;
        };
        let served_by = match others.as_slice() {
            [] => continue,
            [other] => format!("app \"{other}\""),
            _ => {
                let named: Vec<String> = others
                    .iter()
                    .take(NAMED)
                    .map(|o| format!("\"{o}\""))
                    .collect();
                let more = others.len().saturating_sub(NAMED);
                let more = if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                };
                format!("{} other apps ({}{more})", others.len(), named.join(", "))
            }
        };
        warnings.push(format!(
            "route \"{route}\" of {}/{component} is also served by {served_by}: ingress picks the app named by the Host header (<app>.<domain> or <app>), else \"{first}\"",
            spec.name
        ));
    }
    warnings
}

async fn join(shared: &Shared, request: Request) -> Handled {
    let join: JoinRequest = read_json_within(request, MAX_JOIN).await?;
    if shared
        .hosts
        .iter()
        .any(|host| host.eq_ignore_ascii_case(&join.name))
    {
        return Err(Refusal::bad(format!(
            "invalid node name {:?}: the control plane is reached by that name; pick another --name",
            join.name
        )));
    }
    crate::labels::check(&join.labels).map_err(|e| Refusal::bad(format!("join refused: {e}")))?;
    // Sign first, so a bad name or request does not use up the token; the
    // certificate is only handed out if the token is good.
    let incarnation = super::random_hex(16);
    let cert_pem = shared
        .ca
        .sign_node(&join.name, &incarnation, &join.csr_pem)
        .map_err(|e| Refusal::bad(e.to_string()))?;
    {
        let mut live = shared.live.lock().expect("live state lock");
        let refused = || {
            tracing::warn!(node = join.name, "join refused: bad token");
            Refusal(
                StatusCode::UNAUTHORIZED,
                "the join token is not valid: it is unknown, expired or already used; make a new one with `skiff join-token`".to_string(),
            )
        };
        let valid = shared
            .store
            .join_token_valid(&join.token, crate::clock::unix_secs())
            .map_err(Refusal::internal)?;
        if !valid {
            return Err(refused());
        }
        // Checked only for holders of a good token, so names cannot be
        // probed without one; and before the token is used up, so the
        // holder can retry with another name. A node that is merely down
        // keeps its name: only forgetting it frees the name.
        if let Some(node) = live.nodes.get(&join.name) {
            let state = if node.down { "down" } else { "active" };
            return Err(Refusal(
                StatusCode::CONFLICT,
                format!(
                    "a node named {:?} is already in this cluster ({state}); pick another --name, or if that node is gone for good, run `skiff forget {}` first",
                    join.name, join.name
                ),
            ));
        }
        // The node is a member from now on, with this incarnation, even if
        // the control plane restarts before its first heartbeat.
        let record = NodeRecord {
            name: join.name.clone(),
            labels: join.labels.clone(),
            memory: join.memory,
            ingress: String::new(),
            mesh: String::new(),
            cordoned: false,
            drained: false,
            incarnation,
        };
        let admitted = shared
            .store
            .admit_node(&join.token, &record, crate::clock::unix_secs())
            .map_err(Refusal::internal)?;
        if !admitted {
            return Err(refused());
        }
        live.nodes.insert(join.name.clone(), LiveNode::new(record));
    }
    tracing::info!(node = join.name, "node joined");
    // Every node learns the new member.
    shared.bump();
    json(
        StatusCode::OK,
        &JoinResponse {
            cert_pem,
            ca_pem: shared.ca.cert_pem().to_string(),
        },
    )
}

async fn renew(shared: &Shared, node: &NodeCert, request: Request) -> Handled {
    let renew: RenewRequest = read_json(request).await?;
    // Checked again now that the body is here: a node forgotten while it
    // arrived gets nothing. A renewal is the same join, so it keeps the
    // incarnation; a certificate from before incarnations existed gets
    // one now, so that it too can be revoked.
    let incarnation = {
        let mut live = shared.live.lock().expect("live state lock");
        let entry = live
            .nodes
            .get_mut(&node.name)
            .filter(|n| n.record.incarnation == node.incarnation)
            .ok_or_else(|| not_a_member(node))?;
        if node.incarnation.is_empty() {
            let record = NodeRecord {
                incarnation: super::random_hex(16),
                ..entry.record.clone()
            };
            shared.store.put_node(&record).map_err(Refusal::internal)?;
            entry.record = record;
        }
        entry.record.incarnation.clone()
    };
    if node.incarnation.is_empty() {
        // Every node learns the new incarnation.
        shared.bump();
    }
    let cert_pem = shared
        .ca
        .sign_node(&node.name, &incarnation, &renew.csr_pem)
        .map_err(|e| Refusal::bad(e.to_string()))?;
    tracing::info!(node = node.name, "node certificate renewed");
    json(
        StatusCode::OK,
        &JoinResponse {
            cert_pem,
            ca_pem: shared.ca.cert_pem().to_string(),
        },
    )
}

/// Issues a workload's certificate to a node it is placed on; any other
/// node is refused, so a node cannot obtain the identity of a workload it
/// does not run.
async fn workload_cert(shared: &Shared, node: &NodeCert, request: Request) -> Handled {
    let asked: WorkloadCertRequest = read_json(request).await?;
    let workload = asked
        .workload
        .split_once('/')
        .and_then(|(app, component)| {
            Some(WorkloadId::new(
                ComponentName::try_from(app.to_string()).ok()?,
                ComponentName::try_from(component.to_string()).ok()?,
            ))
        })
        .ok_or_else(|| {
            Refusal::bad(format!(
                "workload {:?} is not app/component",
                asked.workload
            ))
        })?;
    let incarnation = {
        let live = shared.live.lock().expect("live state lock");
        let entry = live
            .nodes
            .get(&node.name)
            .filter(|n| n.record.incarnation == node.incarnation)
            .ok_or_else(|| not_a_member(node))?;
        let placed = live.replicas.values().any(|r| {
            r.node.as_deref() == Some(node.name.as_str())
                && r.app == workload.app.as_str()
                && r.component == workload.component.as_str()
        });
        if !placed {
            tracing::warn!(node = node.name, %workload, "workload certificate refused: not placed on the node");
            return Err(Refusal(
                StatusCode::FORBIDDEN,
                format!(
                    "node {} runs no replica of {workload}: no certificate for it",
                    node.name
                ),
            ));
        }
        entry.record.incarnation.clone()
    };
    let cert_pem = shared
        .ca
        .sign_workload(&node.name, &incarnation, &workload, &asked.csr_pem)
        .map_err(|e| Refusal::bad(e.to_string()))?;
    tracing::info!(node = node.name, %workload, "workload certificate issued");
    json(StatusCode::OK, &WorkloadCertResponse { cert_pem })
}

/// A heartbeat being held. While any is, the node is known to be
/// listening. If the handler is dropped before answering (the connection
/// closed under it), the node has lost its connection, unless a newer
/// heartbeat from it already arrived.
struct HeldHeartbeat<'a> {
    shared: &'a Shared,
    node: &'a str,
    heartbeat: u64,
    armed: bool,
}

impl<'a> HeldHeartbeat<'a> {
    fn hold(shared: &'a Shared, node: &'a str, heartbeat: u64) -> HeldHeartbeat<'a> {
        shared.with_node(node, |entry| {
            entry.holding += 1;
            // A connection that closed while this heartbeat was arriving
            // says nothing: the node is here.
            if entry.heartbeats == heartbeat {
                entry.connection_lost = None;
            }
        });
        HeldHeartbeat {
            shared,
            node,
            heartbeat,
            armed: true,
        }
    }
}

impl Drop for HeldHeartbeat<'_> {
    fn drop(&mut self) {
        let cut_short = self.armed;
        self.shared.with_node(self.node, |node| {
            node.holding = node.holding.saturating_sub(1);
            if cut_short && node.heartbeats == self.heartbeat {
                node.connection_lost = Some(Instant::now());
                self.shared.wake.notify_one();
            }
        });
    }
}

/// A node's connection closed. Unless one of its heartbeats is being held
/// on another connection, it may be gone: if it does not heartbeat again
/// soon, the controller marks it down (a killed node closes its sockets,
/// so this is much sooner than `down_after`).
fn node_connection_closed(shared: &Shared, node: &NodeCert) {
    shared.with_node(&node.name, |entry| {
        // A certificate of an earlier join says nothing about this one.
        if entry.holding == 0 && entry.record.incarnation == node.incarnation {
            entry.connection_lost = Some(Instant::now());
            shared.wake.notify_one();
        }
    });
}

async fn sync(shared: &Shared, caller: &NodeCert, request: Request) -> Handled {
    let node = caller.name.as_str();
    let sync: SyncRequest = read_json(request).await?;
    let started = Instant::now();
    for (what, addr) in [("ingress", &sync.ingress), ("mesh", &sync.mesh)] {
        check_reported_address(what, addr, shared.api_addr, &shared.hosts).map_err(Refusal::bad)?;
    }
    let mut wake = false;
    let mut bump = false;
    let mut reported_outcomes;
    let heartbeat;
    let fresh_logs: Vec<_>;
    let placed_by;
    let status_seq;
    let status_known;
    let news;
    {
        let mut live = shared.live.lock().expect("live state lock");
        let now = Instant::now();
        // Only a join makes a node, and only that join's certificate speaks
        // for it: a node forgotten (or joined again) while this body was
        // arriving is refused, not brought back.
        let entry = live
            .nodes
            .get_mut(node)
            .filter(|n| n.record.incarnation == caller.incarnation)
            .ok_or_else(|| not_a_member(caller))?;
        // What a heartbeat may change: the node's addresses (ports may
        // differ after a restart), and the memory it offers, up to what it
        // declared at join. Labels stay as joined or set by an admin.
        let updated = NodeRecord {
            ingress: sync.ingress.clone(),
            mesh: sync.mesh.clone(),
            ..entry.record.clone()
        };
        let moved = entry.record != updated;
        if moved {
            shared.store.put_node(&updated).map_err(Refusal::internal)?;
            entry.record = updated;
            wake = true;
        }
        if entry.reported_memory != sync.memory {
            let before = entry.memory();
            entry.reported_memory = sync.memory;
            wake |= entry.memory() != before;
        }
        entry.used = sync.used;
        if entry.pressure != sync.pressure {
            if sync.pressure {
                tracing::warn!(
                    node,
                    used = sync.used,
                    "node under memory pressure: no new replicas go there"
                );
            } else {
                tracing::info!(
                    node,
                    used = sync.used,
                    "node no longer under memory pressure"
                );
            }
            entry.pressure = sync.pressure;
            wake = true;
        }
        placed_by = (entry.record.labels.clone(), entry.record.memory);
        news = entry.news.clone();
        entry.last_seen = now;
        // First word since the control plane started: endpoints that were
        // trusted from the store now follow what the node reports.
        bump |= !entry.heard;
        entry.heard = true;
        entry.connection_lost = None;
        entry.heartbeats += 1;
        heartbeat = entry.heartbeats;
        let back = entry.down;
        if back {
            tracing::info!(node, "node is back");
            entry.down = false;
            wake = true;
            bump = true;
        }
        // Demand that grew (or requests held for a component with no
        // replica) wakes the autoscaler now, not at the next pass.
        // What the control plane assigned the node, not what it says it
        // holds, decides whose traffic it may report.
        let assigned = if sync.load.iter().any(|l| l.traffic.is_some()) || !entry.traffic_is_empty()
        {
            shared
                .desired
                .lock()
                .expect("desired state lock")
                .assigned_to(node)
        } else {
            Default::default()
        };
        let (urgent, outcomes) = entry.take_load(sync.load, &assigned);
        wake |= urgent;
        reported_outcomes = outcomes;
        // Loads that failed since the node last reported: events.
        let failed_now: Vec<(String, String, String)> = sync
            .status
            .components
            .iter()
            .filter(|c| c.state == LoadState::Failed)
            .filter(|c| {
                entry
                    .component(&c.app, &c.component, &c.package)
                    .is_none_or(|before| before.state != LoadState::Failed)
            })
            .take(super::events::KEPT)
            .map(|c| {
                let error: String = c
                    .error
                    .as_deref()
                    .unwrap_or("no reason given")
                    .chars()
                    .take(500)
                    .collect();
                (c.app.clone(), c.component.clone(), error)
            })
            .collect();
        // What other nodes route by changed: they hear of it with the
        // next version, within this node's bump budget.
        let serving_changed = entry.take_status(sync.status);
        let failed_now = if serving_changed.is_some() {
            failed_now
        } else {
            Vec::new()
        };
        status_known = serving_changed.is_some();
        status_seq = entry.status_seq.map(|(_, seq)| seq);
        bump |= entry
            .bumps
            .take(moved || serving_changed == Some(true), now);
        // Keep each line once, and only for apps this node was given.
        let seen = entry.logs_seen;
        if let Some(last) = sync
            .logs_first_seq
            .checked_add(sync.logs.len() as u64)
            .and_then(|end| end.checked_sub(1))
            .filter(|_| !sync.logs.is_empty())
        {
            entry.logs_seen = seen.max(last);
        }
        if back {
            live.events.record(
                super::events::EventKind::NodeBack,
                None,
                format!("node {node} is back"),
            );
        }
        for (app, component, versions) in std::mem::take(&mut reported_outcomes) {
            // A version under rollout failing is judged now.
            wake |= super::rollout::take_outcomes(&mut live, node, &app, &component, versions);
        }
        for (app, component, error) in failed_now {
            live.events.record(
                super::events::EventKind::LoadFailed,
                Some((&app, &component)),
                format!("{app}/{component} failed to load on {node}: {error}"),
            );
        }
        // Most heartbeats carry no lines: skip the scan of every replica.
        let assigned: std::collections::BTreeSet<(&str, &str)> = if sync.logs.is_empty() {
            Default::default()
        } else {
            live.replicas
                .values()
                .filter(|r| r.node.as_deref() == Some(node))
                .map(|r| (r.app.as_str(), r.component.as_str()))
                .collect()
        };
        fresh_logs = super::logs::bounded(
            node,
            sync.logs
                .into_iter()
                .zip(sync.logs_first_seq..=u64::MAX)
                .filter(|(line, seq)| {
                    *seq > seen && assigned.contains(&(line.app.as_str(), line.component.as_str()))
                })
                .map(|(line, _)| line),
        );
    }
    shared.logs.append(node, fresh_logs);
    if wake {
        shared.wake.notify_one();
    }
    if bump {
        shared.bump();
    }
    let epoch = shared.desired.lock().expect("desired state lock").epoch();
    shared.metrics.record_heartbeat(started.elapsed());
    let mut version = shared.version.subscribe();
    // Held only while the node is up to date both ways: a status the
    // control plane could not take is asked for again at once.
    if *version.borrow_and_update() == sync.version && sync.epoch == epoch && status_known {
        let mut held = HeldHeartbeat::hold(shared, node, heartbeat);
        tokio::select! {
            _ = version.changed() => {}
            // The node has something to report (see [`news`]).
            () = news.notified() => {}
            () = tokio::time::sleep(shared.config.heartbeat) => {}
        }
        held.armed = false;
        // Held this long, the node was listening all along.
        shared.with_node(node, |entry| {
            if entry.heartbeats == heartbeat {
                entry.last_seen = Instant::now();
            }
        });
    }
    let mut current = *shared.version.borrow();
    let desired = if current != sync.version || sync.epoch != epoch {
        // Computing the desired state is work in proportion to the whole
        // cluster: with many apps, versions moving fast share computations.
        let rest = shared
            .desired
            .lock()
            .expect("desired state lock")
            .rest_before(current);
        if !rest.is_zero() {
            tokio::time::sleep(rest).await;
        }
        let live = shared.live.lock().expect("live state lock");
        // Forgotten while its heartbeat was held: it learns nothing more.
        if live
            .nodes
            .get(node)
            .is_none_or(|n| n.record.incarnation != caller.incarnation)
        {
            return Err(not_a_member(caller));
        }
        let mut log = shared.desired.lock().expect("desired state lock");
        // Read under the state lock: a change made after the version was
        // read above must not be stamped with that older version.
        current = log.refresh(&live, *shared.version.borrow());
        Some(log.change_for(node, sync.epoch, sync.version))
    } else {
        None
    };
    json(
        StatusCode::OK,
        &SyncResponse {
            version: current,
            epoch,
            status_seq,
            desired,
            heartbeat_ms: shared.config.heartbeat.as_millis() as u64,
            labels: placed_by.0,
            memory: placed_by.1,
        },
    )
}

/// `POST /v1/node/news`: the calling node has something to report (a
/// replica loaded, memory pressure): its heartbeat being held is answered
/// now rather than at the end of the heartbeat interval, and the node
/// reports with the next one. Asking, rather than abandoning the held
/// heartbeat, keeps its connection: a node starting thousands of replicas
/// has news every few milliseconds, and a new connection (and TLS
/// handshake) per news would keep its heartbeats from ever arriving.
/// News that arrives between two heartbeats answers the next one at once.
fn news(shared: &Shared, caller: &NodeCert) -> Handled {
    let live = shared.live.lock().expect("live state lock");
    let node = live
        .nodes
        .get(&caller.name)
        .filter(|n| n.record.incarnation == caller.incarnation)
        .ok_or_else(|| not_a_member(caller))?;
    node.news.notify_one();
    Ok(hyper::Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(full(Bytes::new()))
        .expect("a response builds"))
}

fn get_blob(shared: &Shared, node: &str, digest: &str, app: Option<&str>) -> Handled {
    let digest = parse_digest(digest)?;
    blob_assigned(shared, node, &digest, app)?;
    // Streamed from the file; the node verifies the digest as it writes.
    let (file, size) = shared
        .packages
        .open_blob(&digest)
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
    let live = shared.live.lock().expect("live state lock");
    let on_node = |r: &&ReplicaRecord| r.node.as_deref() == Some(node);
    let has_blob = |r: &ReplicaRecord| live.spec(&r.app).is_some_and(|s| s.blobs.contains(digest));
    let assigned = match app {
        // Replica ids start with `app/`.
        Some(app) => {
            let prefix = format!("{app}/");
            live.replicas
                .range(prefix.clone()..)
                .take_while(|(id, _)| id.starts_with(&prefix))
                .map(|(_, r)| r)
                .filter(on_node)
                .any(has_blob)
        }
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

/// Sets and removes labels of node `name` (an admin's call): the only
/// way a node's labels change after it joined.
fn label_node(shared: &Shared, name: &str, change: LabelRequest) -> Handled {
    for key in &change.remove {
        crate::labels::check_key(key).map_err(|e| Refusal::bad(e.to_string()))?;
    }
    let mut live = shared.live.lock().expect("live state lock");
    let node = live
        .nodes
        .get_mut(name)
        .ok_or_else(|| Refusal::not_found(format!("no node {name:?}; see `skiff nodes`")))?;
    let mut record = node.record.clone();
    for key in &change.remove {
        record.labels.remove(key);
    }
    record.labels.extend(change.set);
    crate::labels::check(&record.labels).map_err(|e| Refusal::bad(e.to_string()))?;
    let changed = record != node.record;
    if changed {
        shared.store.put_node(&record).map_err(Refusal::internal)?;
        node.record = record;
    }
    let labels = node.record.labels.clone();
    drop(live);
    if changed {
        tracing::info!(node = name, ?labels, "node labels changed");
        // Placement follows at the controller's next pass.
        shared.wake.notify_one();
    }
    json(
        StatusCode::OK,
        &LabelResponse {
            node: name.to_string(),
            labels,
            changed,
        },
    )
}

fn node_action(shared: &Shared, name: &str, action: &str) -> Handled {
    let mut live = shared.live.lock().expect("live state lock");
    let node = live
        .nodes
        .get_mut(name)
        .ok_or_else(|| Refusal::not_found(format!("no node {name:?}; see `skiff nodes`")))?;
    let mut record = node.record.clone();
    match action {
        "cordon" => record.cordoned = true,
        "uncordon" => {
            record.cordoned = false;
            record.drained = false;
        }
        "drain" => {
            record.cordoned = true;
            record.drained = true;
        }
        _ => {
            return Err(Refusal::not_found(format!(
                "unknown node action {action:?}: use cordon, uncordon or drain"
            )));
        }
    }
    shared.store.put_node(&record).map_err(Refusal::internal)?;
    node.record = record;
    drop(live);
    tracing::info!(node = name, action, "node updated");
    shared.wake.notify_one();
    shared.bump();
    json(
        StatusCode::OK,
        &serde_json::json!({"node": name, "action": action}),
    )
}

/// Removes a node that is down from the cluster; its replicas are placed
/// elsewhere. A live node is refused: it would come back at its next
/// heartbeat.
fn forget_node(shared: &Shared, name: &str) -> Handled {
    {
        let mut live = shared.live.lock().expect("live state lock");
        let node = live
            .nodes
            .get(name)
            .ok_or_else(|| Refusal::not_found(format!("no node {name:?}; see `skiff nodes`")))?;
        if !node.down {
            return Err(Refusal(
                StatusCode::CONFLICT,
                format!("node {name:?} is not down; drain it and stop it before forgetting it"),
            ));
        }
        shared.store.delete_node(name).map_err(Refusal::internal)?;
        live.nodes.remove(name);
    }
    tracing::info!(node = name, "node forgotten");
    shared.wake.notify_one();
    // Every node drops it from the members its mesh honours.
    shared.bump();
    json(StatusCode::OK, &serde_json::json!({"forgotten": name}))
}

fn app_views(shared: &Shared) -> Vec<AppView> {
    let live = shared.live.lock().expect("live state lock");
    let replicas_of = live.replicas_by(|r| Some(&r.app));
    live.apps
        .values()
        .map(|app| {
            let spec = live.specs.get(&app.package);
            let components = spec
                .map(|spec| {
                    spec.components
                        .iter()
                        .map(|(name, plan)| ComponentView {
                            name: name.clone(),
                            route: plan.route.clone(),
                            desired: live.desired_replicas(app, name, plan),
                            autoscale: live.autoscale_view(app, name, plan),
                            running: replicas_of
                                .get(app.name.as_str())
                                .into_iter()
                                .flatten()
                                .filter(|r| &r.component == name)
                                .filter(|r| replica_running(&live, r))
                                .count() as u32,
                        })
                        .collect()
                })
                .unwrap_or_default();
            AppView {
                name: app.name.clone(),
                version: spec.map(|s| s.version.clone()).unwrap_or_default(),
                package: app.package.clone(),
                generation: app.generation,
                components,
                error: live.unreadable.get(&app.package).map(|u| {
                    format!(
                        "the control plane cannot read the app's package: {}; its replicas keep running; deploy the app again",
                        u.reason
                    )
                }),
                rollout: app
                    .rollout
                    .as_ref()
                    .map(|rollout| rollout_view(&live, app, rollout, &replicas_of)),
                rolled_back: app.failed.as_ref().map(|failed| RolledBackView {
                    version: version_of(&live, &failed.package),
                    package: failed.package.clone(),
                    reason: failed.reason.clone(),
                    unix_ms: failed.unix_ms,
                }),
                history: app.history.iter().map(|p| version_of(&live, p)).collect(),
            }
        })
        .collect()
}

/// How `app`'s `rollout` shows in `skiff apps`.
fn rollout_view(
    live: &super::Live,
    app: &crate::state::AppRecord,
    rollout: &crate::state::Rollout,
    replicas_of: &std::collections::HashMap<&str, Vec<&ReplicaRecord>>,
) -> RolloutView {
    use crate::state::RolloutStrategy;
    let (strategy, share) = match &rollout.strategy {
        RolloutStrategy::Rolling => ("rolling", None),
        RolloutStrategy::Canary { steps, step, .. } => ("canary", Some(steps[*step])),
        RolloutStrategy::Rollback { .. } => ("rollback", None),
    };
    let state = match (&rollout.strategy, rollout.done_unix_ms) {
        (RolloutStrategy::Rollback { .. }, _) => "rolling back",
        (_, Some(_)) => "watching",
        _ => "rolling out",
    };
    let replicas = replicas_of
        .get(app.name.as_str())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let ready = replicas
        .iter()
        .filter(|r| r.package == app.package)
        .filter(|r| super::reconcile::endpoint_node(live, r).is_some())
        .count() as u32;
    let desired = live.specs.get(&app.package).map_or(0, |spec| {
        spec.components
            .iter()
            .map(|(name, plan)| live.desired_replicas(app, name, plan))
            .sum()
    });
    let requests = |package: &str| {
        live.tallies
            .get(&(app.name.clone(), package.to_string()))
            .map_or((0, 0), |t| (t.answered, t.failed))
    };
    RolloutView {
        strategy: strategy.to_string(),
        state: state.to_string(),
        from: version_of(live, &rollout.from),
        to: version_of(live, &app.package),
        share,
        ready,
        desired,
        new_requests: requests(&app.package),
        old_requests: requests(&rollout.from),
    }
}

/// How a version is shown: the app's `version` and the first digits of
/// its package digest.
fn version_of(live: &super::Live, package: &str) -> String {
    let digits = crate::node::replicas::short(package);
    match live.specs.get(package) {
        Some(spec) => format!("{} ({digits})", spec.version),
        None => digits.to_string(),
    }
}

pub(super) fn replica_views(shared: &Shared, app: Option<&str>) -> Vec<ReplicaView> {
    let live = shared.live.lock().expect("live state lock");
    let now = crate::clock::unix_secs();
    live.replicas
        .values()
        .filter(|r| app.is_none_or(|a| r.app == a))
        .map(|r| {
            let (state, reason) = match &r.node {
                None => (
                    "pending",
                    Some(
                        live.pending
                            .get(&r.id)
                            .cloned()
                            .unwrap_or_else(|| "not placed yet".to_string()),
                    ),
                ),
                Some(node) => match live.nodes.get(node) {
                    Some(n) if n.down => ("unknown", Some(format!("node {node} is down"))),
                    Some(n) => match n.component(&r.app, &r.component, &r.package) {
                        _ if replica_running(&live, r) => ("running", None),
                        Some(c) if c.state == LoadState::Failed => ("failed", c.error.clone()),
                        Some(c) if c.serving.is_some() => ("running", None),
                        Some(_) => (
                            "starting",
                            Some("loading and checking it is ready".to_string()),
                        ),
                        _ => ("starting", None),
                    },
                    None => ("unknown", Some(format!("node {node} is not known"))),
                },
            };
            // A replica stuck on a draining node says why; so does one of
            // an app whose package cannot be read.
            let reason = reason
                .or_else(|| live.pending.get(&r.id).cloned())
                .or_else(|| {
                    let unreadable = live.unreadable.get(&r.package)?;
                    Some(format!(
                        "the app's package cannot be read: {}",
                        unreadable.reason
                    ))
                });
            ReplicaView {
                id: r.id.clone(),
                app: r.app.clone(),
                component: r.component.clone(),
                node: r.node.clone(),
                state: state.to_string(),
                age_secs: now.saturating_sub(r.created_unix),
                reason,
                version: version_of(&live, &r.package),
            }
        })
        .collect()
}

/// What `skiff top` shows now: made at most once a second, however many
/// ask (every open dashboard does, every 2 s).
fn top_view(shared: &Shared) -> Arc<crate::api::TopView> {
    let mut cached = shared.top.lock().expect("top cache lock");
    if let Some((at, view)) = cached.as_ref()
        && at.elapsed() < Duration::from_secs(1)
    {
        return view.clone();
    }
    let view = Arc::new(make_top_view(shared));
    *cached = Some((Instant::now(), view.clone()));
    view
}

fn make_top_view(shared: &Shared) -> crate::api::TopView {
    let replicas = replica_views(shared, None);
    let nodes = node_views(shared);
    let traffic = {
        let live = shared.live.lock().expect("live state lock");
        super::top::snapshot(
            live.nodes
                .iter()
                .map(|(name, node)| (name.as_str(), &node.traffic)),
            Instant::now(),
            crate::clock::unix_ms(),
        )
    };
    super::top::view(&traffic, &replicas, &nodes)
}

pub(super) fn node_views(shared: &Shared) -> Vec<NodeView> {
    let live = shared.live.lock().expect("live state lock");
    let replicas_on = live.replicas_by(|r| r.node.as_deref());
    live.nodes
        .values()
        .map(|n| {
            let name = &n.record.name;
            let on_node = replicas_on
                .get(name.as_str())
                .map(Vec::as_slice)
                .unwrap_or_default();
            let reserved = on_node
                .iter()
                .filter_map(|r| live.specs.get(&r.package)?.components.get(&r.component))
                .map(|plan| plan.request.memory)
                .sum();
            let state = if n.down {
                "down"
            } else if !n.heard {
                "unknown"
            } else if n.record.drained {
                "draining"
            } else if n.record.cordoned {
                "cordoned"
            } else {
                "ready"
            };
            NodeView {
                name: name.clone(),
                state: state.to_string(),
                labels: n.record.labels.clone(),
                memory: n.memory(),
                placeable: live.overcommit.placeable(n.memory()),
                reserved,
                used: n.used,
                pressure: n.pressure,
                replicas: on_node.len() as u32,
                ingress: n.record.ingress.clone(),
                last_seen_ms: n.last_seen.elapsed().as_millis() as u64,
            }
        })
        .collect()
}

/// Checks an address a node reports for itself (`what`: ingress or mesh):
/// `ip:port` with a real port, not multicast or broadcast, not the control
/// plane's own API (`api`, or any of `hosts` at its port when it listens
/// on every address), and for the mesh, which other nodes dial, not
/// unspecified. (Ingress may listen on every address: it is only shown.)
pub(super) fn check_reported_address(
    what: &str,
    addr: &str,
    api: std::net::SocketAddr,
    hosts: &[String],
) -> Result<std::net::SocketAddr, String> {
    let parsed: std::net::SocketAddr = addr
        .parse()
        .map_err(|_| format!("invalid {what} address {addr:?}: expected ip:port"))?;
    let ip = parsed.ip().to_canonical();
    let broadcast = ip == std::net::IpAddr::V4(std::net::Ipv4Addr::BROADCAST);
    let reason = if parsed.port() == 0 {
        Some("port 0 cannot be dialled")
    } else if ip.is_multicast() || broadcast {
        Some("it is a multicast or broadcast address")
    } else if what == "mesh" && ip.is_unspecified() {
        Some("it is unspecified; report an address other nodes can reach")
    } else if parsed.port() == api.port()
        && (ip == api.ip().to_canonical()
            || (api.ip().is_unspecified()
                && (ip.is_loopback()
                    || ip.is_unspecified()
                    || hosts.iter().any(|h| h.parse() == Ok(ip)))))
    {
        Some("it is the control plane's own API address")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(format!(
            "invalid {what} address {addr:?}: {reason}; start the node with a --listen or --mesh-listen address of its own"
        )),
        None => Ok(parsed),
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
