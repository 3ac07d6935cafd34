//! An HTTP component that also imports an interface no Skiff host
//! provides, `skiff-test:missing/oracle`, so loading it must fail and name
//! that import.

wit_bindgen::generate!({
    inline: "
        package skiff-test:missing;
        interface oracle { ask: func() -> string; }
        world needs-oracle { import oracle; }
    ",
});

use skiff_sdk::{Request, Response};

fn answer(_request: Request) -> Response {
    Response::new(skiff_test::missing::oracle::ask().into())
}

skiff_sdk::export_handler!(answer);
