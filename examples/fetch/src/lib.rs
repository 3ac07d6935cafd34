//! Calls another HTTP service and relays its answer. The target is
//! `?url=...` or the `DEFAULT_URL` setting; the manifest's
//! `allowed_outbound_hosts` decides which hosts may be called.
//!
//! Run it: `skiff run examples/fetch --build`, then `curl localhost:3000/`
//! (which calls the app's own `/hello` component through loopback).

use skiff_sdk::http::StatusCode;
use skiff_sdk::{Body, Request, Response, config, outbound};

fn fetch(request: Request) -> Response {
    let target = request
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("url=")))
        .map(str::to_string)
        .or_else(|| config::get("DEFAULT_URL"));
    let Some(target) = target else {
        return error(
            StatusCode::BAD_REQUEST,
            "pass ?url=... or set DEFAULT_URL".into(),
        );
    };
    match outbound::get(&target) {
        Ok(upstream) => {
            let status = upstream.status();
            let mut response = Response::new(Body::from(upstream.into_body()));
            *response.status_mut() = status;
            response
        }
        Err(outbound::Error::Denied) => error(
            StatusCode::FORBIDDEN,
            format!("calling {target} is not allowed by allowed_outbound_hosts"),
        ),
        Err(e) => error(
            StatusCode::BAD_GATEWAY,
            format!("calling {target} failed: {e}"),
        ),
    }
}

fn error(status: StatusCode, message: String) -> Response {
    let mut response = Response::new(format!("{message}\n").into());
    *response.status_mut() = status;
    response
}

skiff_sdk::export_handler!(fetch);
