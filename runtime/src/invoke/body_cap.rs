//! The request body cap: a body declared larger than the component's
//! `max_request_body` is refused with 413 before any instance starts. One
//! that streams past the cap undeclared is cut off while the instance
//! reads it (see the instance stage).

use super::{Answer, Around, Call, FailureReason, GuestBody, Stage, answered, plain};
use crate::body_limit::{declared_length, drain};
use std::convert::Infallible;
use std::task::{Context, Poll};

/// Refuses requests declaring a body over the cap.
pub(super) struct BodyCapped;

impl<'a, B: GuestBody, S> tower::Service<Call<B>> for Around<'a, BodyCapped, S>
where
    S: tower::Service<Call<B>, Response = Answer, Error = Infallible, Future = Stage<'a>>,
{
    type Response = Answer;
    type Error = Infallible;
    type Future = Stage<'a>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call<B>) -> Stage<'a> {
        let limit = self.component.limits.max_request_body.bytes();
        if declared_length(call.request.headers()).is_some_and(|len| len > limit) {
            call.outcome.fail(FailureReason::RequestTooLarge);
            tokio::spawn(drain(call.request.into_body()));
            return answered(request_too_large(self.component.name.as_str(), limit));
        }
        self.inner.call(call)
    }
}

/// The 413 for a request body over the component's limit.
pub(super) fn request_too_large(name: &str, limit: u64) -> Answer {
    tracing::warn!(
        component = name,
        reason = FailureReason::RequestTooLarge.as_str(),
        "request refused"
    );
    let mut response = plain(
        http::StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "request body exceeds the {limit} bytes component \"{name}\" accepts (limits.max_request_body)\n"
        ),
    );
    // The rest of the body is drained, not read: do not reuse the connection.
    response.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    response
}
