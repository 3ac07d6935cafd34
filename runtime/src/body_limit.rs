//! Size limits on the bodies that cross the sandbox boundary: a request
//! body larger than `max_request_body` fails the guest's read and the
//! request gets 413; a response body larger than `max_response_body` is cut
//! off so a guest cannot stream without end.

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use wasmtime_wasi_http::Error as HttpError;

/// A body that passes exactly `limit` bytes and then fails, recording in
/// `exceeded` that there was more.
pub struct LimitedBody<B> {
    inner: B,
    remaining: u64,
    /// The limit was crossed inside a chunk whose part that fit was passed
    /// on: the next poll fails.
    overflowed: bool,
    limit: u64,
    exceeded: Arc<AtomicBool>,
    error: fn(u64) -> HttpError,
}

impl<B> LimitedBody<B> {
    /// A request body: overflowing it is the client's fault.
    pub fn request(inner: B, limit: u64, exceeded: Arc<AtomicBool>) -> LimitedBody<B> {
        LimitedBody {
            inner,
            remaining: limit,
            overflowed: false,
            limit,
            exceeded,
            error: |limit| HttpError::HttpRequestBodySize(Some(limit)),
        }
    }

    /// A response body: overflowing it is the guest's fault.
    pub fn response(inner: B, limit: u64, exceeded: Arc<AtomicBool>) -> LimitedBody<B> {
        LimitedBody {
            inner,
            remaining: limit,
            overflowed: false,
            limit,
            exceeded,
            error: |limit| HttpError::HttpResponseBodySize(Some(limit)),
        }
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<HttpError>,
{
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = self.get_mut();
        if this.overflowed {
            return Poll::Ready(Some(Err((this.error)(this.limit))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                if len > this.remaining {
                    // The reader gets every byte up to the limit, however
                    // the guest chunked its writes, then the error.
                    let fits = this.remaining as usize;
                    this.remaining = 0;
                    this.exceeded.store(true, Ordering::Release);
                    if fits == 0 {
                        return Poll::Ready(Some(Err((this.error)(this.limit))));
                    }
                    this.overflowed = true;
                    let data = frame.into_data().unwrap_or_default();
                    return Poll::Ready(Some(Ok(Frame::data(data.slice(..fits)))));
                }
                this.remaining -= len;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Request bodies are read and discarded after a 413 up to this much, so
/// the client gets to read the response instead of a connection reset.
pub const DRAIN_BYTES: u64 = 16 << 20;
/// ... or for this long, whichever comes first.
pub const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads and discards `body`, within [`DRAIN_BYTES`] and [`DRAIN_TIME`].
pub async fn drain<B>(mut body: B)
where
    B: Body + Unpin,
{
    use http_body_util::BodyExt;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut seen = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.remaining() as u64);
            if seen > DRAIN_BYTES {
                break;
            }
        }
    })
    .await;
}

/// A request body that is drained (see [`drain`]) when dropped after it
/// overflowed, so the 413 reaches the client.
pub struct RequestBody<B: Body + Unpin + Send + 'static>(Option<LimitedBody<B>>);

impl<B: Body + Unpin + Send + 'static> RequestBody<B> {
    /// Limits `body` to `limit` bytes, flagging `exceeded` on overflow.
    pub fn new(body: B, limit: u64, exceeded: Arc<AtomicBool>) -> RequestBody<B> {
        RequestBody(Some(LimitedBody::request(body, limit, exceeded)))
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<HttpError>,
{
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        match &mut self.get_mut().0 {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.0
            .as_ref()
            .map_or_else(SizeHint::default, |b| b.size_hint())
    }
}

impl<B: Body + Unpin + Send + 'static> Drop for RequestBody<B> {
    fn drop(&mut self) {
        if let Some(body) = self.0.take()
            && body.exceeded.load(Ordering::Acquire)
            && !body.inner.is_end_stream()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(drain(body.inner));
        }
    }
}

/// The `content-length` of `headers`, if present and valid.
pub fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    #[tokio::test]
    async fn passes_bodies_within_the_limit() {
        let flag = Arc::new(AtomicBool::new(false));
        let body = Full::new(Bytes::from_static(b"hello"));
        let limited = LimitedBody::request(body, 5, flag.clone());
        let collected = limited.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"hello");
        assert!(!flag.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn fails_and_flags_past_the_limit() {
        let flag = Arc::new(AtomicBool::new(false));
        let chunks = (0..10).map(|_| Ok::<_, HttpError>(Frame::data(Bytes::from_static(b"xxxx"))));
        let body = StreamBody::new(futures::stream::iter(chunks));
        let mut limited = LimitedBody::response(body, 10, flag.clone());
        let mut passed = Vec::new();
        let err = loop {
            match limited.frame().await {
                Some(Ok(frame)) => passed.extend_from_slice(&frame.into_data().unwrap()),
                Some(Err(e)) => break e,
                None => panic!("the body ended cleanly past its limit"),
            }
        };
        assert_eq!(
            passed, b"xxxxxxxxxx",
            "exactly the limit, the last chunk split"
        );
        assert!(
            matches!(err, HttpError::HttpResponseBodySize(Some(10))),
            "{err:?}"
        );
        assert!(flag.load(Ordering::Acquire));
    }
}
