//! W3C Trace Context (`traceparent`): the trace a request belongs to and
//! the span of each hop, so one request can be followed across ingress,
//! mesh hops and outbound calls.

use std::fmt;

/// The header carrying the trace context.
pub const TRACEPARENT: &str = "traceparent";

/// The header carrying vendors' trace state, passed on with the trace.
pub const TRACESTATE: &str = "tracestate";

/// The longest `tracestate` passed on, bytes (W3C Trace Context asks
/// platforms to pass at least 512): longer, it is dropped rather than let
/// a caller make every hop carry a large header.
const MAX_TRACESTATE: usize = 512;

/// The `tracestate` to pass on with `span`'s calls: the request's, when
/// `span` continues the caller's trace (a new trace drops the old state,
/// as the W3C spec asks) and it is not over [`MAX_TRACESTATE`].
pub fn tracestate_to_pass(span: &Span, headers: &http::HeaderMap) -> Option<http::HeaderValue> {
    let value = headers.get(TRACESTATE)?;
    (span.parent_id.is_some() && value.len() <= MAX_TRACESTATE).then(|| value.clone())
}

/// One hop's span: the trace it belongs to, its own id, and the span that
/// called it (none for the hop that started the trace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent_id: Option<[u8; 8]>,
    flags: u8,
}

impl Span {
    /// The span of a hop whose request carried `headers`: a child of the
    /// caller's span when they hold a valid `traceparent`, else the root of
    /// a new trace.
    pub fn for_request(headers: &http::HeaderMap) -> Span {
        let parent = headers
            .get(TRACEPARENT)
            .and_then(|value| value.to_str().ok())
            .and_then(parse_traceparent);
        let mut random = [0u8; 24];
        // Ids need only be unique, not secret: on the rare failure of the
        // system's generator a fixed id still yields a valid trace.
        if getrandom::fill(&mut random).is_err() {
            random = [1; 24];
        }
        let mut span_id: [u8; 8] = random[16..].try_into().expect("8 bytes");
        if span_id == [0; 8] {
            span_id[7] = 1;
        }
        match parent {
            Some((trace_id, parent_id, flags)) => Span {
                trace_id,
                span_id,
                parent_id: Some(parent_id),
                flags,
            },
            None => {
                let mut trace_id: [u8; 16] = random[..16].try_into().expect("16 bytes");
                if trace_id == [0; 16] {
                    trace_id[15] = 1;
                }
                Span {
                    trace_id,
                    span_id,
                    parent_id: None,
                    // Sampled: a trace Skiff starts is one it logs.
                    flags: 1,
                }
            }
        }
    }

    /// The `traceparent` this hop's own calls carry: same trace, this span
    /// as their parent.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            self.flags
        )
    }

    /// The raw ids: the trace's, this span's and the caller's, and
    /// whether the trace is sampled.
    pub fn ids(&self) -> ([u8; 16], [u8; 8], Option<[u8; 8]>, bool) {
        (
            self.trace_id,
            self.span_id,
            self.parent_id,
            self.flags & 1 == 1,
        )
    }

    /// The trace id, 32 hex digits.
    pub fn trace_id(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// This span's id, 16 hex digits.
    pub fn span_id(&self) -> String {
        hex::encode(self.span_id)
    }

    /// The calling span's id, 16 hex digits, or `-` for a trace's first hop.
    pub fn parent_id(&self) -> String {
        self.parent_id.map_or_else(|| "-".to_string(), hex::encode)
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.traceparent())
    }
}

/// `version-traceid-parentid-flags`, per the W3C recommendation: lower-case
/// hex, ids not all zero, version `ff` invalid; a later version may append
/// fields after a `-`.
fn parse_traceparent(text: &str) -> Option<([u8; 16], [u8; 8], u8)> {
    let text = text.trim();
    let mut parts = text.splitn(5, '-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    let rest = parts.next();
    let lower_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !lower_hex(version, 2) || version == "ff" || (version == "00" && rest.is_some()) {
        return None;
    }
    if !lower_hex(trace, 32) || !lower_hex(parent, 16) || !lower_hex(flags, 2) {
        return None;
    }
    let mut trace_id = [0u8; 16];
    let mut parent_id = [0u8; 8];
    hex::decode_to_slice(trace, &mut trace_id).ok()?;
    hex::decode_to_slice(parent, &mut parent_id).ok()?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((trace_id, parent_id, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(traceparent: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(TRACEPARENT, traceparent.parse().unwrap());
        headers
    }

    #[test]
    fn a_valid_traceparent_is_continued() {
        let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let span = Span::for_request(&headers(given));
        assert_eq!(span.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span.parent_id(), "00f067aa0ba902b7");
        assert_ne!(span.span_id(), "00f067aa0ba902b7");
        let next = span.traceparent();
        assert!(
            next.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{next}"
        );
        assert!(next.ends_with("-01"), "{next}");
        let child = Span::for_request(&headers(&next));
        assert_eq!(child.parent_id(), span.span_id());
        assert_eq!(child.trace_id(), span.trace_id());
    }

    #[test]
    fn anything_malformed_starts_a_new_trace() {
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            let span = Span::for_request(&headers(bad));
            assert_eq!(span.parent_id(), "-", "{bad:?}");
            assert_ne!(span.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        }
        let later_version = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more";
        assert_eq!(
            Span::for_request(&headers(later_version)).parent_id(),
            "00f067aa0ba902b7"
        );
        let fresh = Span::for_request(&http::HeaderMap::new());
        assert_eq!(fresh.traceparent().len(), 55);
    }
}
