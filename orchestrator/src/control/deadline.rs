//! Deadlines for request bodies on the API: a client that announces a
//! body and then sends it slowly, or not at all, is cut off, so it cannot
//! hold a connection (and a file descriptor) for ever. JSON bodies get a
//! fixed time; blob uploads get that plus their size at a minimum rate, so
//! a real upload over a slow link is not cut.

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

/// Default time a JSON request body may take to arrive.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The slowest blob upload taken, bytes per second (64 KiB/s, about half
/// a megabit): a 512 MiB blob may take 2 h 16 min.
pub const MIN_UPLOAD_RATE: u64 = 64 << 10;

/// The deadline of an upload of `length` bytes: `base`, plus the time the
/// bytes take at [`MIN_UPLOAD_RATE`].
pub(super) fn for_upload(base: Duration, length: u64) -> Duration {
    base + Duration::from_secs(length.div_ceil(MIN_UPLOAD_RATE))
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub(super) enum BodyError {
    /// The whole body did not arrive in time.
    #[error("the request body did not arrive within {0:?}")]
    TimedOut(Duration),
    /// The connection failed.
    #[error(transparent)]
    Read(#[from] hyper::Error),
}

/// A request body that fails with [`BodyError::TimedOut`] once its
/// deadline passes before its end.
pub(super) struct TimedBody {
    inner: Incoming,
    sleep: Pin<Box<Sleep>>,
    after: Duration,
}

impl TimedBody {
    /// `inner`, which must end within `after` from now.
    pub(super) fn new(inner: Incoming, after: Duration) -> TimedBody {
        TimedBody {
            inner,
            sleep: Box::pin(tokio::time::sleep(after)),
            after,
        }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(BodyError::Read))),
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::TimedOut(this.after)))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_get_time_in_proportion_to_their_size() {
        let base = Duration::from_secs(30);
        assert_eq!(for_upload(base, 0), base);
        assert_eq!(for_upload(base, 1), base + Duration::from_secs(1));
        // A 512 MiB upload at 64 KiB/s takes 8192 s.
        assert_eq!(
            for_upload(base, 512 << 20),
            base + Duration::from_secs(8192)
        );
    }
}
