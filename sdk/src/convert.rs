//! Conversions between `wasi:http` types and the `http` crate's.

use wasip2::http::types as wasi;

pub(crate) fn method_from_wasi(method: wasi::Method) -> http::Method {
    match method {
        wasi::Method::Get => http::Method::GET,
        wasi::Method::Head => http::Method::HEAD,
        wasi::Method::Post => http::Method::POST,
        wasi::Method::Put => http::Method::PUT,
        wasi::Method::Delete => http::Method::DELETE,
        wasi::Method::Connect => http::Method::CONNECT,
        wasi::Method::Options => http::Method::OPTIONS,
        wasi::Method::Trace => http::Method::TRACE,
        wasi::Method::Patch => http::Method::PATCH,
        wasi::Method::Other(other) => {
            http::Method::from_bytes(other.as_bytes()).unwrap_or(http::Method::GET)
        }
    }
}

pub(crate) fn method_to_wasi(method: &http::Method) -> wasi::Method {
    match *method {
        http::Method::GET => wasi::Method::Get,
        http::Method::HEAD => wasi::Method::Head,
        http::Method::POST => wasi::Method::Post,
        http::Method::PUT => wasi::Method::Put,
        http::Method::DELETE => wasi::Method::Delete,
        http::Method::CONNECT => wasi::Method::Connect,
        http::Method::OPTIONS => wasi::Method::Options,
        http::Method::TRACE => wasi::Method::Trace,
        http::Method::PATCH => wasi::Method::Patch,
        ref other => wasi::Method::Other(other.as_str().to_string()),
    }
}

pub(crate) fn headers_from_wasi(fields: &wasi::Fields, into: &mut http::HeaderMap) {
    for (name, value) in fields.entries() {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_bytes(&value),
        ) {
            into.append(name, value);
        }
    }
}

/// Builds a `fields` resource; headers the host forbids (hop-by-hop ones
/// such as `connection`) are skipped rather than failing the response.
pub(crate) fn headers_to_wasi(headers: &http::HeaderMap) -> wasi::Fields {
    let fields = wasi::Fields::new();
    for (name, value) in headers {
        let _ = fields.append(name.as_str(), value.as_bytes());
    }
    fields
}
