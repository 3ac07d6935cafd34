//! Host names an app is served at (`[app] domains`), and the names a TLS
//! certificate covers: fully qualified DNS names in lower case, a
//! certificate's possibly with a leading `*.` (one label, RFC 6125).

use serde::{Deserialize, Serialize};
use std::fmt;

/// A host name an app is served at: two or more DNS labels (letters,
/// digits and `-`, not at either end of a label), at most 253 characters,
/// in lower case. Never an IP address and never a wildcard.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Domain(String);

impl Domain {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `pattern` (a certificate's name, `*.example.com` or an
    /// exact name) covers this domain: a wildcard stands for exactly one
    /// label.
    pub fn covered_by(&self, pattern: &str) -> bool {
        let pattern = pattern.to_ascii_lowercase();
        match pattern.strip_prefix("*.") {
            Some(parent) => self
                .0
                .split_once('.')
                .is_some_and(|(_, rest)| rest == parent),
            None => self.0 == pattern,
        }
    }
}

impl TryFrom<String> for Domain {
    type Error = String;

    fn try_from(name: String) -> Result<Domain, String> {
        check_name(&name, false)?;
        Ok(Domain(name))
    }
}

impl std::str::FromStr for Domain {
    type Err = String;

    fn from_str(name: &str) -> Result<Domain, String> {
        Domain::try_from(name.to_string())
    }
}

impl From<Domain> for String {
    fn from(domain: Domain) -> String {
        domain.0
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a certificate's name: a [`Domain`], or `*.` and a domain.
///
/// # Errors
///
/// What is wrong with it.
pub fn check_certificate_name(name: &str) -> Result<(), String> {
    check_name(name, true)
}

/// Checks `name` as a domain (`wildcard`: a leading `*.` is allowed).
fn check_name(name: &str, wildcard: bool) -> Result<(), String> {
    let bare = match name.strip_prefix("*.") {
        Some(rest) if wildcard => rest,
        Some(_) => {
            return Err(format!(
                "{name:?} is a wildcard; an app's domains are exact names such as \"shop.example.com\""
            ));
        }
        None => name,
    };
    let problem = if name.len() > 253 {
        Some("it is longer than 253 characters".to_string())
    } else if bare.parse::<std::net::IpAddr>().is_ok() {
        Some("it is an IP address, not a host name".to_string())
    } else if bare.contains(':') {
        Some("a domain has no port: give the name alone".to_string())
    } else if bare.bytes().any(|b| b.is_ascii_uppercase()) {
        Some("host names are written in lower case here".to_string())
    } else if let Some(bad) = bare
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.')))
    {
        Some(format!(
            "{bad:?} is not allowed: letters, digits, '-' and '.' only (write an internationalized name in its xn-- form)"
        ))
    } else if !bare.contains('.') {
        Some("it needs at least two labels, such as \"shop.example.com\"".to_string())
    } else {
        bare.split('.').find_map(|label| {
            if label.is_empty() || label.len() > 63 {
                Some(format!("label {label:?} must be 1 to 63 characters"))
            } else if !label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                Some(format!(
                    "label {label:?} may hold only letters, digits and '-' (write an internationalized name in its xn-- form)"
                ))
            } else if label.starts_with('-') || label.ends_with('-') {
                Some(format!("label {label:?} must not begin or end with '-'"))
            } else {
                None
            }
        })
    };
    match problem {
        Some(problem) => Err(format!("{name:?} is not a valid domain: {problem}")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_lower_case_names_of_two_labels_or_more() {
        for good in ["shop.example.com", "a-b.c0.io", "x.y"] {
            assert!(good.parse::<Domain>().is_ok(), "{good}");
        }
        for (bad, why) in [
            ("localhost", "two labels"),
            ("Shop.example.com", "lower case"),
            ("10.0.0.1", "IP address"),
            ("-a.example.com", "begin or end"),
            ("a..b", "1 to 63"),
            ("a_b.example.com", "letters, digits"),
            ("bad domain", "' ' is not allowed"),
            ("a.example.com:443", "no port"),
            ("*.example.com", "wildcard"),
        ] {
            let error = bad.parse::<Domain>().unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
        assert!(check_certificate_name("*.example.com").is_ok());
        assert!(check_certificate_name("*.*.example.com").is_err());
    }

    #[test]
    fn a_wildcard_covers_exactly_one_label() {
        let shop: Domain = "shop.example.com".parse().unwrap();
        assert!(shop.covered_by("shop.example.com"));
        assert!(shop.covered_by("*.example.com"));
        assert!(shop.covered_by("SHOP.example.com"));
        assert!(!shop.covered_by("*.shop.example.com"));
        assert!(!shop.covered_by("*.com"));
        assert!(!shop.covered_by("example.com"));
    }
}
