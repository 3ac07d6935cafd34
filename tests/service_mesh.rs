//! End-to-end tests of service-to-service calls by name: an app whose
//! frontend calls its catalog at `catalog.shop.skiff.internal`, served by
//! `skiff run`, by `skiff up` and across the nodes of a cluster; the
//! callee's `allow_callers` denying strangers before any instance starts;
//! the caller identity the callee sees, which no client, guest or node can
//! forge; names that address nothing; call loops; and one trace across
//! every hop.

mod support;

use skiff_orchestrator::api_client::ApiClient;
use skiff_orchestrator::mesh::NodeIdentity;
use skiff_test_guests::{EXAMPLES_DIR, PROBE};
use std::path::Path;
use std::time::Duration;
use support::cluster::{Cluster, get_with_headers as get_with, saved_identity};
use support::tls;
use support::{Running, temp_dir, toml_path, wait_until, write_manifest};

const FRONTEND_ID: &str = "spiffe://skiff/app/shop/component/frontend";

/// The value of `key=` in a log line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let start = line
        .find(&format!(" {key}="))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        + key.len()
        + 2;
    line[start..]
        .split_whitespace()
        .next()
        .unwrap()
        .trim_matches('"')
}

/// The shop example's directory.
fn shop() -> String {
    Path::new(EXAMPLES_DIR)
        .join("shop")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn skiff_run_serves_components_that_call_each_other_by_name_in_one_trace() {
    let home = temp_dir();
    let run = Running::start(home.path(), &[&shop()]);
    let given_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let given_parent = "00f067aa0ba902b7";
    let (status, body) = get_with(
        &run.url,
        "/",
        &format!("traceparent: 00-{given_trace}-{given_parent}-01\r\n"),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("teapot"), "{body}");
    assert!(
        body.contains(&format!("served by the catalog to {FRONTEND_ID}")),
        "{body}"
    );

    // Both hops are spans of the client's trace: the frontend's parent is
    // the client's span, the catalog's parent the frontend's span.
    let frontend = run.wait_for_line(&["span", "callee=\"shop/frontend\"", given_trace]);
    let catalog = run.wait_for_line(&["span", "callee=\"shop/catalog\"", given_trace]);
    assert_eq!(field(&frontend, "parent_id"), given_parent, "{frontend}");
    assert_eq!(field(&frontend, "caller"), "ingress", "{frontend}");
    assert_eq!(
        field(&catalog, "parent_id"),
        field(&frontend, "span_id"),
        "{catalog}\n{frontend}"
    );
    assert_eq!(field(&catalog, "caller"), "shop/frontend", "{catalog}");
    assert_eq!(field(&catalog, "status"), "200", "{catalog}");

    // Without a traceparent, ingress starts a trace.
    let (status, _) = get_with(&run.url, "/", "");
    assert_eq!(status, 200);
    // (Its span line reaches the test's reader of stderr a moment later.)
    run.wait_for_line(&["callee=\"shop/frontend\"", "parent_id=-"]);
}

/// A probe app: `route = "/..."`, with `allow_callers` as given.
fn probe_app(dir: &Path, name: &str, allow_callers: &str) -> String {
    write_manifest(
        dir,
        &format!(
            "[app]\nname = \"{name}\"\n\
             [component.probe]\nsource = {}\nroute = \"/...\"\n\
             allow_callers = {allow_callers}\n",
            toml_path(PROBE)
        ),
    );
    dir.to_string_lossy().into_owned()
}

#[test]
fn on_skiff_up_only_allowed_callers_get_through_and_nobody_forges_an_identity() {
    let home = temp_dir();
    let up = Running::launch(
        home.path(),
        &[
            "up",
            &shop(),
            "--listen",
            "127.0.0.1:0",
            "--api",
            "127.0.0.1:0",
        ],
        "Serving ",
    );
    let probe_dir = temp_dir();
    let stranger_dir = temp_dir();
    let probe = probe_app(probe_dir.path(), "probe", "[\"probe/probe\"]");
    let stranger = probe_app(stranger_dir.path(), "stranger", "[]");
    for app in [&probe, &stranger] {
        let output = support::skiff(home.path())
            .args(["deploy", app, "--wait"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
    }
    let as_host = |host: &str, path: &str| get_with(&up.url, path, &format!("Host: {host}\r\n"));
    wait_until(Duration::from_secs(30), "every app to serve", || {
        ["probe", "stranger", "shop"]
            .iter()
            .all(|h| as_host(h, "/env").0 == 200)
            .then_some(())
    });

    let (status, body) = as_host("shop", "/");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(FRONTEND_ID), "{body}");

    // Deny by default: the catalog lists only the frontend.
    let (status, body) = as_host("stranger", "/call?http://catalog.shop.skiff.internal/items");
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("shop/catalog") && body.contains("stranger/probe"),
        "{body}"
    );
    up.wait_for_line(&[
        "mesh_denied",
        "caller=stranger/probe",
        "callee=shop/catalog",
    ]);

    // A denied call never reaches the callee's instance: the probe logs
    // what it is asked to, and it is not asked.
    let (status, body) = as_host(
        "stranger",
        "/call?http://probe.probe.skiff.internal/log?never-logged",
    );
    assert_eq!(status, 403, "{body}");
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let (status, body) = get_with(
        &up.url,
        "/call?http://probe.probe.skiff.internal/log?logged",
        &format!("Host: probe\r\ntraceparent: 00-{trace}-b7ad6b7169203331-01\r\n"),
    );
    assert_eq!((status, body.as_str()), (200, "logged"));
    // The client's tracestate goes on with its trace; with a trace of
    // Skiff's own (no valid traceparent), it is dropped.
    let (status, body) = get_with(
        &up.url,
        "/call?http://probe.probe.skiff.internal/headers",
        &format!(
            "Host: probe\r\ntraceparent: 00-{trace}-b7ad6b7169203331-01\r\ntracestate: vendor=abc\r\n"
        ),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("tracestate: vendor=abc\n"), "{body}");
    assert!(
        body.contains(&format!("traceparent: 00-{trace}-")),
        "{body}"
    );
    let (status, body) = get_with(
        &up.url,
        "/call?http://probe.probe.skiff.internal/headers",
        "Host: probe\r\ntracestate: vendor=abc\r\n",
    );
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("tracestate"), "{body}");
    assert_eq!(as_host("probe", "/log?untraced").0, 200);
    let logs = |extra: &[&str]| {
        let output = support::skiff(home.path())
            .args(["logs", "probe"])
            .args(extra)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let all = wait_until(Duration::from_secs(15), "the probe's log lines", || {
        let all = logs(&[]);
        (all.contains("logged") && all.contains("untraced")).then_some(all)
    });
    assert!(!all.contains("never-logged"), "{all}");
    // The lines of one trace, across its hops: the called probe's.
    let traced = logs(&["--trace", trace]);
    assert!(traced.contains("| logged"), "{traced}");
    assert!(!traced.contains("untraced"), "{traced}");

    // Names that address nothing: 502 naming what is missing.
    let (status, body) = as_host("probe", "/call?http://nope.shop.skiff.internal/");
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("no component \"nope\""), "{body}");
    let (status, body) = as_host("probe", "/call?http://ghost.skiff.internal/");
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("no app \"ghost\""), "{body}");
    let (status, body) = as_host("probe", "/call?http://a.b.c.skiff.internal/");
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("not a mesh name"), "{body}");

    // The identity is the platform's: a guest's forged header is replaced,
    // a client's removed.
    let (status, body) = as_host("probe", "/forge?http://probe.probe.skiff.internal/headers");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("skiff-caller: spiffe://skiff/app/probe/component/probe\n"),
        "{body}"
    );
    assert!(!body.contains("admin"), "{body}");
    // A body the SDK knows the length of goes with it, so the receiver
    // knows at once it has none.
    assert!(body.contains("content-length: 0\n"), "{body}");
    let (status, body) = get_with(
        &up.url,
        "/headers",
        "Host: probe\r\nskiff-caller: spiffe://skiff/app/shop/component/frontend\r\n",
    );
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("skiff-caller"), "{body}");

    // A loop ends at the hop limit, and the 508 comes back down the chain.
    let (status, body) = as_host("probe", "/loop?http://probe.probe.skiff.internal");
    assert_eq!(status, 508, "{body}");
    assert!(body.contains("mesh hops"), "{body}");
    up.wait_for_line(&["mesh_loop", "callee=probe/probe"]);

    // A client guessing names learns nothing of an app ingress cannot
    // reach: the same 404 as for no app at all.
    let hidden_dir = temp_dir();
    write_manifest(
        hidden_dir.path(),
        &format!(
            "[app]\nname = \"hidden\"\n[component.probe]\nsource = {}\nallow_callers = [\"probe/probe\"]\n",
            toml_path(PROBE)
        ),
    );
    let output = support::skiff(home.path())
        .args(["deploy", hidden_dir.path().to_str().unwrap(), "--wait"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        as_host("hidden", "/x"),
        (404, "no app serves /x\n".to_string())
    );

    // With no replica of the catalog, a stranger is still refused: it
    // learns nothing of the callee's replicas; an allowed caller hears
    // there is none.
    let output = support::skiff(home.path())
        .args(["scale", "shop/catalog", "0"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    wait_until(Duration::from_secs(15), "the catalog to stop", || {
        let (status, _) = as_host("shop", "/");
        (status != 200).then_some(())
    });
    let (status, body) = as_host("stranger", "/call?http://catalog.shop.skiff.internal/items");
    assert_eq!(status, 403, "{body}");
    let (status, body) = as_host("shop", "/");
    assert!(body.contains("no running replica"), "{status} {body}");
}

#[test]
fn across_nodes_a_call_carries_its_callers_certificate_which_only_its_node_obtains() {
    // The frontend on node-1, the catalog on node-2; the request enters
    // through node-3, which runs neither: two hops between nodes.
    let cluster = serving_split_shop(&[]);
    let node_1 = &cluster.nodes[0];
    let node_2 = &cluster.nodes[1];
    let node_3 = &cluster.nodes[2];
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let (status, body) = get_with(
        &node_3.process.url,
        "/",
        &format!("Host: shop\r\ntraceparent: 00-{client_trace}-{client_span}-01\r\n"),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(FRONTEND_ID), "{body}");

    // One trace over the three nodes: the client's, continued by the
    // frontend on node-1 and by the catalog on node-2.
    let frontend =
        node_1
            .process
            .wait_for_line(&["span", "callee=\"shop/frontend\"", client_trace]);
    assert_eq!(field(&frontend, "parent_id"), client_span, "{frontend}");
    assert_eq!(field(&frontend, "caller"), "ingress", "{frontend}");
    let catalog = node_2
        .process
        .wait_for_line(&["span", "callee=\"shop/catalog\"", client_trace]);
    assert_eq!(field(&catalog, "caller"), "shop/frontend", "{catalog}");
    assert_eq!(
        field(&catalog, "parent_id"),
        field(&frontend, "span_id"),
        "{catalog}\n{frontend}"
    );

    // Node-1 speaking to node-2's mesh endpoint directly. With its own
    // certificate, a claimed caller is ignored: that is ingress traffic,
    // which cannot reach the catalog (no route).
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let node_identity = saved_identity(&cluster, &node_1.name);
    let members = support::cluster::only(&saved_identity(&cluster, &node_2.name));
    let send = |identity: &NodeIdentity| {
        let request = "GET /items HTTP/1.1\r\nhost: x\r\nskiff-app: shop\r\n\
                       skiff-component: catalog\r\nskiff-hops: 1\r\n\
                       skiff-caller: spiffe://skiff/app/shop/component/frontend\r\n\r\n";
        let tls = identity.client_config(&members).unwrap();
        tls::exchange(
            &runtime,
            &node_2.mesh,
            &node_2.name,
            tls,
            request.as_bytes(),
        )
        .answer
    };
    let claimed = send(&node_identity).unwrap().1;
    assert!(claimed.starts_with("HTTP/1.1 403"), "{claimed}");

    // The control plane issues node-1 the frontend's identity, which it
    // runs, and not the catalog's, which it does not.
    let api = ApiClient::new(
        &cluster.api,
        node_identity.control_plane_client_config().unwrap(),
        None,
    );
    let workload_cert = |workload: &str| {
        let (key, csr) = NodeIdentity::request().unwrap();
        let asked = serde_json::json!({ "workload": workload, "csr_pem": csr });
        runtime
            .block_on(api.post::<_, serde_json::Value>("/v1/node/workload-cert", &asked))
            .map(|issued| {
                NodeIdentity::new(
                    key,
                    issued["cert_pem"].as_str().unwrap().to_string(),
                    cluster.ca_pem(),
                )
            })
    };
    let refused = workload_cert("shop/catalog")
        .err()
        .expect("not node-1's to have");
    assert_eq!(
        refused.status(),
        Some(http::StatusCode::FORBIDDEN),
        "{refused}"
    );
    assert!(
        refused
            .to_string()
            .contains("runs no replica of shop/catalog"),
        "{refused}"
    );
    let frontend_identity = workload_cert("shop/frontend").unwrap();
    let answer = send(&frontend_identity).unwrap().1;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A node that skips its own check (compromised, or behind on the
    // catalog's allow_callers) sends a call from a workload it does run
    // but the catalog does not allow: the catalog's node refuses it.
    let stranger_dir = temp_dir();
    let stranger = probe_app(stranger_dir.path(), "stranger", "[]").to_string();
    let manifest = stranger_dir.path().join("skiff.toml");
    let placed = std::fs::read_to_string(&manifest).unwrap()
        + "[component.probe.placement]\nlabels = { zone = \"z1\" }\n";
    std::fs::write(&manifest, placed).unwrap();
    cluster.cli(&["deploy", &stranger, "--wait"]);
    let stranger_identity = wait_until(Duration::from_secs(15), "node-1 to run stranger", || {
        workload_cert("stranger/probe").ok()
    });
    let refused = send(&stranger_identity).unwrap().1;
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    node_2.process.wait_for_line(&[
        "mesh_denied",
        "caller=stranger/probe",
        "callee=shop/catalog",
    ]);
}

#[test]
fn workload_certificates_rotate_while_calls_continue_and_an_expired_one_is_refused() {
    let cluster = serving_split_shop(&["--workload-cert-lifetime", "4s"]);
    let node_1 = &cluster.nodes[0];
    let node_2 = &cluster.nodes[1];
    // Nine seconds of calls across nodes: the frontend's certificate (4 s)
    // is renewed at half its life, and no call fails.
    let started = std::time::Instant::now();
    let mut calls = 0;
    while started.elapsed() < Duration::from_secs(9) {
        let (status, body) = get_with(&node_1.process.url, "/", "Host: shop\r\n");
        assert_eq!(status, 200, "call {calls}: {body}");
        assert!(body.contains(FRONTEND_ID), "{body}");
        calls += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let issued = cluster
        .server
        .stderr()
        .lines()
        .filter(|l| l.contains("workload certificate issued") && l.contains("shop/frontend"))
        .count();
    assert!(
        issued >= 3,
        "{issued} certificates in 9 s:\n{}",
        cluster.server.stderr()
    );

    // A certificate past its end is refused at the handshake.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let node_identity = saved_identity(&cluster, &node_1.name);
    let api = ApiClient::new(
        &cluster.api,
        node_identity.control_plane_client_config().unwrap(),
        None,
    );
    let (key, csr) = NodeIdentity::request().unwrap();
    let asked = serde_json::json!({ "workload": "shop/frontend", "csr_pem": csr });
    let issued: serde_json::Value = runtime
        .block_on(api.post("/v1/node/workload-cert", &asked))
        .unwrap();
    let expiring = NodeIdentity::new(
        key,
        issued["cert_pem"].as_str().unwrap().to_string(),
        cluster.ca_pem(),
    );
    let members = support::cluster::only(&saved_identity(&cluster, &node_2.name));
    let request = b"GET /items HTTP/1.1\r\nhost: x\r\nskiff-app: shop\r\nskiff-component: catalog\r\nskiff-hops: 1\r\n\r\n";
    // While valid: one connection kept open, and one client config that
    // has connected before (it would resume a session if offered one).
    let resuming = expiring.client_config(&members).unwrap();
    let first = tls::exchange(
        &runtime,
        &node_2.mesh,
        &node_2.name,
        resuming.clone(),
        request,
    );
    assert!(first.answer.unwrap().1.starts_with("HTTP/1.1 200"));
    let mut kept = runtime.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let stream = tokio::net::TcpStream::connect(&node_2.mesh).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from(node_2.name.clone()).unwrap();
        let connector = tokio_rustls::TlsConnector::from(expiring.client_config(&members).unwrap());
        let mut stream = connector.connect(name, stream).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        stream
    });
    std::thread::sleep(Duration::from_secs(5));
    // Past its end: refused on the connection kept open...
    let again = runtime.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        kept.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), kept.read_to_end(&mut answer)).await;
        String::from_utf8_lossy(&answer).into_owned()
    });
    assert!(
        again.contains("HTTP/1.1 403") && again.contains("has expired"),
        "{again}"
    );
    // ... by a client that would resume its session, and by a new one.
    for tls in [resuming, expiring.client_config(&members).unwrap()] {
        let answer = tls::exchange(&runtime, &node_2.mesh, &node_2.name, tls, request).answer;
        assert!(
            answer.is_err(),
            "an expired certificate was honoured: {answer:?}"
        );
    }
}

/// A three-node cluster started with `server_args`, serving the shop
/// split over its first two nodes ([`split_shop`]); the third runs none
/// of it.
fn serving_split_shop(server_args: &[&str]) -> Cluster {
    serving_split_shop_with(server_args, &[])
}

/// [`serving_split_shop`], each node started with `node_args` too.
fn serving_split_shop_with(server_args: &[&str], node_args: &[&str]) -> Cluster {
    let cluster = Cluster::start_with(3, server_args, node_args);
    let app_dir = temp_dir();
    write_manifest(app_dir.path(), &split_shop());
    cluster.cli(&["deploy", app_dir.path().to_str().unwrap(), "--wait"]);
    let url = cluster.nodes[0].process.url.clone();
    wait_until(Duration::from_secs(30), "the shop to serve", || {
        (get_with(&url, "/", "Host: shop\r\n").0 == 200).then_some(())
    });
    cluster
}

/// The shop with its frontend on node-1 (zone z1) and its catalog on
/// node-2 (zone z2).
fn split_shop() -> String {
    let shop = Path::new(EXAMPLES_DIR).join("shop");
    std::fs::read_to_string(shop.join("skiff.toml"))
        .unwrap()
        .replace("../target/", &format!("{EXAMPLES_DIR}/target/"))
        .replace(
            "[component.catalog]\n",
            "[component.catalog.placement]\nlabels = { zone = \"z2\" }\n[component.catalog]\n",
        )
        .replace(
            "[component.frontend]\n",
            "[component.frontend.placement]\nlabels = { zone = \"z1\" }\n[component.frontend]\n",
        )
}

#[test]
fn a_control_plane_that_hangs_delays_no_call_while_the_certificate_held_is_valid() {
    // Renewal is due at 5 s; the certificate serves until 2 s before 10 s.
    let cluster = serving_split_shop(&["--workload-cert-lifetime", "10s"]);
    let url = cluster.nodes[0].process.url.clone();
    cluster.server.signal("STOP");
    std::thread::sleep(Duration::from_millis(5_500));
    let started = std::time::Instant::now();
    let (status, body) = get_with(&url, "/", "Host: shop\r\n");
    let took = started.elapsed();
    cluster.server.signal("CONT");
    assert_eq!(status, 200, "{body}");
    assert!(
        took < Duration::from_secs(2),
        "a call due for renewal waited {took:?} on a hung control plane"
    );
}

#[test]
fn a_node_restarted_while_the_control_plane_is_away_calls_across_nodes_with_the_certificate_it_kept()
 {
    let mut cluster = serving_split_shop(&[]);
    let url = cluster.nodes[0].process.url.clone();
    // The first call across nodes obtains the frontend's certificate.
    let (status, body) = get_with(&url, "/", "Host: shop\r\n");
    assert_eq!(status, 200, "{body}");
    let kept = cluster
        .home()
        .join("node-node-1/workload-certs/shop.frontend.pem");
    wait_until(Duration::from_secs(5), "the certificate to be kept", || {
        kept.exists().then_some(())
    });
    cluster.wait_known_everywhere("shop", 2);

    cluster.server.signal("STOP");
    cluster.restart_node("node-1");
    let url = cluster.nodes[0].process.url.clone();
    let answer = wait_until(Duration::from_secs(30), "the shop to serve", || {
        let (status, body) = get_with(&url, "/", "Host: shop\r\n");
        (status == 200).then_some(body)
    });
    cluster.server.signal("CONT");
    assert!(answer.contains(FRONTEND_ID), "{answer}");
    cluster.nodes[0]
        .process
        .wait_for_line(&["workload certificate kept from before a restart"]);
}

#[test]
fn a_callee_node_restarted_while_the_control_plane_is_away_is_reached_where_it_was() {
    let mut cluster = serving_split_shop(&[]);
    let url = cluster.nodes[0].process.url.clone();
    // Both nodes have saved where the other's replica runs.
    cluster.wait_known_everywhere("shop", 2);
    cluster.server.signal("STOP");
    // node-2, running the catalog, restarts as a user would: no
    // --mesh-listen, so it takes the mesh port it had.
    let mut old = cluster.nodes.remove(1);
    old.process.kill();
    let listen = old.process.url.trim_start_matches("http://").to_string();
    let node_2 = cluster.launch_node("node-2", &["--listen", &listen]);
    assert_eq!(node_2.mesh, old.mesh);
    cluster.nodes.insert(1, node_2);
    // At once: the catalog's node waits for its replica to load rather
    // than send the call back.
    let (status, body) = get_with(&url, "/", "Host: shop\r\n");
    cluster.server.signal("CONT");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(FRONTEND_ID), "{body}");
}

#[test]
fn a_certificate_the_control_plane_is_slow_to_issue_holds_up_only_its_own_workload() {
    let cluster = Cluster::start(2, &[]);
    let market = split_shop()
        .replace("name = \"shop\"", "name = \"market\"")
        .replace(".shop.skiff.internal", ".market.skiff.internal")
        .replace("\"shop/frontend\"", "\"market/frontend\"");
    for manifest in [split_shop(), market] {
        let dir = temp_dir();
        write_manifest(dir.path(), &manifest);
        cluster.cli(&["deploy", dir.path().to_str().unwrap(), "--wait"]);
    }
    // Neither frontend has called across nodes yet: node-1 holds no
    // workload certificate.
    for app in ["shop", "market"] {
        cluster.wait_running(app, 2);
        cluster.wait_known_everywhere(app, 2);
    }
    cluster.server.signal("STOP");
    let url = cluster.nodes[0].process.url.clone();
    let calls: Vec<_> = ["shop", "market"]
        .into_iter()
        .map(|app| {
            let url = url.clone();
            std::thread::spawn(move || {
                let started = std::time::Instant::now();
                let (status, body) = get_with(&url, "/", &format!("Host: {app}\r\n"));
                (app, status, body, started.elapsed())
            })
        })
        .collect();
    let answers: Vec<_> = calls.into_iter().map(|c| c.join().unwrap()).collect();
    cluster.server.signal("CONT");
    for (app, status, body, took) in answers {
        // Each waits out its own request (5 s), not the other's too.
        assert_ne!(status, 200, "{app}: {body}");
        assert!(body.contains("holds no valid certificate"), "{app}: {body}");
        assert!(
            took < Duration::from_secs(8),
            "{app}'s first call waited {took:?}"
        );
    }
}

#[test]
fn a_callee_whose_caller_gives_up_shows_499_and_still_finishes_its_work() {
    let home = temp_dir();
    let callee_dir = temp_dir();
    let callee = probe_app(callee_dir.path(), "callee", "[\"caller/probe\"]");
    let up = Running::launch(
        home.path(),
        &[
            "up",
            &callee,
            "--listen",
            "127.0.0.1:0",
            "--api",
            "127.0.0.1:0",
        ],
        "Serving ",
    );
    let caller_dir = temp_dir();
    let caller = probe_app(caller_dir.path(), "caller", "[]");
    let manifest = caller_dir.path().join("skiff.toml");
    let limited = std::fs::read_to_string(&manifest).unwrap()
        + "[component.probe.limits]\ntimeout = \"2s\"\n";
    std::fs::write(&manifest, limited).unwrap();
    let output = support::skiff(home.path())
        .args(["deploy", &caller, "--wait"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    wait_until(Duration::from_secs(30), "the caller to serve", || {
        (get_with(&up.url, "/env", "Host: caller\r\n").0 == 200).then_some(())
    });
    let started = std::time::Instant::now();
    let (status, body) = get_with(
        &up.url,
        "/call?http://probe.callee.skiff.internal/sleep?4000",
        "Host: caller\r\n",
    );
    assert_eq!(status, 504, "{body}");
    assert!(started.elapsed() < Duration::from_secs(4), "{body}");
    // The callee's hop ends with its caller (a span line with 499), but
    // its instance is not cut short at a moment a client chose: it wakes
    // and finishes, within its own timeout.
    up.wait_for_line(&["span", "callee=\"callee/probe\"", "status=499"]);
    let logs = wait_until(Duration::from_secs(10), "the callee to wake", || {
        let logs = support::skiff(home.path())
            .args(["logs", "callee"])
            .output()
            .unwrap();
        let logs = String::from_utf8_lossy(&logs.stdout).into_owned();
        logs.contains("awake").then_some(logs)
    });
    assert!(logs.contains("sleeping 4000"), "{logs}");
}

#[test]
fn a_callee_on_another_node_whose_caller_gives_up_shows_499() {
    let cluster = Cluster::start(2, &[]);
    let place = |dir: &Path, zone: &str, extra: &str| {
        let manifest = dir.join("skiff.toml");
        let placed = std::fs::read_to_string(&manifest).unwrap()
            + &format!("[component.probe.placement]\nlabels = {{ zone = \"{zone}\" }}\n{extra}");
        std::fs::write(&manifest, placed).unwrap();
    };
    let callee_dir = temp_dir();
    let callee = probe_app(callee_dir.path(), "callee", "[\"caller/probe\"]");
    place(callee_dir.path(), "z2", "");
    let caller_dir = temp_dir();
    let caller = probe_app(caller_dir.path(), "caller", "[]");
    place(
        caller_dir.path(),
        "z1",
        "[component.probe.limits]\ntimeout = \"2s\"\n",
    );
    for app in [&callee, &caller] {
        cluster.cli(&["deploy", app, "--wait"]);
    }
    for app in ["callee", "caller"] {
        cluster.wait_known_everywhere(app, 1);
    }
    let url = cluster.nodes[0].process.url.clone();
    let (status, body) = get_with(
        &url,
        "/call?http://probe.callee.skiff.internal/sleep?4000",
        "Host: caller\r\n",
    );
    assert_eq!(status, 504, "{body}");
    // node-1 drops the forwarded call; node-2's span of it says so, and
    // the callee finishes its work.
    cluster.nodes[1]
        .process
        .wait_for_line(&["span", "callee=\"callee/probe\"", "status=499"]);
    cluster.nodes[1].process.wait_for_line(&["awake"]);
}

/// An OTLP/HTTP receiver on loopback: decodes each `POST /v1/traces` with
/// the OpenTelemetry project's protobuf types and keeps its spans, with
/// the `service.instance.id` of the process that sent them.
struct OtlpReceiver {
    addr: std::net::SocketAddr,
    spans: std::sync::Arc<
        std::sync::Mutex<Vec<(String, opentelemetry_proto::tonic::trace::v1::Span)>>,
    >,
}

impl OtlpReceiver {
    fn start() -> OtlpReceiver {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = spans.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let kept = kept.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut writer = stream;
                    // One request after another on a kept-alive connection.
                    loop {
                        let mut length = 0usize;
                        let mut path = String::new();
                        loop {
                            let mut line = String::new();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            let line = line.trim_end();
                            if line.is_empty() {
                                break;
                            }
                            if path.is_empty() {
                                path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                            }
                            if let Some((name, value)) = line.split_once(':')
                                && name.eq_ignore_ascii_case("content-length")
                            {
                                length = value.trim().parse().unwrap_or(0);
                            }
                        }
                        let mut body = vec![0; length];
                        reader.read_exact(&mut body).unwrap();
                        assert_eq!(path, "/v1/traces");
                        let request = <opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest as prost::Message>::decode(body.as_slice())
                            .expect("an OTLP protobuf request");
                        for resource in request.resource_spans {
                            let instance = resource
                                .resource
                                .iter()
                                .flat_map(|r| &r.attributes)
                                .find(|a| a.key == "service.instance.id")
                                .and_then(|a| a.value.as_ref())
                                .and_then(|v| match &v.value {
                                    Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) => Some(s.clone()),
                                    _ => None,
                                })
                                .unwrap_or_default();
                            for scope in resource.scope_spans {
                                for span in scope.spans {
                                    kept.lock().unwrap().push((instance.clone(), span));
                                }
                            }
                        }
                        let _ = writer.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n");
                    }
                });
            }
        });
        OtlpReceiver { addr, spans }
    }

    /// The spans of trace `trace` (hex) received so far, with the node
    /// each came from.
    fn trace(&self, trace: &str) -> Vec<(String, opentelemetry_proto::tonic::trace::v1::Span)> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, span)| hex(&span.trace_id) == trace)
            .cloned()
            .collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn spans_across_nodes_are_exported_over_otlp_as_one_trace() {
    let receiver = OtlpReceiver::start();
    let endpoint = format!("http://{}", receiver.addr);
    let cluster = serving_split_shop_with(&[], &["--otlp-endpoint", &endpoint]);
    let url = cluster.nodes[0].process.url.clone();
    let client_trace = "0af7651916cd43dd8448eb211c80319c";
    let client_span = "b7ad6b7169203331";
    let (status, body) = get_with(
        &url,
        "/",
        &format!("Host: shop\r\ntraceparent: 00-{client_trace}-{client_span}-01\r\n"),
    );
    assert_eq!(status, 200, "{body}");
    let spans = wait_until(Duration::from_secs(20), "both hops exported", || {
        let spans = receiver.trace(client_trace);
        (spans.len() >= 2).then_some(spans)
    });
    let named = |component: &str| {
        spans
            .iter()
            .find(|(_, span)| {
                span.attributes.iter().any(|a| {
                    a.key == "skiff.component"
                        && matches!(&a.value.as_ref().and_then(|v| v.value.clone()),
                            Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) if s == component)
                })
            })
            .unwrap_or_else(|| panic!("no span of {component} in {spans:?}"))
            .clone()
    };
    let (frontend_node, frontend) = named("frontend");
    let (catalog_node, catalog) = named("catalog");
    // One trace: the frontend's parent is the client's span, the catalog's
    // the frontend's; each exported by the node that served it.
    assert_eq!(hex(&frontend.parent_span_id), client_span);
    assert_eq!(catalog.parent_span_id, frontend.span_id);
    assert_eq!(
        (frontend_node.as_str(), catalog_node.as_str()),
        ("node-1", "node-2")
    );
    assert_eq!(frontend.name, "GET /...");
    assert_eq!(
        frontend.kind,
        opentelemetry_proto::tonic::trace::v1::span::SpanKind::Server as i32
    );
    assert!(frontend.end_time_unix_nano >= frontend.start_time_unix_nano);
    // The same span as the node's span log line.
    let line =
        cluster.nodes[1]
            .process
            .wait_for_line(&["span", "callee=\"shop/catalog\"", client_trace]);
    assert_eq!(field(&line, "span_id"), hex(&catalog.span_id), "{line}");

    // A trace its caller did not sample is not exported.
    let unsampled = "1af7651916cd43dd8448eb211c80319c";
    let (status, _) = get_with(
        &url,
        "/",
        &format!("Host: shop\r\ntraceparent: 00-{unsampled}-{client_span}-00\r\n"),
    );
    assert_eq!(status, 200);
    cluster.nodes[1]
        .process
        .wait_for_line(&["span", "callee=\"shop/catalog\"", unsampled]);
    std::thread::sleep(Duration::from_millis(2_500));
    assert!(receiver.trace(unsampled).is_empty());
}

#[test]
fn an_otlp_endpoint_that_is_not_a_url_is_refused_at_start() {
    let home = temp_dir();
    let stderr = support::expect_failure(
        home.path(),
        &["run", &shop(), "--otlp-endpoint", "collector:4318"],
    );
    assert!(
        stderr.contains("--otlp-endpoint") && stderr.contains("http://"),
        "{stderr}"
    );
}
