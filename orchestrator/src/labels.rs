//! Node labels: the `key=value` pairs placement filters on, what a valid
//! one is, and how many a node may carry. A node declares its labels when
//! it joins; after that only an admin changes them (`skiff label`).

use std::collections::BTreeMap;

/// Labels one node may carry.
pub const MAX_LABELS: usize = 32;
/// Longest label key or value, bytes.
pub const MAX_LABEL_LEN: usize = 63;

/// Why a label was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// Not `key=value`.
    #[error("invalid label {0:?}: write key=value")]
    Syntax(String),
    /// A key that is empty, too long or has other characters.
    #[error("invalid label key {0:?}: use 1 to 63 letters, digits, '.', '_', '-' or '/'")]
    Key(String),
    /// A value that is too long or has other characters.
    #[error(
        "invalid value {value:?} of label {key:?}: use up to 63 letters, digits, '.', '_' or '-'"
    )]
    Value {
        /// The label's key.
        key: String,
        /// The value refused.
        value: String,
    },
    /// More labels than [`MAX_LABELS`].
    #[error("too many labels ({0}): a node carries at most 32")]
    TooMany(usize),
}

/// Parses `key=value`, checking both.
///
/// # Errors
///
/// A [`LabelError`] naming what is wrong.
pub fn parse(text: &str) -> Result<(String, String), LabelError> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| LabelError::Syntax(text.to_string()))?;
    check_key(key)?;
    check_value(key, value)?;
    Ok((key.to_string(), value.to_string()))
}

/// Checks every key and value of `labels`, and their number.
///
/// # Errors
///
/// A [`LabelError`] naming the first label that is wrong.
pub fn check(labels: &BTreeMap<String, String>) -> Result<(), LabelError> {
    if labels.len() > MAX_LABELS {
        return Err(LabelError::TooMany(labels.len()));
    }
    for (key, value) in labels {
        check_key(key)?;
        check_value(key, value)?;
    }
    Ok(())
}

/// Checks one key.
///
/// # Errors
///
/// [`LabelError::Key`].
pub fn check_key(key: &str) -> Result<(), LabelError> {
    let valid = !key.is_empty()
        && key.len() <= MAX_LABEL_LEN
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
    if valid {
        Ok(())
    } else {
        Err(LabelError::Key(key.to_string()))
    }
}

fn check_value(key: &str, value: &str) -> Result<(), LabelError> {
    let valid = value.len() <= MAX_LABEL_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(LabelError::Value {
            key: key.to_string(),
            value: value.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_plain_words() {
        assert_eq!(parse("zone=eu-1").unwrap(), ("zone".into(), "eu-1".into()));
        assert_eq!(
            parse("example.com/disk=").unwrap(),
            ("example.com/disk".into(), String::new())
        );
        assert_eq!(parse("zone"), Err(LabelError::Syntax("zone".into())));
        assert_eq!(parse("=eu"), Err(LabelError::Key(String::new())));
        assert!(matches!(
            parse("zone=e\u{1b}[31mu"),
            Err(LabelError::Value { .. })
        ));
        assert!(matches!(parse("zo ne=eu"), Err(LabelError::Key(_))));
        assert!(matches!(
            parse(&format!("zone={}", "a".repeat(64))),
            Err(LabelError::Value { .. })
        ));
        let many: BTreeMap<String, String> =
            (0..33).map(|i| (format!("k{i}"), String::new())).collect();
        assert_eq!(check(&many), Err(LabelError::TooMany(33)));
        assert_eq!(
            parse("zone").unwrap_err().to_string(),
            "invalid label \"zone\": write key=value"
        );
    }
}
