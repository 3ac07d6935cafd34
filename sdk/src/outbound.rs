//! Outbound HTTP: call services the manifest's `allowed_outbound_hosts`
//! permits. Everything else is refused by the host with
//! [`Error::Denied`].

use crate::body::{Body, IncomingBody};
use crate::convert::{headers_from_wasi, headers_to_wasi, method_to_wasi};
use std::fmt;
use wasip2::http::outgoing_handler;
use wasip2::http::types as wasi;

/// Why an outbound request failed.
#[derive(Debug)]
pub enum Error {
    /// The host refused: the destination is not in `allowed_outbound_hosts`.
    Denied,
    /// The URI has no scheme or host.
    InvalidUri(String),
    /// The host reported a `wasi:http` error (connect, timeout, ...).
    Http(String),
    /// Writing the request body failed.
    Body(std::io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Denied => {
                f.write_str("outbound request denied: host not in allowed_outbound_hosts")
            }
            Error::InvalidUri(why) => write!(f, "invalid outbound uri: {why}"),
            Error::Http(code) => write!(f, "outbound request failed: {code}"),
            Error::Body(e) => write!(f, "outbound request body failed: {e}"),
        }
    }
}

impl std::error::Error for Error {}

fn from_code(code: wasi::ErrorCode) -> Error {
    match code {
        wasi::ErrorCode::HttpRequestDenied => Error::Denied,
        other => Error::Http(format!("{other:?}")),
    }
}

/// Sends `request` and waits for the response head; the body streams. A
/// body whose length is known (bytes, a string, empty) is sent with its
/// `content-length`, so the receiver knows at once where it ends (and a
/// request without a body can be retried elsewhere).
///
/// # Errors
///
/// [`Error`] when the host refuses or the request fails.
pub fn send(
    request: http::Request<impl Into<Body>>,
) -> Result<http::Response<IncomingBody>, Error> {
    let (mut parts, body) = request.into_parts();
    let body: Body = body.into();
    if let Some(len) = body.known_len()
        && !parts.headers.contains_key(http::header::CONTENT_LENGTH)
        && !parts.headers.contains_key(http::header::TRANSFER_ENCODING)
    {
        parts
            .headers
            .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    }
    let uri = &parts.uri;
    let scheme = match uri.scheme_str() {
        Some("http") => wasi::Scheme::Http,
        Some("https") => wasi::Scheme::Https,
        Some(other) => wasi::Scheme::Other(other.to_string()),
        None => return Err(Error::InvalidUri(format!("{uri} has no scheme"))),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| Error::InvalidUri(format!("{uri} has no host")))?;

    let outgoing = wasi::OutgoingRequest::new(headers_to_wasi(&parts.headers));
    let invalid = |what: &str| Error::InvalidUri(format!("{what} of {uri} rejected by the host"));
    outgoing
        .set_method(&method_to_wasi(&parts.method))
        .map_err(|()| invalid("method"))?;
    outgoing
        .set_scheme(Some(&scheme))
        .map_err(|()| invalid("scheme"))?;
    outgoing
        .set_authority(Some(authority.as_str()))
        .map_err(|()| invalid("authority"))?;
    outgoing
        .set_path_with_query(uri.path_and_query().map(|p| p.as_str()))
        .map_err(|()| invalid("path"))?;

    let outgoing_body = outgoing.body().expect("a new request has a body");
    let pending = outgoing_handler::handle(outgoing, None).map_err(from_code)?;
    let mut stream = outgoing_body.write().expect("body stream is taken once");
    let written = body.write_to(&mut stream);
    drop(stream);
    written.map_err(Error::Body)?;
    wasi::OutgoingBody::finish(outgoing_body, None).map_err(from_code)?;

    pending.subscribe().block();
    let incoming = match pending.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return Err(from_code(code)),
        Some(Err(())) | None => {
            return Err(Error::Http("response already taken".to_string()));
        }
    };
    let mut response = http::Response::builder()
        .status(incoming.status())
        .body(())
        .expect("a status from the host is valid");
    headers_from_wasi(&incoming.headers(), response.headers_mut());
    let body = IncomingBody::new(incoming.consume().ok());
    Ok(response.map(|()| body))
}

/// `GET uri`, a shorthand for [`send`].
///
/// # Errors
///
/// As [`send`], plus an unparsable `uri`.
pub fn get(uri: &str) -> Result<http::Response<IncomingBody>, Error> {
    let request = http::Request::get(uri)
        .body(Body::empty())
        .map_err(|e| Error::InvalidUri(e.to_string()))?;
    send(request)
}
