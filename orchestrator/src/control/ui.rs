//! The web dashboard at `/ui`: a page (HTML, CSS and JavaScript embedded
//! in the binary, no build step) that reads the same `/v1` API as the CLI.
//! Logging in with the admin token, or with a one-time link from `skiff
//! dashboard`, starts a session kept in a `Secure; HttpOnly;
//! SameSite=Strict` cookie: the page's scripts never see the token, the
//! cookie is sent only to this control plane's host (and removed from
//! requests before a guest sees them), and it allows only the reads the
//! pages make ([`SESSION_READS`]).

use super::api::{Body, Request, full};
use bytes::Bytes;
use http::{Method, StatusCode, header};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The session cookie's name.
pub(crate) const COOKIE: &str = "skiff_session";

/// How long a session lasts by default.
pub(crate) const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// How long a login link from `skiff dashboard` may wait to be used.
pub(crate) const LINK_LIFETIME: Duration = Duration::from_secs(300);

/// Sessions (and unused links) kept at once; past this the oldest go.
const MAX_SESSIONS: usize = 1_000;

/// A login form's largest body.
const MAX_FORM: usize = 4 << 10;

const INDEX: &str = include_str!("ui/index.html");
const LOGIN: &str = include_str!("ui/login.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");

/// The dashboard's sessions and one-time login links, by the SHA-256 of
/// their secret (a copy of this state reveals none).
#[derive(Debug)]
pub(crate) struct Sessions {
    lifetime: Duration,
    sessions: Mutex<HashMap<[u8; 32], Instant>>,
    links: Mutex<HashMap<[u8; 32], Instant>>,
    /// Logins refused since the last line saying so, and when that was.
    refused: Mutex<(u64, Option<Instant>)>,
}

impl Sessions {
    /// Sessions lasting `lifetime`.
    pub(crate) fn new(lifetime: Duration) -> Sessions {
        Sessions {
            lifetime,
            sessions: Mutex::default(),
            links: Mutex::default(),
            refused: Mutex::default(),
        }
    }

    /// Counts a refused login, and says so in the log at most once a
    /// minute: a flood of wrong tokens is one line a minute.
    fn note_refusal(&self) {
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        refused.0 += 1;
        if refused
            .1
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(60))
        {
            tracing::warn!(
                reason = "ui_login_refused",
                refused = refused.0,
                "dashboard logins refused (wrong admin token) since the last such line"
            );
            *refused = (0, Some(Instant::now()));
        }
    }

    /// Starts a session; returns the cookie's value.
    fn start(&self) -> String {
        insert(&self.sessions, self.lifetime)
    }

    /// Whether `secret` is a session that has not expired.
    pub(crate) fn valid(&self, secret: &str) -> bool {
        let now = Instant::now();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, expires| *expires > now);
        sessions.contains_key(&hash(secret))
    }

    fn end(&self, secret: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&hash(secret));
    }

    /// A one-time login code, valid for [`LINK_LIFETIME`].
    pub(crate) fn new_link(&self) -> String {
        insert(&self.links, LINK_LIFETIME)
    }

    /// Uses up the login code `secret`: whether it was valid.
    fn take_link(&self, secret: &str) -> bool {
        let now = Instant::now();
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links.retain(|_, expires| *expires > now);
        links.remove(&hash(secret)).is_some()
    }
}

/// A new random secret in `table`, expiring after `lifetime`; the oldest
/// entry goes when the table is full.
fn insert(table: &Mutex<HashMap<[u8; 32], Instant>>, lifetime: Duration) -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source");
    let secret = hex::encode(bytes);
    let now = Instant::now();
    let mut table = table.lock().unwrap_or_else(|e| e.into_inner());
    table.retain(|_, expires| *expires > now);
    if table.len() >= MAX_SESSIONS
        && let Some(oldest) = table.iter().min_by_key(|(_, e)| **e).map(|(k, _)| *k)
    {
        table.remove(&oldest);
    }
    table.insert(hash(&secret), now + lifetime);
    secret
}

fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The session cookies of `headers` (a browser may send several of one
/// name, one planted by another page of the host among them).
fn session_cookies(headers: &http::HeaderMap) -> Vec<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
        .collect()
}

/// What the session cookies of `headers` say.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SessionCookie {
    /// None was sent.
    Absent,
    /// One is a live session (this one).
    Live(String),
    /// Some were sent; none is live.
    Dead,
}

/// The live session among `headers`' session cookies, if any.
pub(crate) fn session(sessions: &Sessions, headers: &http::HeaderMap) -> SessionCookie {
    let cookies = session_cookies(headers);
    if cookies.is_empty() {
        return SessionCookie::Absent;
    }
    cookies
        .into_iter()
        .find(|secret| sessions.valid(secret))
        .map_or(SessionCookie::Dead, |secret| {
            SessionCookie::Live(secret.to_string())
        })
}

/// The `GET`s of `/v1` a dashboard session may make (`:name` stands for
/// one segment): what the pages read, and nothing else.
const SESSION_READS: [&str; 6] = [
    "/v1/top",
    "/v1/apps",
    "/v1/nodes",
    "/v1/replicas",
    "/v1/events",
    "/v1/apps/:name/logs",
];

/// Whether a dashboard session may make `method` `path`.
pub(crate) fn session_may(method: &Method, path: &str) -> bool {
    *method == Method::GET
        && SESSION_READS
            .iter()
            .any(|read| super::path_fits(read, path))
}

/// Whether `request` carries a live session.
fn logged_in(sessions: &Sessions, headers: &http::HeaderMap) -> bool {
    matches!(session(sessions, headers), SessionCookie::Live(_))
}

/// Answers a request under `/ui` (`rest` is the path after it);
/// `admin_token` is what a login form must carry.
pub(super) async fn handle(
    sessions: &Sessions,
    admin_token: &str,
    rest: &[&str],
    query: &str,
    request: Request,
) -> hyper::Response<Body> {
    let method = request.method().clone();
    match (&method, rest) {
        (&Method::GET, [] | [""]) => {
            if logged_in(sessions, request.headers()) {
                page(StatusCode::OK, "text/html; charset=utf-8", INDEX)
            } else {
                redirect("/ui/login")
            }
        }
        (&Method::GET, ["app.js"]) => {
            page(StatusCode::OK, "text/javascript; charset=utf-8", SCRIPT)
        }
        (&Method::GET, ["style.css"]) => page(StatusCode::OK, "text/css; charset=utf-8", STYLE),
        (&Method::GET, ["login"]) => {
            let once = form_urlencoded::parse(query.as_bytes())
                .find(|(key, _)| key == "once")
                .map(|(_, value)| value.into_owned());
            match once {
                Some(code) if sessions.take_link(&code) => logged_in_now(sessions),
                Some(_) => login_page(
                    StatusCode::UNAUTHORIZED,
                    "This login link was used already or has expired: run `skiff dashboard` for a new one.",
                ),
                None => login_page(StatusCode::OK, ""),
            }
        }
        (&Method::POST, ["login"]) => {
            let form = match super::api::body(request, MAX_FORM).await {
                Ok(form) => form,
                Err(_) => {
                    return login_page(
                        StatusCode::BAD_REQUEST,
                        "The login form could not be read.",
                    );
                }
            };
            let token = form_urlencoded::parse(&form)
                .find(|(key, _)| key == "token")
                .map(|(_, value)| value.trim().to_string())
                .unwrap_or_default();
            // Compare digests, so the time taken says nothing of the token.
            if !token.is_empty() && hash(&token) == hash(admin_token) {
                logged_in_now(sessions)
            } else {
                sessions.note_refusal();
                login_page(
                    StatusCode::UNAUTHORIZED,
                    "That is not this cluster's admin token: it is the \"token\" of this cluster in $SKIFF_HOME/cluster.json, which skiff server and skiff up write; or log in with the link skiff dashboard prints.",
                )
            }
        }
        (&Method::POST, ["logout"]) => {
            // Only a session logs itself out: a form posted from another
            // site carries no cookie (SameSite=Strict) and changes nothing.
            let SessionCookie::Live(secret) = session(sessions, request.headers()) else {
                return redirect("/ui/login");
            };
            sessions.end(&secret);
            let mut response = redirect("/ui/login");
            response.headers_mut().insert(
                header::SET_COOKIE,
                http::HeaderValue::from_static(
                    "skiff_session=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Strict",
                ),
            );
            response
        }
        _ => page(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "no such page; the dashboard is at /ui\n",
        ),
    }
}

/// A new session's cookie, and on to the dashboard.
fn logged_in_now(sessions: &Sessions) -> hyper::Response<Body> {
    let secret = sessions.start();
    let mut response = redirect("/ui");
    let cookie = format!(
        "{COOKIE}={secret}; Path=/; Max-Age={}; Secure; HttpOnly; SameSite=Strict",
        sessions.lifetime.as_secs()
    );
    response.headers_mut().insert(
        header::SET_COOKIE,
        http::HeaderValue::from_str(&cookie).expect("a hex cookie is a valid header"),
    );
    response
}

/// The login page saying `message` (escaped), if any.
fn login_page(status: StatusCode, message: &str) -> hyper::Response<Body> {
    let text = LOGIN.replace("{{message}}", &escape(message));
    page(status, "text/html; charset=utf-8", &text)
}

/// `text` with HTML's special characters escaped.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

fn redirect(to: &'static str) -> hyper::Response<Body> {
    let mut response = page(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "");
    response
        .headers_mut()
        .insert(header::LOCATION, http::HeaderValue::from_static(to));
    response
}

/// A page, with the headers every dashboard answer carries: scripts and
/// styles from this origin only, never framed, never cached.
fn page(status: StatusCode, content_type: &'static str, text: &str) -> hyper::Response<Body> {
    let mut response = hyper::Response::new(full(Bytes::from(text.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, content_type),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, http::HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_and_links_expire_and_links_work_once() {
        let sessions = Sessions::new(Duration::from_millis(50));
        let secret = sessions.start();
        assert!(sessions.valid(&secret));
        assert!(!sessions.valid("0123"));
        std::thread::sleep(Duration::from_millis(80));
        assert!(!sessions.valid(&secret), "expired");
        let link = sessions.new_link();
        assert!(sessions.take_link(&link));
        assert!(!sessions.take_link(&link), "once only");
        let secret = sessions.start();
        sessions.end(&secret);
        assert!(!sessions.valid(&secret));
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            header::COOKIE,
            http::HeaderValue::from_static("a=1; skiff_session=abc; b=2"),
        );
        assert_eq!(session_cookies(&headers), vec!["abc"]);
        // A planted cookie before the live one does not hide it.
        let sessions = Sessions::new(Duration::from_secs(60));
        let live = sessions.start();
        let mut both = http::HeaderMap::new();
        both.insert(
            header::COOKIE,
            http::HeaderValue::from_str(&format!("skiff_session=00; skiff_session={live}"))
                .unwrap(),
        );
        assert_eq!(session(&sessions, &both), SessionCookie::Live(live));
        assert_eq!(session(&sessions, &headers), SessionCookie::Dead);
        assert_eq!(escape("<script>&\"'"), "&lt;script&gt;&amp;&quot;&#39;");
    }

    #[test]
    fn a_session_reads_only_what_the_pages_read() {
        assert!(session_may(&Method::GET, "/v1/apps"));
        assert!(session_may(&Method::GET, "/v1/apps/shop/logs"));
        assert!(!session_may(&Method::HEAD, "/v1/apps"));
        assert!(!session_may(&Method::GET, "/v1/blobs/sha256:abc"));
        assert!(!session_may(&Method::DELETE, "/v1/apps/shop"));
        assert!(!session_may(&Method::GET, "/v1/apps/shop/logs/x"));
    }
}
