//! An HTTP app that imports `skiff-examples:greeter/greet` from another
//! component. Its skiff.toml declares the dependency; Skiff composes the two
//! at run and pack time.
//!
//! Run it: `skiff run examples/greeting --build`, then
//! `curl 'localhost:3000/?name=Ada'`.

wit_bindgen::generate!({ path: "../greeter/wit", world: "greeting-app" });

use skiff_examples::greeter::greet::greet;
use skiff_sdk::{Request, Response};

fn greeting(request: Request) -> Response {
    let name = request
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("name=")))
        .unwrap_or("world");
    Response::new(greet(name).into())
}

skiff_sdk::export_handler!(greeting);
