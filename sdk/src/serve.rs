//! The glue behind [`export_handler!`](crate::export_handler): turns the
//! host's `incoming-request` into an `http::Request`, calls the handler, and
//! streams its response back.

use crate::body::{Body, IncomingBody};
use crate::convert::{headers_from_wasi, headers_to_wasi, method_from_wasi};
use crate::{Request, Response};
use std::fmt::Display;
use wasip2::http::types as wasi;

/// What a handler may return.
pub trait IntoResponse {
    /// Converts into a response.
    fn into_response(self) -> Response;
}

impl<B: Into<Body>> IntoResponse for http::Response<B> {
    fn into_response(self) -> Response {
        self.map(Into::into)
    }
}

impl IntoResponse for &'static str {
    fn into_response(self) -> Response {
        Response::new(self.into())
    }
}

impl IntoResponse for String {
    fn into_response(self) -> Response {
        Response::new(self.into())
    }
}

impl<R: IntoResponse, E: Display> IntoResponse for Result<R, E> {
    fn into_response(self) -> Response {
        match self {
            Ok(ok) => ok.into_response(),
            Err(e) => {
                let mut response = Response::new(format!("error: {e}\n").into());
                *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                response
            }
        }
    }
}

/// Runs `handler` for one incoming request.
pub fn serve<R: IntoResponse>(
    request: wasi::IncomingRequest,
    response_out: wasi::ResponseOutparam,
    handler: impl FnOnce(Request) -> R,
) {
    let request = to_http_request(request);
    let response = handler(request).into_response();
    send_response(response, response_out);
}

fn to_http_request(request: wasi::IncomingRequest) -> Request {
    let path = request.path_with_query().unwrap_or_else(|| "/".to_string());
    let mut uri = http::Uri::builder();
    if let Some(authority) = request.authority() {
        let scheme = match request.scheme() {
            Some(wasi::Scheme::Https) => "https",
            _ => "http",
        };
        uri = uri.scheme(scheme).authority(authority);
    }
    let uri = uri
        .path_and_query(path.as_str())
        .build()
        .unwrap_or_else(|_| http::Uri::from_static("/"));
    let mut builder = http::Request::builder()
        .method(method_from_wasi(request.method()))
        .uri(uri);
    if let Some(headers) = builder.headers_mut() {
        headers_from_wasi(&request.headers(), headers);
    }
    let body = IncomingBody::new(request.consume().ok());
    builder
        .body(body)
        .expect("method, uri and headers were validated above")
}

fn send_response(response: Response, response_out: wasi::ResponseOutparam) {
    let (parts, body) = response.into_parts();
    let mut headers = parts.headers;
    if let Some(len) = body.known_len()
        && !headers.contains_key(http::header::CONTENT_LENGTH)
    {
        headers.insert(http::header::CONTENT_LENGTH, len.into());
    }
    let outgoing = wasi::OutgoingResponse::new(headers_to_wasi(&headers));
    let _ = outgoing.set_status_code(parts.status.as_u16());
    let outgoing_body = outgoing.body().expect("a new response has a body");
    wasi::ResponseOutparam::set(response_out, Ok(outgoing));
    let mut stream = outgoing_body.write().expect("body stream is taken once");
    let written = body.write_to(&mut stream);
    drop(stream);
    match written {
        Ok(()) => {
            let _ = wasi::OutgoingBody::finish(outgoing_body, None);
        }
        Err(e) => {
            // The head is already sent; dropping the body unfinished tells the
            // host the response is incomplete, so the client sees an error.
            // A client that went away is not worth a log line.
            if !matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::UnexpectedEof
            ) {
                eprintln!("response body failed: {e}");
            }
            drop(outgoing_body);
        }
    }
}
