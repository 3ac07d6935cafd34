//! Bodies: [`IncomingBody`] reads a request (or outbound response) body as a
//! stream; [`Body`] is what a handler sends back, whole or streamed.

use std::io::{self, Read, Write};
use wasip2::http::types as wasi;
use wasip2::io::streams::{InputStream, OutputStream};

/// A body arriving from the host, read as it streams in.
pub struct IncomingBody {
    // Field order matters: the stream is a child of the body resource and
    // must be dropped first.
    stream: Option<InputStream>,
    _body: Option<wasi::IncomingBody>,
}

impl IncomingBody {
    pub(crate) fn new(body: Option<wasi::IncomingBody>) -> IncomingBody {
        let stream = body.as_ref().and_then(|b| b.stream().ok());
        IncomingBody {
            stream,
            _body: body,
        }
    }

    /// Reads the whole body into memory.
    ///
    /// # Errors
    ///
    /// When the host reports a stream error (e.g. the client went away).
    pub fn bytes(mut self) -> io::Result<Vec<u8>> {
        let mut all = Vec::new();
        self.read_to_end(&mut all)?;
        Ok(all)
    }

    /// Reads the whole body as UTF-8 text, replacing invalid sequences.
    ///
    /// # Errors
    ///
    /// As [`IncomingBody::bytes`].
    pub fn text(self) -> io::Result<String> {
        Ok(String::from_utf8_lossy(&self.bytes()?).into_owned())
    }
}

impl Read for IncomingBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.stream {
            Some(stream) => stream.read(buf),
            None => Ok(0),
        }
    }
}

/// A response (or outbound request) body.
pub struct Body(Inner);

enum Inner {
    Bytes(Vec<u8>),
    Reader(Box<dyn Read>),
}

impl Body {
    /// No body.
    pub fn empty() -> Body {
        Body(Inner::Bytes(Vec::new()))
    }

    /// A body streamed from `reader` chunk by chunk, never held whole.
    pub fn from_reader(reader: impl Read + 'static) -> Body {
        Body(Inner::Reader(Box::new(reader)))
    }

    /// The length when known up front.
    pub(crate) fn known_len(&self) -> Option<usize> {
        match &self.0 {
            Inner::Bytes(bytes) => Some(bytes.len()),
            Inner::Reader(_) => None,
        }
    }

    /// Writes the body into `out`.
    pub(crate) fn write_to(self, out: &mut OutputStream) -> io::Result<()> {
        match self.0 {
            Inner::Bytes(bytes) => {
                // The host accepts at most 4 KiB per blocking write.
                for chunk in bytes.chunks(4096) {
                    out.blocking_write_and_flush(chunk).map_err(|e| match e {
                        wasip2::io::streams::StreamError::Closed => {
                            io::Error::from(io::ErrorKind::BrokenPipe)
                        }
                        other => io::Error::other(format!("{other:?}")),
                    })?;
                }
                Ok(())
            }
            Inner::Reader(mut reader) => {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = reader.read(&mut buf)?;
                    if n == 0 {
                        return out.flush();
                    }
                    out.write_all(&buf[..n])?;
                }
            }
        }
    }
}

impl Default for Body {
    fn default() -> Body {
        Body::empty()
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Body {
        Body(Inner::Bytes(bytes))
    }
}

impl From<&[u8]> for Body {
    fn from(bytes: &[u8]) -> Body {
        Body(Inner::Bytes(bytes.to_vec()))
    }
}

impl From<String> for Body {
    fn from(text: String) -> Body {
        Body(Inner::Bytes(text.into_bytes()))
    }
}

impl From<&str> for Body {
    fn from(text: &str) -> Body {
        Body(Inner::Bytes(text.as_bytes().to_vec()))
    }
}

impl From<()> for Body {
    fn from((): ()) -> Body {
        Body::empty()
    }
}

impl From<IncomingBody> for Body {
    fn from(body: IncomingBody) -> Body {
        Body::from_reader(body)
    }
}
