//! Serves the files of a mounted directory. The manifest mounts `public/`
//! read-only at `/www`; the component can see nothing else of the host.
//!
//! Run it: `skiff run examples/static-files --build`, then
//! `curl localhost:3000/` or `curl localhost:3000/hello.txt`.

use skiff_sdk::http::{StatusCode, header};
use skiff_sdk::{Body, Request, Response, config};
use std::fs::File;

fn serve_file(request: Request) -> Response {
    let root = config::get_or("ROOT", "/www");
    let path = request.uri().path();
    let relative = path.trim_start_matches('/');
    let relative = if relative.is_empty() {
        "index.html"
    } else {
        relative
    };
    let full = format!("{root}/{relative}");
    match File::open(&full) {
        Ok(file) if file.metadata().map(|m| m.is_file()).unwrap_or(false) => {
            let mut response = Response::new(Body::from_reader(file));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                content_type(relative).parse().expect("static value"),
            );
            response
        }
        Ok(_) | Err(_) => {
            let mut response = Response::new(format!("not found: {path}\n").into());
            *response.status_mut() = StatusCode::NOT_FOUND;
            response
        }
    }
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "txt" => "text/plain; charset=utf-8",
        "css" => "text/css",
        "js" => "text/javascript",
        "json" => "application/json",
        "png" => "image/png",
        "svg" => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

skiff_sdk::export_handler!(serve_file);
