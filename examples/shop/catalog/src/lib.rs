//! The shop's catalog service: lists the items for sale, and says which
//! workload asked (the `skiff-caller` identity the platform vouches for).

use skiff_sdk::{Request, Response};

fn catalog(request: Request) -> Response {
    let caller = request
        .headers()
        .get("skiff-caller")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("nobody")
        .to_string();
    let items = ["teapot  12.00", "kettle  30.00", "mug      4.50"];
    let mut text: String = items.iter().map(|item| format!("  {item}\n")).collect();
    text.push_str(&format!("(served by the catalog to {caller})\n"));
    Response::new(text.into())
}

skiff_sdk::export_handler!(catalog);
