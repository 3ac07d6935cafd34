//! The component's configuration: the environment variables its manifest
//! grants (`env = { KEY = "value" }`), and nothing else.

/// The value of `key`, if the manifest grants it.
pub fn get(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

/// The value of `key`, or `default` when not granted.
pub fn get_or(key: &str, default: &str) -> String {
    get(key).unwrap_or_else(|| default.to_string())
}
