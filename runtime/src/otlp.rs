//! Request spans exported over OTLP (`--otlp-endpoint`): each hop's span
//! (the one its span log line shows, with the same trace, span and parent
//! ids, so a trace across ingress and mesh hops joins up in Jaeger, Tempo
//! or any OpenTelemetry collector) is queued without waiting and sent in
//! batches by the OpenTelemetry project's OTLP/HTTP exporter (protobuf).
//! Spans of traces a caller marked unsampled are not sent; when the queue
//! is full, spans are dropped (and counted in a log line), never waited
//! for.

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// Spans waiting to be sent, at most; more are dropped.
pub const QUEUE: usize = 8_192;

/// Spans sent in one request, at most.
const BATCH: usize = 512;

/// How long a span waits at most before its batch is sent.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The longest method kept of one a client made up, characters.
const MAX_METHOD: usize = 32;

/// The longest request path kept on a span, characters.
const MAX_PATH: usize = 256;

/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The process's exporter, once started.
static EXPORT: OnceLock<Exporting> = OnceLock::new();

struct Exporting {
    queue: mpsc::Sender<SpanData>,
    dropped: AtomicU64,
}

/// One hop's span, as the request path knows it.
pub struct HopSpan<'a> {
    /// The trace's id.
    pub trace_id: [u8; 16],
    /// The hop's span id.
    pub span_id: [u8; 8],
    /// The calling span's id; `None` for a trace's first hop.
    pub parent_id: Option<[u8; 8]>,
    /// Whether the trace is sampled (`traceparent` flags).
    pub sampled: bool,
    /// The request's method.
    pub method: &'a http::Method,
    /// The route that served it, e.g. `/api/...`; `None` for a component
    /// reached only over the mesh.
    pub route: Option<String>,
    /// The request's path (without its query).
    pub path: &'a str,
    /// The app and component serving it.
    pub app: &'a str,
    /// The component.
    pub component: &'a str,
    /// Who called: `ingress`, or the calling workload's SPIFFE id.
    pub caller: String,
    /// The status answered.
    pub status: u16,
    /// When the request arrived and when its response head was ready.
    pub start: SystemTime,
    /// When its response head was ready.
    pub end: SystemTime,
}

/// Starts exporting to `endpoint` (`http://collector:4318`, `/v1/traces`
/// added when no path is given) as the service instance `instance` (the
/// node's name); must run inside the process's tokio runtime.
///
/// # Errors
///
/// An endpoint that is not an http(s) URL, or an exporter that cannot be
/// built; and a second start.
pub fn start(endpoint: &str, instance: &str) -> Result<(), String> {
    // Errors and logs name the endpoint without its query (a token may be
    // there): never its credentials.
    let url: http::Uri = endpoint
        .parse()
        .map_err(|e| format!("--otlp-endpoint is not a URL: {e}"))?;
    if url.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(
            "--otlp-endpoint: credentials in the URL are not sent; give the collector's URL without them"
                .to_string(),
        );
    }
    if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() {
        return Err(
            "--otlp-endpoint: give an http:// or https:// URL, such as http://127.0.0.1:4318"
                .to_string(),
        );
    }
    let endpoint = if matches!(url.path(), "" | "/") {
        format!("{}/v1/traces", endpoint.trim_end_matches('/'))
    } else {
        endpoint.to_string()
    };
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    let client = opentelemetry_http::hyper::HyperClient::new(connector, EXPORT_TIMEOUT, None);
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_endpoint(&endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| format!("cannot export spans to {endpoint}: {e}"))?;
    // OpenTelemetry's own variable names the service, as in every SDK.
    let service = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|name| !name.trim().is_empty())
        .unwrap_or_else(|| "skiff".to_string());
    exporter.set_resource(
        &opentelemetry_sdk::Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", service),
                KeyValue::new("service.instance.id", instance.to_string()),
                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            ])
            .build(),
    );
    let (queue, spans) = mpsc::channel(QUEUE);
    EXPORT
        .set(Exporting {
            queue,
            dropped: AtomicU64::new(0),
        })
        .map_err(|_| "spans are already exported".to_string())?;
    let shown = format!(
        "{}://{}{}",
        url.scheme_str().unwrap_or("http"),
        url.authority().map_or("", |a| a.as_str()),
        if matches!(url.path(), "" | "/") {
            "/v1/traces"
        } else {
            url.path()
        }
    );
    tokio::spawn(send_batches(exporter, spans, shown));
    Ok(())
}

/// Whether spans are exported.
pub fn enabled() -> bool {
    EXPORT.get().is_some()
}

/// Queues `hop`'s span, unless its trace is unsampled or the queue is
/// full.
pub fn export(hop: HopSpan<'_>) {
    let Some(exporting) = EXPORT.get() else {
        return;
    };
    if !hop.sampled {
        return;
    }
    if exporting.queue.try_send(span_data(hop)).is_err() {
        exporting.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// The OpenTelemetry form of `hop`: a server span named after its method
/// and route, as OpenTelemetry's HTTP conventions name spans.
fn span_data(hop: HopSpan<'_>) -> SpanData {
    // A method of a client's own making is `_OTHER`, as OpenTelemetry's
    // conventions say, its first bytes kept apart: no client makes a span
    // as large as its method.
    let method: &'static str = match *hop.method {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::CONNECT => "CONNECT",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::TRACE => "TRACE",
        http::Method::PATCH => "PATCH",
        _ => "_OTHER",
    };
    let name = match &hop.route {
        Some(route) => format!("{method} {route}"),
        // Reached only over the mesh: named after the callee.
        None => format!("{method} {}/{}", hop.app, hop.component),
    };
    let mut attributes = vec![
        KeyValue::new("http.request.method", method),
        KeyValue::new("http.response.status_code", i64::from(hop.status)),
        KeyValue::new("skiff.app", hop.app.to_string()),
        KeyValue::new("skiff.component", hop.component.to_string()),
        KeyValue::new("skiff.caller", hop.caller),
    ];
    if let Some(route) = hop.route {
        attributes.push(KeyValue::new("http.route", route));
    }
    let path: String = hop.path.chars().take(MAX_PATH).collect();
    attributes.push(KeyValue::new("url.path", path));
    if method == "_OTHER" {
        let original: String = hop.method.as_str().chars().take(MAX_METHOD).collect();
        attributes.push(KeyValue::new("http.request.method_original", original));
    }
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(hop.trace_id),
            SpanId::from_bytes(hop.span_id),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: hop.parent_id.map_or(SpanId::INVALID, SpanId::from_bytes),
        parent_span_is_remote: hop.parent_id.is_some(),
        span_kind: SpanKind::Server,
        name: name.into(),
        start_time: hop.start,
        end_time: hop.end,
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: if hop.status >= 500 {
            Status::error(format!("status {}", hop.status))
        } else {
            Status::Unset
        },
        instrumentation_scope: InstrumentationScope::builder("skiff").build(),
    }
}

/// Sends what is queued in batches of at most [`BATCH`], at least every
/// [`FLUSH_EVERY`] while spans wait; a failed export is logged (at most
/// once a minute) and its spans dropped.
async fn send_batches(
    exporter: opentelemetry_otlp::SpanExporter,
    mut spans: mpsc::Receiver<SpanData>,
    endpoint: String,
) {
    let mut last_complaint: Option<std::time::Instant> = None;
    let mut complain = |what: String| {
        if last_complaint.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
            last_complaint = Some(std::time::Instant::now());
            tracing::warn!(reason = "otlp_export_failed", "{what}");
        }
    };
    loop {
        let Some(first) = spans.recv().await else {
            return;
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, spans.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let count = batch.len();
        if let Err(e) = exporter.export(batch).await {
            complain(format!("{count} spans not sent to {endpoint}: {e}"));
        }
        if let Some(exporting) = EXPORT.get() {
            let dropped = exporting.dropped.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                complain(format!(
                    "{dropped} spans dropped: more than {QUEUE} waited to be sent to {endpoint}"
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(method: &http::Method) -> HopSpan<'_> {
        HopSpan {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_id: None,
            sampled: true,
            method,
            route: Some("/api/...".to_string()),
            path: "/api/orders",
            app: "shop",
            component: "api",
            caller: "ingress".to_string(),
            status: 503,
            start: SystemTime::UNIX_EPOCH,
            end: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_made_up_method_is_other_and_kept_short() {
        let long = http::Method::from_bytes(&[b'A'; 300_000]).unwrap();
        let span = span_data(hop(&long));
        assert_eq!(span.name, "_OTHER /api/...");
        let original = span
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == "http.request.method_original")
            .unwrap();
        assert_eq!(original.value.as_str().len(), MAX_METHOD);
        let get = span_data(hop(&http::Method::GET));
        assert_eq!(get.name, "GET /api/...");
        assert!(
            matches!(span.status, Status::Error { .. }),
            "a 503 is an error"
        );
    }

    #[test]
    fn endpoints_with_credentials_or_without_a_scheme_are_refused() {
        let err = start("http://user:secret@127.0.0.1:4318", "n").unwrap_err();
        assert!(
            err.contains("credentials") && !err.contains("secret"),
            "{err}"
        );
        assert!(
            start("collector:4318", "n")
                .unwrap_err()
                .contains("http://")
        );
    }
}
