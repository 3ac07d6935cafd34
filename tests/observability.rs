//! End-to-end tests of what operators see: a real Prometheus (Debian's
//! `prometheus`, which the test command installs) scrapes a node and the
//! control plane of a cluster on loopback, and its PromQL answers match
//! the requests sent; `skiff run --metrics-listen` counts requests by
//! status class and the platform's reason.

mod support;

use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::cluster::{Cluster, deploy_probe, probe_app};
use support::{Running, get, http, temp_dir, wait_until, write_manifest};

/// The address a process printed as `Metrics at http://ADDR/metrics`.
fn metrics_addr(process: &Running) -> String {
    // Waits for the whole line: the log may be read mid-line.
    wait_until(
        Duration::from_secs(30),
        "the metrics address to be printed",
        || {
            let stderr = process.stderr();
            let rest = stderr.split("Metrics at http://").nth(1)?;
            rest.split_once("/metrics")
                .map(|(addr, _)| addr.to_string())
        },
    )
}

/// The text of `http://ADDR/metrics`.
fn scrape(addr: &str) -> String {
    let (status, body) = get(&format!("http://{addr}/metrics"));
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of the sample `line_start ... VALUE` in `text`, if present.
fn sample(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(line_start))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

/// A Prometheus server on loopback scraping `targets` (job name, address)
/// every second; killed when dropped.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(targets: &[(&str, &str)]) -> Prometheus {
        let binary = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
            .into_iter()
            .find(|path| Path::new(path).exists())
            .expect("Prometheus is not installed: scripts/test.sh installs Debian's prometheus");
        let dir = temp_dir();
        let mut config =
            String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n"
            ));
        }
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        // A free port, given up just before Prometheus takes it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = format!("127.0.0.1:{port}");
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus");
        let prometheus = Prometheus {
            child,
            url: format!("http://{listen}"),
            _dir: dir,
        };
        wait_until(Duration::from_secs(30), "Prometheus to be ready", || {
            let response = http().get(&format!("{}/-/ready", prometheus.url)).call();
            response.ok().filter(|r| r.status() == 200).map(drop)
        });
        prometheus
    }

    /// The value of the instant `query`, summed over its series; `None`
    /// when it has none yet.
    fn query(&self, query: &str) -> Option<f64> {
        let mut response = http()
            .get(&format!("{}/api/v1/query", self.url))
            .query("query", query)
            .call()
            .ok()?;
        let body: Value = serde_json::from_str(&response.body_mut().read_to_string().ok()?).ok()?;
        let results = body["data"]["result"].as_array()?;
        if results.is_empty() {
            return None;
        }
        results
            .iter()
            .map(|series| series["value"][1].as_str()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until `query` answers `expected`, and returns it.
    fn wait_for(&self, query: &str, expected: f64) -> f64 {
        let mut last = None;
        wait_until(
            Duration::from_secs(60),
            &format!("{query} == {expected} (last {last:?})"),
            || {
                last = self.query(query);
                (last == Some(expected)).then_some(expected)
            },
        )
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_a_node_and_the_control_plane() {
    let mut cluster = Cluster::start(0, &["--metrics-listen", "127.0.0.1:0"]);
    cluster.add_node_with(1, &["--metrics-listen", "127.0.0.2:0"]);
    let control_metrics = metrics_addr(&cluster.server);
    let node_metrics = metrics_addr(&cluster.nodes[0].process);
    let dir = temp_dir();
    let app = probe_app(dir.path(), "shop", "");
    cluster.cli(&["deploy", &app, "--wait"]);
    cluster.wait_running("shop", 1);

    let prometheus = Prometheus::start(&[("node", &node_metrics), ("control", &control_metrics)]);
    prometheus.wait_for(r#"sum(up{job="node"}) + sum(up{job="control"})"#, 2.0);

    // One request of each kind makes the series; Prometheus sees them
    // before the load, so what the load adds can be read off.
    let ingress = &cluster.nodes[0].process.url;
    let send = |status: u16, times: usize| {
        for _ in 0..times {
            assert_eq!(get(&format!("{ingress}/status?{status}")).0, status);
        }
    };
    send(200, 1);
    send(503, 1);
    prometheus.wait_for(r#"sum(skiff_requests_total{app="shop"})"#, 2.0);
    // A bounded load: 39 more answered 200, and 6 more answered 503 by
    // the guest.
    send(200, 39);
    send(503, 6);
    prometheus.wait_for(r#"sum(skiff_requests_total{app="shop",class="2xx"})"#, 40.0);
    prometheus.wait_for(r#"sum(skiff_requests_total{app="shop",class="5xx"})"#, 7.0);
    // What the node's ingress answered, as its clients saw it.
    prometheus.wait_for(
        r#"sum(skiff_ingress_requests_total{app="shop",component="probe",class="2xx"})"#,
        40.0,
    );
    let load = r#"skiff_requests_total{app="shop"}[10m]"#;
    prometheus.wait_for(
        &format!("sum(max_over_time({load}) - min_over_time({load}))"),
        45.0,
    );
    let rate = prometheus
        .query(&format!("sum(rate({load}))"))
        .expect("a request rate");
    assert!(rate > 0.0, "{rate}");
    // The guest answered those itself: no platform reason.
    assert_eq!(
        prometheus.query(r#"sum(skiff_requests_total{app="shop",reason!=""})"#),
        None
    );
    prometheus.wait_for(
        r#"sum(skiff_request_duration_seconds_count{app="shop",component="probe"})"#,
        47.0,
    );
    // Every request had its own instance (the readiness check made none
    // of these).
    prometheus.wait_for(r#"sum(skiff_instances_created_total{app="shop"})"#, 47.0);

    // The control plane's view.
    prometheus.wait_for(r#"skiff_nodes{state="ready"}"#, 1.0);
    // A state no node is in reads zero rather than vanishing.
    prometheus.wait_for(r#"skiff_nodes{state="down"}"#, 0.0);
    prometheus.wait_for(r#"skiff_replicas{state="running"}"#, 1.0);
    prometheus.wait_for("skiff_replicas_pending", 0.0);
    let heartbeats = prometheus
        .query("sum(skiff_heartbeat_duration_seconds_count)")
        .expect("heartbeats timed");
    assert!(heartbeats >= 1.0, "{heartbeats}");
    let syncs = prometheus
        .query(r#"sum(skiff_api_requests_total{route="/v1/node/sync",status="200"})"#)
        .expect("syncs counted");
    assert!(syncs >= 1.0, "{syncs}");
    // The deploy was timed, its placement included.
    let deploys = prometheus
        .query(r#"sum(skiff_api_request_duration_seconds_count{route="/v1/apps",method="POST"})"#)
        .expect("deploys timed");
    assert!(deploys >= 1.0, "{deploys}");
    let placed = prometheus
        .query(r#"sum(skiff_scheduling_decisions_total{outcome="placed"})"#)
        .expect("a placement counted");
    assert_eq!(placed, 1.0);
    let handshakes = prometheus
        .query(r#"sum(skiff_tls_handshakes_total{endpoint="api",side="server",outcome="ok"})"#)
        .expect("API handshakes counted");
    assert!(handshakes >= 1.0, "{handshakes}");
    // Certificates in the future, as Unix time.
    let expiry = prometheus
        .query(r#"min(skiff_certificate_expiry_timestamp_seconds{job="node",certificate="node"})"#)
        .expect("the node certificate's expiry");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(expiry > now, "{expiry} <= {now}");
    // A route label never carries an app name.
    let by_route = scrape(&control_metrics);
    assert!(!by_route.contains("/v1/apps/shop"), "{by_route}");
}

#[test]
fn skiff_run_counts_requests_by_class_and_the_platforms_reason() {
    let dir = temp_dir();
    write_manifest(
        dir.path(),
        &format!(
            "[app]\nname = \"probe\"\n[component.probe]\nsource = {}\nroute = \"/...\"\n\
             [component.probe.limits]\ntimeout = \"200ms\"\n",
            support::toml_path(skiff_test_guests::PROBE)
        ),
    );
    let server = Running::start(
        dir.path(),
        &[
            dir.path().to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let metrics = metrics_addr(&server);
    assert_eq!(get(&server.at("/status?200")).0, 200);
    assert_eq!(get(&server.at("/status?200")).0, 200);
    assert_eq!(get(&server.at("/status?404")).0, 404);
    // Past its timeout: the platform answers 504, reason `timeout`.
    assert_eq!(get(&server.at("/sleep?2000")).0, 504);
    // An outbound call to a host the manifest does not allow: the guest
    // answers 502 itself.
    assert_eq!(get(&server.at("/call?http://example.com/")).0, 502);

    let text = wait_until(Duration::from_secs(10), "the timeout counted", || {
        let text = scrape(&metrics);
        text.contains("reason=\"timeout\"").then_some(text)
    });
    let labels = r#"app="probe",component="probe""#;
    assert_eq!(
        sample(
            &text,
            &format!("skiff_requests_total{{{labels},class=\"2xx\"}}")
        ),
        Some(2.0),
        "{text}"
    );
    // The guest's own 502 for the denied call: no platform reason.
    assert_eq!(
        sample(
            &text,
            &format!("skiff_requests_total{{{labels},class=\"5xx\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("skiff_requests_total{{{labels},class=\"4xx\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("skiff_requests_total{{{labels},class=\"5xx\",reason=\"timeout\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("skiff_outbound_requests_total{{{labels},outcome=\"denied\"}}")
        ),
        Some(1.0)
    );
    // The process's own figures, under the names every client gives them.
    let resident = sample(&text, "process_resident_memory_bytes ").expect("the resident set");
    assert!(resident > 1e6, "{resident}");
    assert!(text.contains("skiff_build_info{version="), "{text}");
    // The one load: compiled, or from the compile cache of this home.
    let loads = sample(&text, r#"skiff_compile_cache_lookups_total{result="miss"}"#).or(sample(
        &text,
        r#"skiff_compile_cache_lookups_total{result="hit"}"#,
    ));
    assert_eq!(loads, Some(1.0), "{text}");

    // Anything but GET /metrics is refused, and says what is served.
    let (status, body) = get(&format!("http://{metrics}/"));
    assert_eq!(
        (status, body.as_str()),
        (404, "only /metrics is served here\n")
    );
    let mut response = http()
        .post(&format!("http://{metrics}/metrics"))
        .send("x")
        .unwrap();
    assert_eq!(response.status(), 405);
    assert!(
        response
            .body_mut()
            .read_to_string()
            .unwrap()
            .contains("GET only")
    );
}

#[test]
fn a_taken_metrics_address_is_refused_before_anything_starts() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let home = temp_dir();
    let message = support::expect_failure(
        home.path(),
        &["run", skiff_test_guests::PROBE, "--metrics-listen", &addr],
    );
    assert!(
        message.contains(&format!("cannot serve metrics on {addr}"))
            && message.contains("--metrics-listen"),
        "{message}"
    );
}

#[test]
fn skiff_top_shows_each_components_traffic_and_each_nodes_share() {
    let cluster = Cluster::start(2, &[]);
    deploy_probe(&cluster, "shop", 2);
    // 60 requests on each node, every sixth answered 500.
    for node in &cluster.nodes {
        for i in 0..60 {
            let status = if i % 6 == 5 { 500 } else { 200 };
            assert_eq!(
                get(&format!("{}/status?{status}", node.process.url)).0,
                status
            );
        }
    }
    // The nodes report within a heartbeat or two.
    let top = wait_until(Duration::from_secs(20), "top to show the traffic", || {
        let top = cluster.json(&["top"]);
        let shop = top["components"]
            .as_array()?
            .iter()
            .find(|c| c["app"] == "shop" && c["component"] == "probe")?
            .clone();
        let busy = |node: &Value| node["rps"].as_f64().is_some_and(|rps| rps > 0.0);
        let both = top["nodes"].as_array()?.iter().filter(|n| busy(n)).count() == 2;
        (both && shop["rps"].as_f64()? > 0.0).then_some((top, shop))
    });
    let (top, shop) = top;
    assert_eq!(shop["running"], 2, "{shop}");
    assert_eq!(shop["replicas"], 2, "{shop}");
    let error_rate = shop["error_rate"].as_f64().unwrap();
    assert!((error_rate - 1.0 / 6.0).abs() < 0.05, "{shop}");
    let p50 = shop["p50_ms"].as_f64().expect("a median");
    let p99 = shop["p99_ms"].as_f64().expect("a p99");
    assert!(p50 > 0.0 && p50 <= p99 && p99 < 5_000.0, "{shop}");
    let nodes = top["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{top}");
    for node in nodes {
        assert!(
            node["rps"].as_f64().unwrap() > 0.0,
            "each node served its share: {top}"
        );
        assert_eq!(node["state"], "ready");
    }

    // The live view refreshes until Ctrl-C, then ends cleanly.
    let mut live = support::skiff(cluster.home())
        .args(["top", "--interval", "500ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = live.stdout.take().unwrap();
    let screens = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
        text
    });
    std::thread::sleep(Duration::from_millis(1_600));
    let _ = Command::new("kill")
        .args(["-INT", &live.id().to_string()])
        .status();
    let status = live.wait().unwrap();
    let text = screens.join().unwrap();
    assert!(status.success(), "{status:?}\n{text}");
    assert!(
        text.matches("skiff top: 2 nodes").count() >= 2,
        "refreshed:\n{text}"
    );
    assert!(
        text.contains("APP") && text.contains("shop") && text.contains("node-1"),
        "{text}"
    );
}

#[test]
fn skiff_top_refuses_a_wrong_token_at_once() {
    let cluster = Cluster::start(0, &[]);
    let output = support::skiff(cluster.home())
        .args(["top"])
        .env("SKIFF_TOKEN", "not-the-token")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not valid for this cluster"), "{stderr}");
}
