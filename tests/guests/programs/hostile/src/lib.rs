//! A guest that misbehaves on request, one attack per path, for the
//! sandbox tests: `/loop` (logging `looping` first), `/memory`,
//! `/recursion`, `/huge`, `/panic`,
//! `/resources`, `/deep?N` (recursion on the Wasm stack),
//! `/outbound-flood?URL`, `/fetch?URL`, `/read-body`, `/not-here?URL`
//! (calls URL, then answers 503 with the platform's own `skiff-*` headers
//! set, as if it were the mesh saying it holds no replica), `/drip?MS[&N]`
//! (streams `tick I` lines, one every MS ms, N of them or without end), `/drip-panic`
//! (streams three ticks, then panics), `/socket?KIND[&ADDR]` (tries the
//! socket or name lookup KIND through `wasi:sockets` and answers what it
//! got, see [`socket`]), `/hold?MIB&MS` (fills MIB MiB of memory and
//! holds it MS ms before answering), and `/ok` for a well-behaved answer.

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
        "/drip" => {
            let (every_ms, ticks) = arg.split_once('&').unwrap_or((arg.as_str(), ""));
            Response::new(Body::from_reader(Drip {
                every_ms: every_ms.parse().unwrap_or(200),
                sent: 0,
                end_after: ticks.parse().ok(),
                panic_after: None,
            }))
        }
        "/drip-panic" => Response::new(Body::from_reader(Drip {
            every_ms: 50,
            sent: 0,
            end_after: None,
            panic_after: Some(3),
        })),
        "/socket" => text(StatusCode::OK, socket(&arg)),
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
        "/hold" => {
            let (mib, ms) = arg.split_once('&').unwrap_or((arg.as_str(), "1000"));
            let mib: usize = mib.parse().unwrap_or(64);
            let held: Vec<Vec<u8>> = (0..mib).map(|_| vec![1u8; 1 << 20]).collect();
            std::thread::sleep(std::time::Duration::from_millis(ms.parse().unwrap_or(1000)));
            text(
                StatusCode::OK,
                format!("held {} MiB", black_box(&held).len()),
            )
        }
        "/read-body" => match request.into_body().bytes() {
            Ok(bytes) => text(StatusCode::OK, format!("read {} bytes", bytes.len())),
            Err(e) => text(StatusCode::BAD_REQUEST, format!("body failed: {e}")),
        },
        other => text(StatusCode::NOT_FOUND, format!("no attack {other}")),
    }
}

/// A body that yields `tick N\n` every `every_ms` ms; it ends after
/// `end_after` ticks, or panics after `panic_after`, if set.
struct Drip {
    every_ms: u64,
    sent: u32,
    end_after: Option<u32>,
    panic_after: Option<u32>,
}

impl Read for Drip {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.end_after == Some(self.sent) {
            return Ok(0);
        }
        if self.panic_after == Some(self.sent) {
            panic!("deliberate panic mid-response");
        }
        std::thread::sleep(std::time::Duration::from_millis(self.every_ms));
        self.sent += 1;
        let tick = format!("tick {}\n", self.sent);
        buf[..tick.len()].copy_from_slice(tick.as_bytes());
        Ok(tick.len())
    }
}

/// Tries one use of `wasi:sockets`, named by the query: `tcp`, `udp`,
/// `lookup` (of `localhost`), `tcp-flood` (1000 TCP sockets), or through
/// the standard library `std-connect&ADDR`, `std-talk&ADDR` (connects,
/// sends `ping`, answers `got REPLY`), `std-listen`, `std-udp`.
/// Answers what the guest got back: `ok` or `error CODE` (its WIT name),
/// or for the standard library the `io::ErrorKind`.
fn socket(query: &str) -> String {
    use wasip2::sockets::network::ErrorCode;
    use wasip2::sockets::network::IpAddressFamily::Ipv4;
    use wasip2::sockets::{instance_network, ip_name_lookup, tcp_create_socket, udp_create_socket};
    let (kind, addr) = query.split_once('&').unwrap_or((query, ""));
    let kind_of = |e: std::io::Error| format!("{:?}", e.kind());
    fn outcome<T>(result: Result<T, ErrorCode>) -> String {
        match result {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("error {}", e.name()),
        }
    }
    match kind {
        "tcp" => outcome(tcp_create_socket::create_tcp_socket(Ipv4)),
        "udp" => outcome(udp_create_socket::create_udp_socket(Ipv4)),
        "lookup" => {
            let network = instance_network::instance_network();
            let found =
                ip_name_lookup::resolve_addresses(&network, "localhost").and_then(|stream| {
                    let mut found = Vec::new();
                    loop {
                        match stream.resolve_next_address() {
                            Ok(Some(address)) => found.push(address),
                            Ok(None) => return Ok(found),
                            Err(ErrorCode::WouldBlock) => {
                                stream.subscribe().block();
                            }
                            Err(e) => return Err(e),
                        }
                    }
                });
            outcome(found)
        }
        "tcp-flood" => {
            let refused = (0..1000)
                .filter(|_| tcp_create_socket::create_tcp_socket(Ipv4).is_err())
                .count();
            format!("refused {refused} of 1000")
        }
        "std-connect" => std::net::TcpStream::connect(addr)
            .map(|_| "connected".to_string())
            .unwrap_or_else(kind_of),
        "std-talk" => {
            use std::io::{Read, Write};
            let talk = || -> std::io::Result<String> {
                let mut stream = std::net::TcpStream::connect(addr)?;
                stream.write_all(b"ping\n")?;
                let mut reply = [0u8; 64];
                let n = stream.read(&mut reply)?;
                Ok(format!(
                    "got {}",
                    String::from_utf8_lossy(&reply[..n]).trim()
                ))
            };
            talk().unwrap_or_else(kind_of)
        }
        "std-listen" => std::net::TcpListener::bind("127.0.0.1:0")
            .map(|_| "listening".to_string())
            .unwrap_or_else(kind_of),
        "std-udp" => std::net::UdpSocket::bind("127.0.0.1:0")
            .map(|_| "bound".to_string())
            .unwrap_or_else(kind_of),
        other => format!("no socket kind {other:?}"),
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
