//! Human-friendly quantities in the manifest: byte sizes (`"64MiB"`) and
//! durations (`"30s"`), parsed by `bytesize` and `humantime`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// A number of bytes, written `"64MiB"`, `"1GiB"`, `"512KiB"` or `"1000"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "SizeInput", into = "u64")]
pub struct ByteSize(u64);

/// A span of time, written `"30s"`, `"500ms"` or `"2m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DurationSpec(Duration);

/// Byte sizes may be given as a string with a unit or as a bare integer.
#[derive(Deserialize)]
#[serde(untagged)]
enum SizeInput {
    Bytes(u64),
    Text(String),
}

impl ByteSize {
    /// `n` kibibytes.
    pub const fn kib(n: u64) -> ByteSize {
        ByteSize(n * 1024)
    }

    /// `n` mebibytes.
    pub const fn mib(n: u64) -> ByteSize {
        ByteSize(n * 1024 * 1024)
    }

    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl TryFrom<SizeInput> for ByteSize {
    type Error = String;

    fn try_from(input: SizeInput) -> Result<Self, String> {
        match input {
            SizeInput::Bytes(n) => Ok(ByteSize(n)),
            SizeInput::Text(text) => text
                .trim()
                .parse::<bytesize::ByteSize>()
                .map(|size| ByteSize(size.as_u64()))
                .map_err(|_| {
                    format!("invalid size {text:?}: write a number with a unit, such as \"64MiB\"")
                }),
        }
    }
}

impl From<ByteSize> for u64 {
    fn from(size: ByteSize) -> u64 {
        size.0
    }
}

impl From<DurationSpec> for String {
    fn from(duration: DurationSpec) -> String {
        duration.to_string()
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", bytesize::ByteSize(self.0).display().iec())
    }
}

impl DurationSpec {
    /// `n` seconds.
    pub const fn secs(n: u64) -> DurationSpec {
        DurationSpec(Duration::from_secs(n))
    }

    /// The span as a [`Duration`].
    pub const fn as_duration(self) -> Duration {
        self.0
    }
}

impl TryFrom<String> for DurationSpec {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        humantime::parse_duration(text.trim())
            .map(DurationSpec)
            .map_err(|_| {
                format!("invalid duration {text:?}: write a number with a unit, such as \"30s\" or \"500ms\"")
            })
    }
}

impl fmt::Display for DurationSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}
