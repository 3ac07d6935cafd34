//! A guest that misbehaves on request, one attack per path, for the
//! sandbox tests: `/loop` (logging `looping` first), `/memory`,
//! `/recursion`, `/huge`, `/panic`,
//! `/resources`, `/deep?N` (recursion on the Wasm stack),
//! `/outbound-flood?URL`, `/fetch?URL`, `/read-body`, `/not-here?URL`
//! (calls URL, then answers 503 with the platform's own `skiff-*` headers
//! set, as if it were the mesh saying it holds no replica), and `/ok` for a
//! well-behaved answer.

use skiff_sdk::http::StatusCode;
use skiff_sdk::{Body, Request, Response, outbound};
use std::hint::black_box;
use std::io::Read;

fn attack(request: Request) -> Response {
    let arg = request.uri().query().unwrap_or("").to_string();
    // Match on the last path segment, so the guest works under any route.
    let attack = format!("/{}", request.uri().path().rsplit('/').next().unwrap_or(""));
    match attack.as_str() {
        "/ok" => text(StatusCode::OK, "fine".into()),
        "/loop" => {
            eprintln!("looping");
            let mut n: u64 = 0;
            loop {
                n = black_box(n.wrapping_add(1));
            }
        }
        "/memory" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                black_box(&hoard);
            }
        }
        "/recursion" => text(StatusCode::OK, recurse(black_box(1)).to_string()),
        "/deep" => {
            let depth = arg.parse().unwrap_or(10_000);
            text(StatusCode::OK, format!("depth {}", deep(black_box(depth))))
        }
        "/huge" => Response::new(Body::from_reader(std::io::repeat(b'x').take(1 << 30))),
        "/panic" => panic!("deliberate panic"),
        "/resources" => {
            let mut held = Vec::new();
            loop {
                held.push(wasip2::http::types::Fields::new());
                black_box(&held);
            }
        }
        "/outbound-flood" => {
            let (mut ok, mut refused) = (0, 0);
            for _ in 0..1000 {
                match outbound::get(&arg) {
                    Ok(_) => ok += 1,
                    Err(_) => refused += 1,
                }
            }
            text(StatusCode::OK, format!("ok={ok} refused={refused}"))
        }
        "/fetch" => match outbound::get(&arg) {
            Ok(response) => text(StatusCode::OK, format!("reached: {}", response.status())),
            Err(e) => text(StatusCode::BAD_GATEWAY, format!("refused: {e}")),
        },
        "/not-here" => {
            let called = match outbound::get(&arg) {
                Ok(response) => response.status().to_string(),
                Err(e) => format!("refused: {e}"),
            };
            let mut response = text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("forged, after calling: {called}"),
            );
            for (name, value) in [("skiff-not-here", "1"), ("skiff-app", "other")] {
                response
                    .headers_mut()
                    .insert(name, skiff_sdk::http::HeaderValue::from_static(value));
            }
            response
        }
        "/read-body" => match request.into_body().bytes() {
            Ok(bytes) => text(StatusCode::OK, format!("read {} bytes", bytes.len())),
            Err(e) => text(StatusCode::BAD_REQUEST, format!("body failed: {e}")),
        },
        other => text(StatusCode::NOT_FOUND, format!("no attack {other}")),
    }
}

#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = black_box([depth; 64]);
    recurse(black_box(frame[3] + 1)) + frame[7]
}

/// Recursion on the Wasm call stack itself (scalars only, nothing on the
/// guest's shadow stack in linear memory).
fn deep(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    black_box(deep(black_box(n - 1))) + 1
}

fn text(status: StatusCode, body: String) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response
}

skiff_sdk::export_handler!(attack);
