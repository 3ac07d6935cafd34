//! Echoes a request back: the body streams back unchanged, and the request's
//! method, path, query and headers come back as `echo-*` response headers.
//!
//! Run it: `skiff run examples/echo --build`, then
//! `curl -d 'hi' 'localhost:3000/any/path?x=1' -i`.

use skiff_sdk::http::{HeaderName, HeaderValue};
use skiff_sdk::{Body, Request, Response};

fn echo(request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    let mut put = |name: String, value: &[u8]| {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    };
    put("echo-method".into(), parts.method.as_str().as_bytes());
    put("echo-path".into(), parts.uri.path().as_bytes());
    put(
        "echo-query".into(),
        parts.uri.query().unwrap_or("").as_bytes(),
    );
    for (name, value) in &parts.headers {
        put(format!("echo-header-{name}"), value.as_bytes());
    }
    response
}

skiff_sdk::export_handler!(echo);
