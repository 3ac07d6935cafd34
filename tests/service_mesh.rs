//! End-to-end tests of service-to-service calls by name: an app whose
//! frontend calls its catalog at `catalog.shop.skiff.internal`, served by
//! `skiff run`, by `skiff up` and across the nodes of a cluster; the
//! callee's `allow_callers` denying strangers before any instance starts;
//! the caller identity the callee sees, which no client, guest or node can
//! forge; names that address nothing; call loops; and one trace across
//! every hop.

mod support;

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
    let started = run
        .stderr()
        .lines()
        .filter(|l| l.contains("callee=\"shop/frontend\"") && l.contains("parent_id=-"))
        .count();
    assert_eq!(started, 1, "{}", run.stderr());
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
    let (status, body) = as_host(
        "probe",
        "/call?http://probe.probe.skiff.internal/log?logged",
    );
    assert_eq!((status, body.as_str()), (200, "logged"));
    let logs = wait_until(Duration::from_secs(15), "the probe's log line", || {
        let output = support::skiff(home.path())
            .args(["logs", "probe"])
            .output()
            .unwrap();
        let logs = String::from_utf8_lossy(&output.stdout).into_owned();
        logs.contains("logged").then_some(logs)
    });
    assert!(!logs.contains("never-logged"), "{logs}");

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
}

#[test]
fn across_nodes_a_call_carries_the_callers_identity_and_a_node_speaks_only_for_its_own() {
    let cluster = Cluster::start(2, &[]);
    // The frontend on node-1, the catalog on node-2.
    let app_dir = temp_dir();
    let shop = Path::new(EXAMPLES_DIR).join("shop");
    let manifest = std::fs::read_to_string(shop.join("skiff.toml"))
        .unwrap()
        .replace("../target/", &format!("{}/target/", EXAMPLES_DIR))
        .replace(
            "[component.catalog]\n",
            "[component.catalog.placement]\nlabels = { zone = \"z2\" }\n[component.catalog]\n",
        )
        .replace(
            "[component.frontend]\n",
            "[component.frontend.placement]\nlabels = { zone = \"z1\" }\n[component.frontend]\n",
        );
    write_manifest(app_dir.path(), &manifest);
    cluster.cli(&["deploy", app_dir.path().to_str().unwrap(), "--wait"]);
    let node_1 = &cluster.nodes[0];
    let node_2 = &cluster.nodes[1];
    let (status, body) = wait_until(Duration::from_secs(30), "the shop to serve", || {
        let answer = get_with(&node_1.process.url, "/", "Host: shop\r\n");
        (answer.0 != 503).then_some(answer)
    });
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(FRONTEND_ID), "{body}");

    // One trace over both nodes.
    let frontend = node_1
        .process
        .wait_for_line(&["span", "callee=\"shop/frontend\""]);
    let trace = field(&frontend, "trace_id").to_string();
    let catalog = node_2
        .process
        .wait_for_line(&["span", "callee=\"shop/catalog\"", &trace]);
    assert_eq!(field(&catalog, "caller"), "shop/frontend", "{catalog}");
    assert_eq!(
        field(&catalog, "parent_id"),
        field(&frontend, "span_id"),
        "{catalog}\n{frontend}"
    );

    // Node-1, with its own certificate, calls node-2's mesh endpoint
    // directly: for the frontend it runs, it may; for the catalog it does
    // not run, it may not; and a forwarded ingress request may not reach
    // a component without a route.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let identity = saved_identity(&cluster, &node_1.name);
    let members = support::cluster::only(&saved_identity(&cluster, &node_2.name));
    let send = |caller: Option<&str>| {
        let caller = caller
            .map(|c| format!("skiff-caller: {c}\r\nskiff-hops: 1\r\n"))
            .unwrap_or_default();
        let request = format!(
            "GET /items HTTP/1.1\r\nhost: x\r\nskiff-app: shop\r\nskiff-component: catalog\r\n{caller}\r\n"
        );
        let tls = identity.client_config(&members).unwrap();
        tls::exchange(
            &runtime,
            &node_2.mesh,
            &node_2.name,
            tls,
            request.as_bytes(),
        )
        .answer
        .map(|(_, answer)| answer)
        .unwrap()
    };
    let allowed = send(Some(FRONTEND_ID));
    assert!(allowed.starts_with("HTTP/1.1 200"), "{allowed}");
    let impersonating = send(Some("spiffe://skiff/app/shop/component/catalog"));
    assert!(impersonating.starts_with("HTTP/1.1 403"), "{impersonating}");
    node_2
        .process
        .wait_for_line(&["mesh_bad_caller", "runs no replica of shop/catalog"]);
    let as_ingress = send(None);
    assert!(as_ingress.starts_with("HTTP/1.1 403"), "{as_ingress}");
}
