//! Routes (`/x`, `/x/...`, `/...`, with `:name` segments matching any one
//! segment, as Spin writes them) and the router that picks the component
//! for a request path: an exact route wins, then the longest prefix; among
//! routes of as many segments, the one with more literal segments.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The header prefix under which a guest finds the segments its route's
/// `:name` segments matched: `skiff-path-param-id: 42` for `/orders/:id`
/// and `/orders/42`. Set by the platform; a client's own is removed.
pub const PATH_PARAM_HEADER_PREFIX: &str = "skiff-path-param-";

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

    /// The path part, without the trailing `/...` of a prefix.
    fn path(&self) -> &str {
        match self {
            Route::Exact(path) | Route::Prefix(path) => path,
        }
    }

    /// Whether the route has `:name` segments.
    pub fn has_params(&self) -> bool {
        self.path().contains(':')
    }

    /// Whether `path` (without query) falls under this route.
    pub fn matches(&self, path: &str) -> bool {
        self.match_segments(path).is_some()
    }

    /// The `:name` segments of this route and what they matched in
    /// `path`; empty when the route has none or does not match.
    pub fn params<'p>(&self, path: &'p str) -> Vec<(&str, &'p str)> {
        let path = trim_slash(path);
        match self.match_segments(path) {
            Some(()) => self
                .path()
                .split('/')
                .zip(path.split('/'))
                .filter_map(|(pattern, actual)| Some((pattern.strip_prefix(':')?, actual)))
                .collect(),
            None => Vec::new(),
        }
    }

    /// `Some` when `path` falls under this route.
    fn match_segments(&self, path: &str) -> Option<()> {
        let route = self.path();
        if !route.contains(':') {
            let matched = match self {
                Route::Exact(exact) => path == exact,
                Route::Prefix(prefix) => path
                    .strip_prefix(prefix.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
            };
            return matched.then_some(());
        }
        // Segment by segment; `:name` takes any one non-empty segment.
        let mut actual = path.split('/');
        for pattern in route.split('/') {
            let segment = actual.next()?;
            let fits = if pattern.starts_with(':') {
                !segment.is_empty()
            } else {
                segment == pattern
            };
            if !fits {
                return None;
            }
        }
        match self {
            Route::Exact(_) => actual.next().is_none().then_some(()),
            Route::Prefix(_) => Some(()),
        }
    }

    /// Whether this route matches exactly the paths `other` matches: the
    /// same but for the names of their `:name` segments.
    pub fn same_paths(&self, other: &Route) -> bool {
        let shape = |route: &Route| {
            let segments: Vec<&str> = route
                .path()
                .split('/')
                .map(|s| if s.starts_with(':') { ":" } else { s })
                .collect();
            (matches!(route, Route::Exact(_)), segments.join("/"))
        };
        shape(self) == shape(other)
    }

    /// How specifically this route matches a path it matches: exact before
    /// prefix, then more segments, then more literal (not `:name`) ones.
    /// Of two routes matching one path, the higher serves it.
    pub fn specificity(&self) -> (bool, usize, usize) {
        let segments: Vec<&str> = self.path().split('/').filter(|s| !s.is_empty()).collect();
        let literal = segments.iter().filter(|s| !s.starts_with(':')).count();
        (matches!(self, Route::Exact(_)), segments.len(), literal)
    }
}

/// `path` without trailing slashes (but `/` itself).
fn trim_slash(path: &str) -> &str {
    if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    }
}

/// Checks the `:name` segments of `path`: a name of lower-case letters,
/// digits and `_`, each used once.
fn check_params(text: &str, path: &str) -> Result<(), String> {
    let mut seen = Vec::new();
    for segment in path.split('/') {
        if segment.contains(':') && !segment.starts_with(':') {
            return Err(format!(
                "invalid route {text:?}: ':' may only start a segment, as in \"/orders/:id\""
            ));
        }
        let Some(name) = segment.strip_prefix(':') else {
            continue;
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(format!(
                "invalid route {text:?}: the parameter {segment:?} needs a name of lower-case letters, digits and '_', as in \"/orders/:id\""
            ));
        }
        if seen.contains(&name) {
            return Err(format!(
                "invalid route {text:?}: the parameter \":{name}\" appears twice"
            ));
        }
        seen.push(name);
    }
    Ok(())
}

impl TryFrom<String> for Route {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        if !text.starts_with('/') {
            return Err(format!(
                "invalid route {text:?}: a route starts with '/', such as \"/api\" or \"/api/...\""
            ));
        }
        if text.contains('*') {
            return Err(format!(
                "invalid route {text:?}: '*' is not a wildcard here; end a route with /... for everything below it, as in \"/api/...\""
            ));
        }
        if let Some(prefix) = text.strip_suffix("/...") {
            if prefix.contains("...") {
                return Err(format!(
                    "invalid route {text:?}: '...' may only end a route"
                ));
            }
            check_params(&text, prefix)?;
            return Ok(Route::Prefix(prefix.to_string()));
        }
        if text.contains("...") {
            return Err(format!(
                "invalid route {text:?}: '...' may only end a route, as in \"/api/...\""
            ));
        }
        let exact = trim_slash(&text).to_string();
        check_params(&text, &exact)?;
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
        routes.sort_by_key(|(route, _)| std::cmp::Reverse(route.specificity()));
        Router { routes }
    }

    /// The target serving `path`, if any route matches.
    pub fn find(&self, path: &str) -> Option<usize> {
        let path = trim_slash(path);
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
    fn parameters_match_one_segment_and_literals_win() {
        let router = Router::new([
            (route("/orders/:id"), 0),
            (route("/orders/new"), 1),
            (route("/orders/:id/items/..."), 2),
            (route("/orders/..."), 3),
            (route("/users/:user/orders/:order"), 4),
        ]);
        assert_eq!(router.find("/orders/42"), Some(0));
        assert_eq!(router.find("/orders/42/"), Some(0));
        assert_eq!(router.find("/orders/new"), Some(1));
        assert_eq!(router.find("/orders/42/items"), Some(2));
        assert_eq!(router.find("/orders/42/items/7"), Some(2));
        assert_eq!(router.find("/orders/42/other"), Some(3));
        assert_eq!(router.find("/orders"), Some(3));
        assert_eq!(router.find("/users/ann/orders/9"), Some(4));
        assert_eq!(router.find("/users/ann/orders"), None);
        // Never matched literally.
        assert_eq!(router.find("/users/:user/orders/:order"), Some(4));
        assert!(!route("/orders/:id").matches("/orders//"));
        assert_eq!(
            route("/users/:user/orders/:order").params("/users/ann/orders/9/"),
            vec![("user", "ann"), ("order", "9")]
        );
        assert_eq!(
            route("/orders/:id/...").params("/orders/5/x/y"),
            vec![("id", "5")]
        );
        assert!(route("/orders/:id").params("/other").is_empty());
        assert!(route("/orders/:id").same_paths(&route("/orders/:order")));
        assert!(!route("/orders/:id").same_paths(&route("/orders/:id/...")));
    }

    #[test]
    fn bad_parameters_are_refused_with_the_reason() {
        for (bad, why) in [
            ("/orders/:", "needs a name"),
            ("/orders/:ID", "needs a name"),
            ("/orders/x:id", "may only start a segment"),
            ("/a/:id/b/:id", "appears twice"),
            ("/a/:id-x/...", "needs a name"),
        ] {
            let err = Route::try_from(bad.to_string()).unwrap_err();
            assert!(
                err.contains(why) && err.contains(&format!("{bad:?}")),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn bad_routes_are_rejected_with_the_route_named() {
        let err = Route::try_from("api".to_string()).unwrap_err();
        assert!(err.contains("\"api\""), "{err}");
        assert!(Route::try_from("/a/.../b".to_string()).is_err());
        assert!(
            Route::try_from("/a/*".to_string())
                .unwrap_err()
                .contains("/...")
        );
        assert!(Route::try_from("/a*/...".to_string()).is_err());
        assert_eq!(route("/"), Route::Exact("/".into()));
        assert_eq!(route("/..."), Route::everything());
        assert_eq!(route("/a/...").to_string(), "/a/...");
    }
}
