//! The shop's front page: fetches the item list from the catalog service
//! by its mesh name (`CATALOG_URL`), with no address, port or certificate
//! in sight, and renders it.

use skiff_sdk::http::StatusCode;
use skiff_sdk::{Request, Response, config, outbound};

fn frontend(_request: Request) -> Response {
    let catalog = config::get_or("CATALOG_URL", "http://catalog.shop.skiff.internal/items");
    let answer = outbound::get(&catalog)
        .map_err(|e| e.to_string())
        .and_then(|response| {
            let status = response.status();
            let text = response.into_body().text().map_err(|e| e.to_string())?;
            Ok((status, text))
        });
    match answer {
        Ok((status, items)) if status.is_success() => {
            Response::new(format!("Welcome to the shop! Today:\n{items}").into())
        }
        Ok((status, text)) => failed(format!("the catalog answered {status}: {text}")),
        Err(e) => failed(format!("the catalog could not be reached: {e}\n")),
    }
}

fn failed(text: String) -> Response {
    let mut response = Response::new(text.into());
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}

skiff_sdk::export_handler!(frontend);
