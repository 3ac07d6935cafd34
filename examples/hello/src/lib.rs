//! The smallest Skiff app: answers every request with a greeting.
//!
//! Run it: `skiff run examples/hello --build`, then `curl localhost:3000/`.

use skiff_sdk::{Request, Response, config};

fn hello(_request: Request) -> Response {
    let greeting = config::get_or("GREETING", "Hello");
    Response::new(format!("{greeting} from Skiff!\n").into())
}

skiff_sdk::export_handler!(hello);
