//! Reports what the sandbox lets it see and do, one probe per last path
//! segment:
//! `/env` lists every environment variable, `/read?PATH` reads a file,
//! `/write?PATH` tries to create one, `/list?PATH` lists a directory,
//! `/sleep?MS` sleeps (logging `sleeping MS` on stderr before and `awake`
//! after), `/wait?PATH` waits until the file PATH exists (logging
//! `sleeping until PATH` before and `awake` after), `/status?CODE`
//! answers with that status, `/log?TEXT`
//! writes TEXT to stdout and `err TEXT` to stderr, `/flood?TAG&N` writes N
//! lines `TAG I`, odd I to stdout and even I to stderr, and `/remember?TEXT`
//! reports what its static memory held (a data-segment string and a 1 MiB
//! zeroed array: `data=... bss=clean|dirty`), then writes TEXT over both,
//! so a later instance shows whether it inherited anything.
//! `/headers` lists the request's headers (`name: value` lines, sorted),
//! `/call?URL` answers with what a GET of URL answered (status and body),
//! `/forge?URL` does the same with a forged `skiff-caller` header, and
//! `/loop?URL` calls `URL/loop?URL`, so a probe reached by URL calls
//! itself until something stops it. `/version` answers `version V` with
//! the environment's `VERSION` and `STATUS` (default 200), so one probe
//! deployed with two environments is two versions, a good and a bad.

use skiff_sdk::http::StatusCode;
use skiff_sdk::{Request, Response};

fn probe(request: Request) -> Response {
    let arg = request.uri().query().unwrap_or("").to_string();
    let arg = percent_decode(&arg);
    // Match on the last path segment so the probe works under any route.
    let probe = request.uri().path().rsplit('/').next().unwrap_or("");
    let result: Result<String, String> = match probe {
        "env" => Ok(std::env::vars()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect()),
        "read" => std::fs::read_to_string(&arg).map_err(|e| e.to_string()),
        "write" => std::fs::write(&arg, b"x")
            .map(|()| "written".to_string())
            .map_err(|e| e.to_string()),
        "list" => std::fs::read_dir(&arg)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| format!("{}\n", e.file_name().to_string_lossy()))
                    .collect()
            })
            .map_err(|e| e.to_string()),
        "wait" => {
            eprintln!("sleeping until {arg}");
            while std::fs::metadata(&arg).is_err() {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            eprintln!("awake");
            Ok("released".to_string())
        }
        "sleep" => {
            let ms: u64 = arg.parse().unwrap_or(100);
            eprintln!("sleeping {ms}");
            std::thread::sleep(std::time::Duration::from_millis(ms));
            eprintln!("awake");
            Ok(format!("slept {ms}ms"))
        }
        "version" => {
            let version = std::env::var("VERSION").unwrap_or_default();
            let code = std::env::var("STATUS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(200);
            let mut response = Response::new(format!("version {version}").into());
            *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
            return response;
        }
        "status" => {
            let code = arg.parse().unwrap_or(200);
            let mut response = Response::new(format!("status {code}").into());
            *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
            return response;
        }
        "log" => {
            println!("{arg}");
            eprintln!("err {arg}");
            Ok("logged".to_string())
        }
        "flood" => {
            let (tag, count) = arg.split_once('&').unwrap_or((arg.as_str(), "1500"));
            let count: u32 = count.parse().unwrap_or(1500);
            for i in 1..=count {
                if i % 2 == 1 {
                    println!("{tag} {i}");
                } else {
                    eprintln!("{tag} {i}");
                }
            }
            Ok(format!("wrote {count} lines"))
        }
        "remember" => Ok(remember(arg.as_bytes())),
        "headers" => {
            let mut lines: Vec<String> = request
                .headers()
                .iter()
                .map(|(k, v)| format!("{k}: {}\n", v.to_str().unwrap_or("?")))
                .collect();
            lines.sort();
            Ok(lines.concat())
        }
        "call" => return call(&arg, None),
        "forge" => return call(&arg, Some("spiffe://skiff/app/admin/component/root")),
        "loop" => return call(&format!("{arg}/loop?{arg}"), None),
        other => Err(format!("unknown probe {other}")),
    };
    match result {
        Ok(text) => Response::new(text.into()),
        Err(e) => {
            let mut response = Response::new(format!("denied: {e}").into());
            *response.status_mut() = StatusCode::FORBIDDEN;
            response
        }
    }
}

/// A GET of `url`, answered with its status and body; `caller` is sent as
/// a `skiff-caller` header, as a guest trying to pass for another would.
fn call(url: &str, caller: Option<&str>) -> Response {
    let mut request = skiff_sdk::http::Request::get(url);
    if let Some(caller) = caller {
        request = request.header("skiff-caller", caller);
    }
    let request = match request.body(skiff_sdk::Body::empty()) {
        Ok(request) => request,
        Err(e) => return failed(StatusCode::BAD_REQUEST, format!("bad url {url}: {e}")),
    };
    match skiff_sdk::outbound::send(request) {
        Ok(upstream) => {
            let status = upstream.status();
            let body = upstream.into_body().text().unwrap_or_default();
            let mut response = Response::new(body.into());
            *response.status_mut() = status;
            response
        }
        Err(e) => failed(StatusCode::BAD_GATEWAY, format!("call failed: {e}")),
    }
}

fn failed(status: StatusCode, text: String) -> Response {
    let mut response = Response::new(format!("{text}\n").into());
    *response.status_mut() = status;
    response
}

/// Initialized data: lives in the component's memory image.
static mut NOTE: [u8; 32] = *b"pristine data segment contents..";
/// Zero-initialized, 1 MiB: beyond the image, spanning many pages.
static mut SCRATCH: [u8; 1 << 20] = [0; 1 << 20];

fn remember(text: &[u8]) -> String {
    // SAFETY: one request at a time runs in an instance (single thread).
    let (note, scratch) = unsafe {
        (
            &mut *std::ptr::addr_of_mut!(NOTE),
            &mut *std::ptr::addr_of_mut!(SCRATCH),
        )
    };
    let before = format!(
        "data={} bss={}",
        String::from_utf8_lossy(note),
        if scratch.iter().all(|&b| b == 0) {
            "clean"
        } else {
            "dirty"
        }
    );
    for (i, byte) in note.iter_mut().enumerate() {
        *byte = text.get(i).copied().unwrap_or(b'.');
    }
    for page in scratch.chunks_mut(4096) {
        page[..text.len().min(4096)].copy_from_slice(&text[..text.len().min(4096)]);
        page[4095] = 0xff;
    }
    before
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

skiff_sdk::export_handler!(probe);
