//! Routes (`/x`, `/x/...`, `/...`) and the router that picks the component
//! for a request path: an exact route wins, then the longest prefix.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A route a component serves, as written in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Route {
    /// `/x`: only this exact path.
    Exact(String),
    /// `/x/...`: `/x` and everything below it; `/...` is every path.
    Prefix(String),
}

impl Route {
    /// The route that matches every path, `/...`.
    pub fn everything() -> Route {
        Route::Prefix(String::new())
    }

    /// Whether `path` (without query) falls under this route.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Route::Exact(exact) => path == exact,
            Route::Prefix(prefix) => path
                .strip_prefix(prefix.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
        }
    }
}

impl TryFrom<String> for Route {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        if !text.starts_with('/') {
            return Err(format!(
                "invalid route {text:?}: a route starts with '/', such as \"/api\" or \"/api/...\""
            ));
        }
        if let Some(prefix) = text.strip_suffix("/...") {
            if prefix.contains("...") {
                return Err(format!(
                    "invalid route {text:?}: '...' may only end a route"
                ));
            }
            return Ok(Route::Prefix(prefix.to_string()));
        }
        if text.contains("...") {
            return Err(format!(
                "invalid route {text:?}: '...' may only end a route, as in \"/api/...\""
            ));
        }
        let exact = if text.len() > 1 {
            text.trim_end_matches('/').to_string()
        } else {
            text
        };
        Ok(Route::Exact(exact))
    }
}

impl From<Route> for String {
    fn from(route: Route) -> String {
        route.to_string()
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Route::Exact(exact) => f.write_str(exact),
            Route::Prefix(prefix) => write!(f, "{prefix}/..."),
        }
    }
}

/// Maps a request path to the index of the component that serves it.
#[derive(Debug, Clone, Default)]
pub struct Router {
    /// Routes sorted most specific first: exact before prefix, longer
    /// prefixes before shorter ones.
    routes: Vec<(Route, usize)>,
}

impl Router {
    /// Builds a router over `(route, target)` pairs.
    pub fn new(routes: impl IntoIterator<Item = (Route, usize)>) -> Router {
        let mut routes: Vec<(Route, usize)> = routes.into_iter().collect();
        routes.sort_by_key(|(route, _)| match route {
            Route::Exact(path) => (0, usize::MAX - path.len()),
            Route::Prefix(prefix) => (1, usize::MAX - prefix.len()),
        });
        Router { routes }
    }

    /// The target serving `path`, if any route matches.
    pub fn find(&self, path: &str) -> Option<usize> {
        let path = if path.len() > 1 {
            path.trim_end_matches('/')
        } else {
            path
        };
        self.routes
            .iter()
            .find(|(route, _)| route.matches(path))
            .map(|(_, target)| *target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(s: &str) -> Route {
        Route::try_from(s.to_string()).unwrap()
    }

    #[test]
    fn exact_beats_prefix_and_longest_prefix_wins() {
        let router = Router::new([
            (route("/..."), 0),
            (route("/api/..."), 1),
            (route("/api/v2/..."), 2),
            (route("/api/health"), 3),
        ]);
        assert_eq!(router.find("/"), Some(0));
        assert_eq!(router.find("/other"), Some(0));
        assert_eq!(router.find("/api"), Some(1));
        assert_eq!(router.find("/api/users"), Some(1));
        assert_eq!(router.find("/api/v2"), Some(2));
        assert_eq!(router.find("/api/v2/x/y"), Some(2));
        assert_eq!(router.find("/api/health"), Some(3));
        assert_eq!(router.find("/api/health/"), Some(3));
        assert_eq!(router.find("/apix"), Some(0));
    }

    #[test]
    fn unmatched_paths_find_nothing() {
        let router = Router::new([(route("/hello"), 0), (route("/static/..."), 1)]);
        assert_eq!(router.find("/"), None);
        assert_eq!(router.find("/hello/x"), None);
        assert_eq!(router.find("/staticx"), None);
        assert_eq!(router.find("/static/a.txt"), Some(1));
    }

    #[test]
    fn bad_routes_are_rejected_with_the_route_named() {
        let err = Route::try_from("api".to_string()).unwrap_err();
        assert!(err.contains("\"api\""), "{err}");
        assert!(Route::try_from("/a/.../b".to_string()).is_err());
        assert_eq!(route("/"), Route::Exact("/".into()));
        assert_eq!(route("/..."), Route::everything());
        assert_eq!(route("/a/...").to_string(), "/a/...");
    }
}
