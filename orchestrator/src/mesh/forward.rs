//! Forwarding to other nodes, in three stages: balance (the order to try
//! the nodes running the component in: first the cheaper of two picked at
//! random, by its peak-EWMA latency times its requests in flight from
//! here, as Linkerd balances), retry where safe and within the node's
//! retry budget (a request without a body moves on to the next node when
//! one cannot be connected to, no longer runs the component, or refused
//! it before any guest code ran, for overload or memory pressure; one
//! with a body is sent once), and one attempt (the request sent over mTLS with
//! its target, version and hop count in `skiff-*` headers, counted in
//! flight until its response body ends).

use super::client::{BoxError, ForwardBody, MeshClient, client, failure_kind, with_sources};
use super::metrics::ForwardOutcome;
use super::outliers::Outcome;
use super::{APP_HEADER, COMPONENT_HEADER, HOPS_HEADER, NOT_HERE_HEADER, VERSION_HEADER};
use super::{Members, NodeIdentity};
use crate::api::{AppRouting, Endpoint};
use bytes::Bytes;
use http_body::Body;
use http_body_util::{BodyExt, Empty};
use skiff_runtime::invoke::{Answer, plain, relayed};
use skiff_runtime::mesh::Inbound;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

/// The latency key of the replica of `(app, component)` on node `node`,
/// this one, served without the mesh.
fn local_key((app, component, node): (&str, &str, &str)) -> String {
    format!("{app}/{component}@{node}#here")
}

/// Components whose retry budgets are kept at most.
const MAX_BUDGETS: usize = 100_000;

/// How the first node to try is chosen among two picked at random.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Balancer {
    /// The one whose peak-EWMA latency times requests in flight is lower
    /// (Linkerd's balancer): a slow replica gets less traffic.
    #[default]
    Ewma,
    /// The one with fewer requests in flight from this node.
    InFlight,
}

/// Forwards requests to other nodes, choosing by the power of two
/// choices: of two endpoints picked at random, the cheaper (see
/// [`Balancer`]).
pub(crate) struct Forwarder {
    addresses: Arc<RwLock<HashMap<String, SocketAddr>>>,
    members: Members,
    client: RwLock<MeshClient>,
    in_flight: RwLock<HashMap<String, Arc<AtomicUsize>>>,
    /// Each component's replicas (by node) that failed in a row, left
    /// out for a while.
    outliers: super::outliers::Outliers,
    /// Each replica's answer times.
    latencies: super::latency::Latencies,
    /// How many attempts may be retries, per component: one app's
    /// failures do not spend another's retries.
    budgets: RwLock<HashMap<String, Arc<super::retry_budget::RetryBudget>>>,
    balancer: Balancer,
    /// Attempts by peer and outcome.
    pub(crate) metrics: super::metrics::ForwardMetrics,
}

/// Counts a request in flight to one node until dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(counter: Arc<AtomicUsize>) -> InFlight {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(counter)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A forwarded response body that keeps its request counted in flight
/// until it ends (or is dropped).
struct Counted<B> {
    body: Pin<Box<B>>,
    _in_flight: InFlight,
}

impl<B> Counted<B> {
    fn new(body: B, in_flight: InFlight) -> Counted<B> {
        Counted {
            body: Box::pin(body),
            _in_flight: in_flight,
        }
    }
}

impl<B: hyper::body::Body> hyper::body::Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        self.body.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Forwarder {
    /// Forwards as `identity`, to peers that `members` holds current.
    pub(crate) fn new(identity: &NodeIdentity, members: &Members) -> anyhow::Result<Forwarder> {
        let addresses = Arc::new(RwLock::new(HashMap::new()));
        let client = RwLock::new(client(identity, members, &addresses)?);
        Ok(Forwarder {
            addresses,
            members: members.clone(),
            client,
            in_flight: RwLock::new(HashMap::new()),
            outliers: Default::default(),
            latencies: Default::default(),
            budgets: Default::default(),
            balancer: Balancer::default(),
            metrics: Default::default(),
        })
    }

    /// Records that the replica on this node (`(app, component, node)`)
    /// answered in `rtt`.
    pub(crate) fn observe_local(&self, here: (&str, &str, &str), rtt: std::time::Duration) {
        if self.balancer == Balancer::Ewma {
            self.latencies.observe(&local_key(here), rtt);
        }
    }

    /// Whether the replica on this node (`(app, component, node)`, with
    /// `in_flight` requests) costs more than twice what the cheapest of
    /// `elsewhere` does, by peak-EWMA latency times requests in flight:
    /// local replicas are preferred only while they are not clearly
    /// slower. A replica elsewhere not yet measured is not taken for
    /// faster; and the local estimate decays while unused, so the local
    /// replica is tried again.
    pub(crate) fn local_is_slower(
        &self,
        here: (&str, &str, &str),
        elsewhere: &[&Endpoint],
        in_flight: usize,
    ) -> bool {
        if self.balancer != Balancer::Ewma {
            return false;
        }
        let local = self.latencies.estimate(&local_key(here));
        if local == 0.0 {
            return false;
        }
        let target = Target {
            app: here.0,
            component: here.1,
            answer_within: std::time::Duration::ZERO,
        };
        let best = elsewhere
            .iter()
            .filter_map(|e| {
                let estimate = self.latencies.estimate(&target.replica_on(e));
                (estimate > 0.0).then(|| {
                    let in_flight = self.in_flight(&e.node).load(Ordering::Relaxed);
                    super::latency::cost(estimate, in_flight)
                })
            })
            .fold(f64::INFINITY, f64::min);
        super::latency::cost(local, in_flight) > 2.0 * best
    }

    /// Chooses among endpoints by `balancer`.
    pub(crate) fn with_balancer(mut self, balancer: Balancer) -> Forwarder {
        self.balancer = balancer;
        self
    }

    /// A client presenting `identity` (a workload's certificate) to
    /// peers that `members` holds current.
    pub(crate) fn client_presenting(&self, identity: &NodeIdentity) -> anyhow::Result<MeshClient> {
        client(identity, &self.members, &self.addresses)
    }

    /// Switches to a renewed certificate.
    pub(crate) fn use_identity(&self, identity: &NodeIdentity) -> anyhow::Result<()> {
        *self.client.write().expect("mesh client lock") =
            client(identity, &self.members, &self.addresses)?;
        Ok(())
    }

    /// Records where every node with a replica listens.
    pub(crate) fn learn(&self, apps: &[AppRouting]) {
        let mut addresses = self.addresses.write().expect("mesh address lock");
        for endpoint in apps.iter().flat_map(|a| a.endpoints.values().flatten()) {
            if let Ok(addr) = endpoint.mesh.parse() {
                addresses.insert(endpoint.node.clone(), addr);
            }
        }
    }

    /// The requests in flight to `node` from here.
    fn in_flight(&self, node: &str) -> Arc<AtomicUsize> {
        if let Some(counter) = self.in_flight.read().expect("in-flight lock").get(node) {
            return counter.clone();
        }
        self.in_flight
            .write()
            .expect("in-flight lock")
            .entry(node.to_string())
            .or_default()
            .clone()
    }

    /// The index to try first among `endpoints` of `target`: the cheaper
    /// of two picked from `seed` (a counter, spread by a multiplicative
    /// hash).
    fn first_choice(&self, target: Target<'_>, endpoints: &[&Endpoint], seed: usize) -> usize {
        let n = endpoints.len();
        if n < 2 {
            return 0;
        }
        let spread = (seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        let a = (spread % n as u64) as usize;
        let b = (a + 1 + ((spread >> 16) % (n as u64 - 1)) as usize) % n;
        let in_flight = |i: usize| self.in_flight(&endpoints[i].node).load(Ordering::Relaxed);
        let cheaper = match self.balancer {
            Balancer::InFlight => in_flight(b) < in_flight(a),
            Balancer::Ewma => {
                let cost = |i: usize| {
                    let estimate = self.latencies.estimate(&target.replica_on(endpoints[i]));
                    super::latency::cost(estimate, in_flight(i))
                };
                cost(b) < cost(a)
            }
        };
        if cheaper { b } else { a }
    }

    /// Sends `request` for `target` to a node running it (one of
    /// `endpoints`, none of them this node), trying them in the order
    /// [`Forwarder::balance`] gives from `seed`, and moving on only where
    /// that is safe. A mesh call goes with `caller_client`, which presents
    /// the calling workload's certificate; ingress traffic with the node's.
    pub(crate) async fn forward<B>(
        &self,
        target: Target<'_>,
        endpoints: &[&Endpoint],
        seed: usize,
        request: hyper::Request<B>,
        inbound: &Inbound,
        caller_client: Option<MeshClient>,
    ) -> Forwarded
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let client =
            caller_client.unwrap_or_else(|| self.client.read().expect("mesh client lock").clone());
        let replayable = surely_bodiless(&request);
        let (parts, body) = request.into_parts();
        let mut refusal = None;
        let mut body = Some(body.map_err(Into::into).boxed_unsync());
        let mut last_error = String::new();
        let mut last_status = http::StatusCode::BAD_GATEWAY;
        let budget = self.budget(target);
        super::retry_budget::Budget::deposit(&*budget);
        let order = self.balance(target, endpoints, seed);
        let mut order = order.iter().peekable();
        while let Some(endpoint) = order.next() {
            // Retry if safe: a body is sent once; a bodiless request again,
            // with an empty body, while the budget allows.
            let body = match body.take() {
                Some(body) => body,
                None if replayable && self.retry_allowed(target, &budget) => {
                    Empty::new().map_err(|never| match never {}).boxed_unsync()
                }
                None => break,
            };
            let attempt = Attempt {
                client: &client,
                endpoint,
                target,
                inbound,
            };
            match attempt.send(&parts, body, self).await {
                // The node refused it before any guest code ran (overload,
                // memory pressure): the next node may take it. Kept, to
                // pass on should no other node answer.
                Ok(response) if replayable && order.peek().is_some() && refused(&response) => {
                    refusal = Some(response);
                }
                Ok(response) => return Forwarded::Answered(response),
                Err(failure) => {
                    refusal = None;
                    last_error = failure.why;
                    last_status = failure.status;
                    if !(replayable && failure.nothing_ran) {
                        break;
                    }
                }
            }
        }
        if let Some(refusal) = refusal {
            return Forwarded::Answered(refusal);
        }
        let failed = plain(
            last_status,
            format!(
                "app \"{}\" component \"{}\": no replica could be reached ({last_error})\n",
                target.app, target.component
            ),
        );
        if replayable {
            Forwarded::Unanswered(failed, Box::new(parts))
        } else {
            Forwarded::Answered(failed)
        }
    }

    /// The order to try `endpoints` in: first the less busy of two picked
    /// from `seed` (the power of two choices), then the rest in turn; a
    /// node holding several replicas comes once; replicas ejected for
    /// failing in a row come last (tried only when every other failed).
    fn balance<'e>(
        &self,
        target: Target<'_>,
        endpoints: &[&'e Endpoint],
        seed: usize,
    ) -> Vec<&'e Endpoint> {
        let start = self.first_choice(target, endpoints, seed);
        let mut order: Vec<&Endpoint> = Vec::with_capacity(endpoints.len());
        for i in 0..endpoints.len() {
            let endpoint = endpoints[(start + i) % endpoints.len()];
            if !order.iter().any(|e| e.node == endpoint.node) {
                order.push(endpoint);
            }
        }
        if self.outliers.any() {
            let now = std::time::Instant::now();
            // Stable: the balanced order holds within each group.
            order.sort_by_key(|e| self.outliers.ejected(&target.replica_on(e), now));
        }
        order
    }

    /// The retry budget of `target`'s component.
    fn budget(&self, target: Target<'_>) -> Arc<super::retry_budget::RetryBudget> {
        let key = format!("{}/{}", target.app, target.component);
        if let Some(budget) = self.budgets.read().expect("budget lock").get(&key) {
            return budget.clone();
        }
        let mut budgets = self.budgets.write().expect("budget lock");
        // Bounded: past this many components, budgets start afresh.
        if budgets.len() >= MAX_BUDGETS {
            budgets.clear();
        }
        budgets
            .entry(key)
            .or_insert_with(|| Arc::new(super::retry_budget::budget()))
            .clone()
    }

    /// Whether one more attempt may be made for `target` (counted if so);
    /// a refusal is logged.
    fn retry_allowed(&self, target: Target<'_>, budget: &super::retry_budget::RetryBudget) -> bool {
        let allowed = super::retry_budget::Budget::withdraw(budget);
        if !allowed {
            tracing::warn!(
                app = target.app,
                component = target.component,
                reason = "retry_budget",
                "not retried: retries are over their budget ({}% of requests plus {} a second)",
                (super::retry_budget::RETRY_RATIO * 100.0).round() as u32,
                super::retry_budget::MIN_RETRIES_PER_SEC
            );
        }
        allowed
    }

    /// Records how a forwarded request to `node` for `target` went, and
    /// logs an ejection it causes.
    fn record(&self, target: Target<'_>, endpoint: &Endpoint, outcome: super::outliers::Outcome) {
        let node = endpoint.node.as_str();
        // The usual case, an answer while nothing failed: nothing to do.
        if outcome == Outcome::Answered && !self.outliers.any() {
            return;
        }
        let replica = target.replica_on(endpoint);
        if let Some(length) = self
            .outliers
            .record(&replica, outcome, std::time::Instant::now())
        {
            tracing::warn!(
                app = target.app,
                component = target.component,
                node,
                reason = "outlier_ejected",
                "{} requests forwarded in a row failed; the replica on {node} is left out of forwarding for {}",
                super::outliers::FAILURES_TO_EJECT,
                humantime::format_duration(length)
            );
        }
    }
}

/// The app and component a forwarded request is for.
#[derive(Clone, Copy)]
pub(crate) struct Target<'a> {
    /// The app's name.
    pub(crate) app: &'a str,
    /// The component's name.
    pub(crate) component: &'a str,
    /// How long to wait for the answer's head from a node before giving
    /// up (504): the request may have run there, so it is not sent again.
    pub(crate) answer_within: std::time::Duration,
}

impl Target<'_> {
    /// The key of its replica at `endpoint`, for outlier ejection: a
    /// replica failing is its version's business on that node, not the
    /// node's for every app, nor the other version's there.
    fn replica_on(&self, endpoint: &Endpoint) -> String {
        format!(
            "{}/{}@{}#{}",
            self.app, self.component, endpoint.node, endpoint.package
        )
    }
}

/// One try at one node.
struct Attempt<'a> {
    client: &'a MeshClient,
    endpoint: &'a Endpoint,
    target: Target<'a>,
    inbound: &'a Inbound,
}

/// Why an attempt failed, in words safe for any client (no node names,
/// which are the operator's business, as the cause in full is; the log
/// has both), and whether the request surely did not run there (so
/// another node may be tried).
struct AttemptFailed {
    why: String,
    nothing_ran: bool,
    /// The answer's status, should this be the last attempt.
    status: http::StatusCode,
}

impl Attempt<'_> {
    /// Sends the request (`parts` and `body`) to the endpoint's node,
    /// counted in flight there by `forwarder` until its response ends.
    async fn send(
        &self,
        parts: &http::request::Parts,
        body: ForwardBody,
        forwarder: &Forwarder,
    ) -> Result<Answer, AttemptFailed> {
        let node = self.endpoint.node.as_str();
        let forwarded = self.request(parts, body).map_err(|why| AttemptFailed {
            why,
            nothing_ran: true,
            status: http::StatusCode::BAD_GATEWAY,
        })?;
        let counted = InFlight::enter(forwarder.in_flight(node));
        let within = self.target.answer_within;
        let sent = std::time::Instant::now();
        let replica = self.target.replica_on(self.endpoint);
        let count = |outcome| forwarder.metrics.record(node, outcome);
        let Ok(answer) = tokio::time::timeout(within, self.client.request(forwarded)).await else {
            count(ForwardOutcome::Timeout);
            forwarder.latencies.observe(&replica, within);
            forwarder.record(self.target, self.endpoint, Outcome::Failed);
            tracing::warn!(
                app = self.target.app,
                component = self.target.component,
                node,
                reason = "forward_timeout",
                "forwarded request unanswered after {within:?}; given up"
            );
            return Err(AttemptFailed {
                why: format!("no answer within {}", humantime::format_duration(within)),
                nothing_ran: false,
                status: http::StatusCode::GATEWAY_TIMEOUT,
            });
        };
        match answer {
            // The platform's own signal never reaches the client: a
            // request with a body cannot move on, so it gets the 502.
            Ok(response) if not_here(&response) => {
                count(ForwardOutcome::NotHere);
                Err(AttemptFailed {
                    why: "the node no longer runs it".to_string(),
                    nothing_ran: true,
                    status: http::StatusCode::BAD_GATEWAY,
                })
            }
            // Counted until the whole body has gone through.
            Ok(response) => {
                // A refusal comes fast and says nothing of how fast the
                // replica serves: it must not make it look cheap.
                if !refused(&response) {
                    forwarder.latencies.observe(&replica, sent.elapsed());
                }
                // A server error but overload (503) is a failure of this
                // replica.
                let status = response.status();
                let failed =
                    status.is_server_error() && status != http::StatusCode::SERVICE_UNAVAILABLE;
                count(if refused(&response) {
                    ForwardOutcome::Refused
                } else if failed {
                    ForwardOutcome::ServerError
                } else {
                    ForwardOutcome::Answered
                });
                let outcome = if failed {
                    Outcome::Failed
                } else {
                    Outcome::Answered
                };
                forwarder.record(self.target, self.endpoint, outcome);
                Ok(response.map(|body| relayed(Counted::new(body, counted))))
            }
            Err(e) => {
                count(ForwardOutcome::Failed);
                forwarder.record(self.target, self.endpoint, Outcome::Failed);
                // The whole chain goes to the log; the client, who may be
                // anyone, learns only what kind of failure it was
                // (certificate names, cluster names and validity times in
                // TLS errors are the operator's business).
                let error = with_sources(&e);
                let caller = self
                    .inbound
                    .caller
                    .as_ref()
                    .map_or_else(|| "ingress".to_string(), ToString::to_string);
                tracing::warn!(
                    app = self.target.app,
                    component = self.target.component,
                    node,
                    caller,
                    reason = "forward_failed",
                    "forwarding failed: {error}"
                );
                Err(AttemptFailed {
                    why: failure_kind(&e),
                    nothing_ran: e.is_connect(),
                    status: http::StatusCode::BAD_GATEWAY,
                })
            }
        }
    }

    /// The request as the endpoint's node receives it: its target and,
    /// for a mesh call, its hop count in headers; who calls is in the
    /// certificate.
    fn request(
        &self,
        parts: &http::request::Parts,
        body: ForwardBody,
    ) -> Result<hyper::Request<ForwardBody>, String> {
        let node = self.endpoint.node.as_str();
        let Ok(mesh) = self.endpoint.mesh.parse::<SocketAddr>() else {
            tracing::warn!(
                node,
                mesh = self.endpoint.mesh,
                "forwarding skipped: not a mesh address"
            );
            return Err("a node has no valid mesh address".to_string());
        };
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let Ok(mut forwarded) = hyper::Request::builder()
            .method(parts.method.clone())
            .uri(format!("https://{node}:{}{path}", mesh.port()))
            .body(body)
        else {
            tracing::warn!(
                node,
                "forwarding skipped: the node's name is not a valid host"
            );
            return Err("a node cannot be addressed".to_string());
        };
        *forwarded.headers_mut() = parts.headers.clone();
        let headers = forwarded.headers_mut();
        headers.insert(APP_HEADER, header_value(self.target.app));
        headers.insert(COMPONENT_HEADER, header_value(self.target.component));
        // Whatever a client wrote there is not the sender's choice.
        headers.remove(VERSION_HEADER);
        if !self.endpoint.package.is_empty() {
            headers.insert(VERSION_HEADER, header_value(&self.endpoint.package));
        }
        if self.inbound.caller.is_some() {
            headers.insert(
                HOPS_HEADER,
                http::HeaderValue::from(u16::from(self.inbound.hops)),
            );
        }
        // A guest's request names its target in its URI only.
        if let Some(authority) = parts.uri.authority()
            && !parts.headers.contains_key(http::header::HOST)
            && let Ok(host) = http::HeaderValue::from_str(authority.as_str())
        {
            headers.insert(http::header::HOST, host);
        }
        Ok(forwarded)
    }
}

/// What became of a forwarded request.
pub(crate) enum Forwarded {
    /// A response to relay (a node's answer, or the 502 when none was had).
    Answered(Answer),
    /// No node served it, and it has no body, so it can still be served
    /// here: its head, and the 502 otherwise.
    Unanswered(Answer, Box<http::request::Parts>),
}

fn header_value(text: &str) -> http::HeaderValue {
    http::HeaderValue::from_str(text)
        .expect("app and component names and SPIFFE IDs are valid header values")
}

/// Whether a node's answer is the platform's refusal before any guest
/// code ran (see [`skiff_runtime::invoke::REFUSED_HEADER`]): a guest's own
/// answers never carry it.
fn refused<B>(response: &hyper::Response<B>) -> bool {
    response.status() == http::StatusCode::SERVICE_UNAVAILABLE
        && response
            .headers()
            .contains_key(skiff_runtime::invoke::REFUSED_HEADER)
}

/// Whether a mesh answer is the endpoint's own "no such replica here".
fn not_here<B>(response: &hyper::Response<B>) -> bool {
    response.status() == http::StatusCode::SERVICE_UNAVAILABLE
        && response.headers().contains_key(NOT_HERE_HEADER)
}

/// Whether `request` surely has no body, so it can be sent again: its
/// headers declare none (no `transfer-encoding`, no length but 0) and the
/// body is already at its end or declared empty. A guest's streamed body
/// declares nothing in its headers, so its end decides.
pub(crate) fn surely_bodiless<B: Body>(request: &hyper::Request<B>) -> bool {
    let headers = request.headers();
    let length = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    if headers.contains_key(http::header::TRANSFER_ENCODING) || length.is_some_and(|v| v != "0") {
        return false;
    }
    length == Some("0") || request.body().is_end_stream()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::ClusterCa;

    fn forwarder_with(balancer: Balancer) -> Forwarder {
        forwarder().with_balancer(balancer)
    }

    fn forwarder() -> Forwarder {
        let ca = ClusterCa::create("skiff").unwrap();
        let (key, csr) = NodeIdentity::request().unwrap();
        let cert = ca.sign_node("node-a", "1", &csr).unwrap();
        let members = Members::new("skiff");
        Forwarder::new(
            &NodeIdentity::new(key, cert, ca.cert_pem().to_string()),
            &members,
        )
        .unwrap()
    }

    fn endpoint(node: &str) -> Endpoint {
        Endpoint {
            node: node.to_string(),
            mesh: "127.0.0.1:1".to_string(),
            package: String::new(),
        }
    }

    #[test]
    fn the_busiest_endpoint_is_never_tried_first_and_the_rest_share_the_load() {
        let forwarder = forwarder();
        let nodes = [endpoint("x"), endpoint("y"), endpoint("z")];
        let endpoints: Vec<&Endpoint> = nodes.iter().collect();
        forwarder.in_flight("y").store(5, Ordering::Relaxed);
        let mut picked = [0usize; 3];
        for seed in 0..1000 {
            picked[forwarder.first_choice(TARGET, &endpoints, seed)] += 1;
        }
        assert_eq!(picked[1], 0, "{picked:?}");
        assert!(picked[0] > 300 && picked[2] > 300, "{picked:?}");

        // An in-flight count ends with its request.
        let counted = InFlight::enter(forwarder.in_flight("x"));
        assert_eq!(forwarder.in_flight("x").load(Ordering::Relaxed), 1);
        drop(counted);
        assert_eq!(forwarder.in_flight("x").load(Ordering::Relaxed), 0);
        assert_eq!(forwarder.first_choice(TARGET, &endpoints[..1], 7), 0);
    }

    #[test]
    fn the_local_replica_is_left_only_when_clearly_slower_than_a_measured_one() {
        let forwarder = forwarder();
        let nodes = [endpoint("y"), endpoint("z")];
        let here = ("shop", "api", "x");
        let rtt = std::time::Duration::from_millis;
        // Nothing measured here: stay.
        assert!(!forwarder.local_is_slower(here, &[&nodes[0]], 0));
        forwarder.observe_local(here, rtt(40));
        // Elsewhere not measured yet: not taken for faster.
        assert!(!forwarder.local_is_slower(here, &[&nodes[0]], 0));
        forwarder
            .latencies
            .observe(&TARGET.replica_on(&nodes[0]), rtt(30));
        assert!(
            !forwarder.local_is_slower(here, &[&nodes[0]], 0),
            "not twice as slow"
        );
        forwarder
            .latencies
            .observe(&TARGET.replica_on(&nodes[1]), rtt(2));
        assert!(forwarder.local_is_slower(here, &[&nodes[0], &nodes[1]], 0));
        // Busy elsewhere counts: 2 ms x 30 in flight is no better.
        forwarder.in_flight("z").store(30, Ordering::Relaxed);
        assert!(!forwarder.local_is_slower(here, &[&nodes[1]], 0));
        // The in-flight balancer never leaves the local replica for speed.
        let by_count = forwarder_with(Balancer::InFlight);
        by_count.observe_local(here, rtt(40));
        assert!(!by_count.local_is_slower(here, &[&nodes[1]], 0));
    }

    #[test]
    fn a_slow_replica_is_tried_first_less_often_than_a_fast_busy_one() {
        let ewma = forwarder();
        let nodes = [endpoint("x"), endpoint("y"), endpoint("z")];
        let endpoints: Vec<&Endpoint> = nodes.iter().collect();
        for node in &nodes {
            let rtt = if node.node == "y" { 50 } else { 2 };
            ewma.latencies.observe(
                &TARGET.replica_on(node),
                std::time::Duration::from_millis(rtt),
            );
        }
        // x is busy, but y is slow: x still costs less (2 ms x 3 < 50 ms).
        ewma.in_flight("x").store(2, Ordering::Relaxed);
        let mut picked = [0usize; 3];
        for seed in 0..1000 {
            picked[ewma.first_choice(TARGET, &endpoints, seed)] += 1;
        }
        assert_eq!(picked[1], 0, "{picked:?}");
        // By requests in flight alone, y would be picked often.
        let by_count = forwarder().with_balancer(Balancer::InFlight);
        by_count.in_flight("x").store(2, Ordering::Relaxed);
        let mut picked = [0usize; 3];
        for seed in 0..1000 {
            picked[by_count.first_choice(TARGET, &endpoints, seed)] += 1;
        }
        assert!(picked[1] > 300, "{picked:?}");
    }

    #[test]
    fn only_a_request_surely_without_a_body_is_sent_again() {
        let request = |headers: &[(&str, &str)], ended: bool| {
            let mut builder = hyper::Request::post("http://catalog.shop.skiff.internal/");
            for (name, value) in headers {
                builder = builder.header(*name, *value);
            }
            let body = Streamed(ended);
            surely_bodiless(&builder.body(body).unwrap())
        };
        // A client's GET: hyper's body is at its end.
        assert!(request(&[], true));
        assert!(request(&[("content-length", "0")], false));
        // A guest's streamed body declares nothing: not sent again.
        assert!(!request(&[], false));
        assert!(!request(&[("content-length", "5")], true));
        assert!(!request(&[("transfer-encoding", "chunked")], true));
    }

    /// A body that is at its end, or still streaming.
    struct Streamed(bool);

    impl Body for Streamed {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }

        fn is_end_stream(&self) -> bool {
            self.0
        }
    }

    const TARGET: Target<'static> = Target {
        app: "shop",
        component: "api",
        answer_within: std::time::Duration::from_secs(1),
    };

    #[test]
    fn a_node_holding_several_replicas_is_tried_once() {
        let forwarder = forwarder();
        let nodes = [endpoint("x"), endpoint("y"), endpoint("x"), endpoint("z")];
        let endpoints: Vec<&Endpoint> = nodes.iter().collect();
        for seed in 0..50 {
            let mut order: Vec<&str> = forwarder
                .balance(TARGET, &endpoints, seed)
                .iter()
                .map(|e| e.node.as_str())
                .collect();
            order.sort_unstable();
            assert_eq!(order, ["x", "y", "z"], "seed {seed}");
        }
    }

    #[test]
    fn a_replica_failing_in_a_row_is_tried_last_and_only_for_its_component() {
        let forwarder = forwarder();
        let nodes = [endpoint("x"), endpoint("y"), endpoint("z")];
        let endpoints: Vec<&Endpoint> = nodes.iter().collect();
        for _ in 0..super::super::outliers::FAILURES_TO_EJECT {
            forwarder.record(TARGET, &nodes[1], Outcome::Failed);
        }
        let other = Target {
            component: "web",
            ..TARGET
        };
        let mut firsts = std::collections::HashSet::new();
        for seed in 0..50 {
            let order = forwarder.balance(TARGET, &endpoints, seed);
            assert_eq!(order.len(), 3, "still there, last");
            assert_eq!(order[2].node, "y", "seed {seed}");
            firsts.insert(forwarder.balance(other, &endpoints, seed)[0].node.clone());
        }
        assert!(firsts.contains("y"), "another component still goes to y");
    }
}
