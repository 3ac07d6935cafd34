//! Write Skiff components in Rust.
//!
//! A component is a function from an HTTP request to a response, exported
//! with one line:
//!
//! ```ignore
//! use skiff_sdk::{Request, Response};
//!
//! fn hello(_req: Request) -> Response {
//!     Response::new("hello from skiff\n".into())
//! }
//!
//! skiff_sdk::export_handler!(hello);
//! ```
//!
//! Build with `cargo build --target wasm32-wasip2 --release` and run the
//! `.wasm` with `skiff run`. Request and response bodies stream
//! ([`IncomingBody`] is an `io::Read`, [`Body::from_reader`] streams out),
//! [`config`] reads the component's granted settings, and [`outbound`]
//! calls other HTTP services the manifest allows.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod body;
pub mod config;
mod convert;
pub mod outbound;
mod serve;

pub use body::{Body, IncomingBody};
pub use http;
pub use serve::IntoResponse;

/// The request a handler receives.
pub type Request = http::Request<IncomingBody>;
/// The response a handler returns.
pub type Response = http::Response<Body>;

#[doc(hidden)]
pub mod __private {
    pub use crate::serve::serve;
    pub use wasip2;
}

/// Exports `handler`, a `fn(Request) -> impl IntoResponse`, as the
/// component's `wasi:http/incoming-handler`.
#[macro_export]
macro_rules! export_handler {
    ($handler:path) => {
        struct __SkiffHandler;

        impl $crate::__private::wasip2::exports::http::incoming_handler::Guest for __SkiffHandler {
            fn handle(
                request: $crate::__private::wasip2::http::types::IncomingRequest,
                response_out: $crate::__private::wasip2::http::types::ResponseOutparam,
            ) {
                $crate::__private::serve(request, response_out, $handler)
            }
        }

        $crate::__private::wasip2::http::proxy::export!(__SkiffHandler);
    };
}
