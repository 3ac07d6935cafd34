//! End-to-end tests of the web dashboard in a real browser: headless
//! Chromium (Debian's `chromium` and `chromium-driver`, which the test
//! command installs), driven over WebDriver, logs in to a live cluster's
//! `/ui`, checks that the nodes, apps and replicas it shows are those
//! `skiff nodes`/`skiff ps -o json` print, that a guest's log line holding
//! markup is shown as text, and that without a valid session nothing is
//! shown; screenshots go under the test's output
//! (`target/tmp/dashboard-screenshots`).

mod support;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::cluster::{Cluster, admin_token, deploy_probe};
use support::{get, temp_dir, wait_until};

/// A chromedriver on a free loopback port; killed when dropped.
struct ChromeDriver {
    child: Child,
    url: String,
    _profile: tempfile::TempDir,
}

impl ChromeDriver {
    fn start() -> ChromeDriver {
        let binary = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|path| std::path::Path::new(path).exists())
            .expect(
                "chromedriver is not installed: scripts/test.sh installs Debian's chromium-driver",
            );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        wait_until(Duration::from_secs(30), "chromedriver to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        ChromeDriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _profile: temp_dir(),
        }
    }

    /// A new headless browser with an empty profile. The control plane's
    /// certificate is signed by the cluster's own CA, which this browser
    /// does not know: it is told to accept it.
    async fn browser(&self) -> Client {
        let profile = temp_dir();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("acceptInsecureCerts".into(), Value::Bool(true));
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        // The profile outlives the browser's session; the OS reclaims it.
        std::mem::forget(profile);
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("a browser session")
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where screenshots go.
fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.expect("a screenshot");
    std::fs::write(screenshots().join(name), png).unwrap();
}

/// The text of the first cells of `table`'s body rows, once it has
/// `rows` of them (the page refreshes every 2 s).
async fn first_column(browser: &Client, table: &str, rows: usize) -> Vec<String> {
    let script = format!(
        "return Array.from(document.querySelectorAll('#{table} tbody tr td:first-child')).map(td => td.textContent)"
    );
    for _ in 0..100 {
        if let Ok(value) = browser.execute(&script, vec![]).await
            && let Some(cells) = value.as_array()
            && cells.len() >= rows
            && cells.iter().all(|c| c != "none")
        {
            return cells
                .iter()
                .filter_map(|c| c.as_str().map(str::to_string))
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "table #{table} never showed {rows} rows: {}",
        browser.source().await.unwrap_or_default()
    );
}

/// The text of every cell of `table`.
async fn cells(browser: &Client, table: &str) -> Vec<String> {
    let script = format!(
        "return Array.from(document.querySelectorAll('#{table} td')).map(td => td.textContent)"
    );
    let value = browser.execute(&script, vec![]).await.unwrap();
    value
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c.as_str().map(str::to_string))
        .collect()
}

/// The path the browser shows once it shows `path` (navigation after a
/// click or a redirect takes a moment), or what it shows after 10 s.
async fn path_after(browser: &Client, path: &str) -> String {
    let mut shown = String::new();
    for _ in 0..50 {
        shown = browser.current_url().await.unwrap().path().to_string();
        if shown == path {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shown
}

/// The text of the element `id` once it has some (a page being loaded
/// after a click may still show the last one), or `""` after 10 s.
async fn message(browser: &Client, id: &str) -> String {
    for _ in 0..50 {
        if let Ok(element) = browser.find(Locator::Id(id)).await
            && let Ok(text) = element.text().await
            && !text.is_empty()
        {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    String::new()
}

/// Logs in on the form at `/ui/login` with `token`.
async fn log_in(browser: &Client, api: &str, token: &str) {
    browser.goto(&format!("{api}/ui/login")).await.unwrap();
    let field = browser.find(Locator::Id("token")).await.unwrap();
    field.send_keys(token).await.unwrap();
    browser
        .find(Locator::Id("login"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

#[test]
fn the_dashboard_shows_the_cluster_as_the_cli_does_and_only_to_a_session() {
    let mut cluster = Cluster::start(0, &["--ui-session-lifetime", "8s"]);
    cluster.add_node(1);
    cluster.add_node(2);
    deploy_probe(&cluster, "shop", 2);
    // A guest log line holding markup, and some traffic.
    let ingress = cluster.nodes[0].process.url.clone();
    assert_eq!(
        get(&format!(
            "{ingress}/log?%3Cscript%3Ealert(1)%3C%2Fscript%3E"
        ))
        .0,
        200
    );
    for _ in 0..20 {
        get(&format!("{ingress}/status?200"));
    }
    wait_until(
        Duration::from_secs(20),
        "the log line to reach the control plane",
        || {
            cluster
                .cli(&["logs", "shop"])
                .contains("<script>alert(1)</script>")
                .then_some(())
        },
    );
    let token = admin_token(&cluster);
    let api = cluster.api.clone();
    let nodes: BTreeSet<String> = cluster
        .json(&["nodes"])
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect();
    let replicas: BTreeSet<String> = cluster
        .json(&["ps", "shop"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(replicas.len(), 2);

    let driver = ChromeDriver::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let browser = driver.browser().await;

        // No session: the dashboard sends the browser to its login page,
        // and the API refuses the page's reads.
        browser.goto(&format!("{api}/ui")).await.unwrap();
        assert!(browser.current_url().await.unwrap().path().ends_with("/ui/login"));
        let status = browser
            .execute_async(
                "const done = arguments[0]; fetch('/v1/apps').then(r => done(r.status))",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(status, 401);

        // A wrong token is refused, and says so.
        log_in(&browser, &api, "not-the-token").await;
        let message = message(&browser, "message").await;
        assert!(message.contains("not this cluster's admin token"), "{message}");
        screenshot(&browser, "login-refused.png").await;

        // The admin token logs in: the overview shows the nodes and apps
        // the CLI shows.
        log_in(&browser, &api, &token).await;
        assert_eq!(path_after(&browser, "/ui").await, "/ui");
        let shown: BTreeSet<String> = first_column(&browser, "nodes", 2).await.into_iter().collect();
        assert_eq!(shown, nodes);
        let apps = cells(&browser, "apps").await;
        assert!(apps.contains(&"shop".to_string()) && apps.contains(&"2/2".to_string()), "{apps:?}");
        screenshot(&browser, "overview.png").await;
        // The page's scripts see no token, and no cookie.
        let cookie = browser.execute("return document.cookie", vec![]).await.unwrap();
        assert_eq!(cookie, "");
        assert!(!browser.source().await.unwrap().contains(token.trim()));
        let stored = browser
            .execute("return JSON.stringify(localStorage) + JSON.stringify(sessionStorage)", vec![])
            .await
            .unwrap();
        assert_eq!(stored, "{}{}");
        // The session reads; it cannot change anything.
        let status = browser
            .execute_async(
                "const done = arguments[0]; fetch('/v1/apps/shop', {method: 'DELETE'}).then(r => done(r.status))",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(status, 403);

        // The app's page: its replicas as `skiff ps` lists them, and the
        // guest's markup as text.
        browser.goto(&format!("{api}/ui#/apps/shop")).await.unwrap();
        let shown: BTreeSet<String> = first_column(&browser, "replicas", 2).await.into_iter().collect();
        assert_eq!(shown, replicas);
        let logs = wait_for_cell(&browser, "logs", "<script>alert(1)</script>").await;
        assert!(logs, "the log line shows as text");
        let injected = browser
            .execute("return document.querySelectorAll('#view script').length", vec![])
            .await
            .unwrap();
        assert_eq!(injected, 0, "no element was made of the guest's markup");
        assert!(browser.get_alert_text().await.is_err(), "no script ran");
        screenshot(&browser, "app.png").await;

        // A node's page lists the replicas on it.
        browser.goto(&format!("{api}/ui#/nodes/node-1")).await.unwrap();
        let here = first_column(&browser, "replicas", 1).await;
        assert!(here.iter().all(|id| replicas.contains(id)), "{here:?}");
        screenshot(&browser, "node.png").await;

        // The session expires (8 s here): the page goes back to the login.
        tokio::time::sleep(Duration::from_secs(9)).await;
        browser.goto(&format!("{api}/ui")).await.unwrap();
        assert!(browser.current_url().await.unwrap().path().ends_with("/ui/login"));
        browser.close().await.unwrap();
    });

    // A one-time link from `skiff dashboard` logs in once.
    let link = cluster.json(&["dashboard"])["url"]
        .as_str()
        .unwrap()
        .to_string();
    runtime.block_on(async {
        let browser = driver.browser().await;
        browser.goto(&link).await.unwrap();
        assert_eq!(path_after(&browser, "/ui").await, "/ui");
        first_column(&browser, "nodes", 2).await;
        // A page of another site posting to the logout (cross-site: no
        // cookie goes with it) does not end the session.
        let form = format!(
            "data:text/html,<form method=post action='{api}/ui/logout'></form><script>document.forms[0].submit()</script>"
        );
        browser.goto(&form).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        browser.goto(&format!("{api}/ui")).await.unwrap();
        assert_eq!(path_after(&browser, "/ui").await, "/ui", "still logged in");
        // The session reads only what the pages read.
        let status = browser
            .execute_async(
                "const done = arguments[0]; fetch('/v1/join-tokens').then(r => done(r.status))",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(status, 403);
        // Its own logout ends it.
        browser.find(Locator::Css("header form button")).await.unwrap().click().await.unwrap();
        assert_eq!(path_after(&browser, "/ui/login").await, "/ui/login");
        browser.goto(&format!("{api}/ui")).await.unwrap();
        assert_eq!(path_after(&browser, "/ui/login").await, "/ui/login");
        let other = driver.browser().await;
        other.goto(&link).await.unwrap();
        let message = other
            .find(Locator::Id("message"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(message.contains("used already or has expired"), "{message}");
        other.close().await.unwrap();
        browser.close().await.unwrap();
    });
}

/// Whether a cell of `table` comes to hold exactly `text`.
async fn wait_for_cell(browser: &Client, table: &str, text: &str) -> bool {
    for _ in 0..100 {
        if cells(browser, table).await.iter().any(|cell| cell == text) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}
