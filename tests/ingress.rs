//! End-to-end tests of ingress on a real control plane and real nodes on
//! loopback addresses: which app a request goes to (the first label of
//! `Host`, else the app whose routes match best) and the warning when two
//! apps share a route; forwarding over the mesh when a node holding a
//! replica cannot be reached.

mod support;

use skiff_test_guests::{ECHO, HELLO};
use support::cluster::{Cluster, app, get_as_host, nodes_of};
use support::{get, http, temp_dir, toml_path, write_manifest};

// === Which app a request goes to ===

#[test]
fn the_host_header_names_the_app_and_a_shared_route_is_warned_about() {
    let cluster = Cluster::start(2, &[]);
    let (shop, blog, api) = (temp_dir(), temp_dir(), temp_dir());
    let shop = app(shop.path(), "shop", HELLO, 1, "GREETING = \"shop\"");
    let blog = app(blog.path(), "blog", HELLO, 1, "GREETING = \"blog\"");
    let (_, quiet) = cluster.cli_with_stderr(&["deploy", &shop, "--wait"]);
    assert!(!quiet.contains("warning"), "{quiet}");

    // "blog" serves "/..." too: each deploy of either app says so, and
    // names the app ingress picks when `Host` names neither.
    let (_, warned) = cluster.cli_with_stderr(&["deploy", &blog, "--wait"]);
    assert!(
        warned.contains(
            "warning: route \"/...\" of blog/web is also served by app \"shop\": ingress picks \
             the app named by the Host header (<app>.<domain> or <app>), else \"blog\"\n"
        ),
        "{warned}"
    );
    let (again, warned) = cluster.cli_with_stderr(&["deploy", &shop]);
    assert!(again.contains("unchanged"), "{again}");
    assert!(
        warned.contains(
            "warning: route \"/...\" of shop/web is also served by app \"blog\": ingress picks \
             the app named by the Host header (<app>.<domain> or <app>), else \"blog\"\n"
        ),
        "{warned}"
    );

    // "api" serves a longer route of its own: no warning.
    write_manifest(
        api.path(),
        &format!(
            "[app]\nname = \"api\"\n\
             [component.web]\nsource = {}\nroute = \"/api/...\"\nenv = {{ GREETING = \"api\" }}\n\
             [component.web.placement]\nmemory = \"64MiB\"\n",
            toml_path(HELLO)
        ),
    );
    let (_, quiet) = cluster.cli_with_stderr(&["deploy", api.path().to_str().unwrap(), "--wait"]);
    assert!(!quiet.contains("warning"), "{quiet}");
    for name in ["shop", "blog", "api"] {
        cluster.wait_running(name, 1);
        cluster.wait_known_everywhere(name, 1);
    }

    let greeting = |who: &str| (200, format!("{who} from Skiff!\n"));
    let cases = [
        (Some("shop.example.com"), "/", greeting("shop")),
        (Some("shop"), "/", greeting("shop")),
        (Some("SHOP.Example.COM:3000"), "/", greeting("shop")),
        (Some("blog.example.com"), "/", greeting("blog")),
        (Some("blog:8080"), "/anything", greeting("blog")),
        // No app of that name: the routes decide, and on a tie the app
        // the warning named.
        (Some("other.example.com"), "/", greeting("blog")),
        (Some("shopping.example.com"), "/", greeting("blog")),
        (None, "/", greeting("blog")),
        (Some("other.example.com"), "/api/x", greeting("api")),
        (None, "/api/x", greeting("api")),
        // The app `Host` names serves the request, even where another's
        // route matches the path better.
        (Some("shop.example.com"), "/api/x", greeting("shop")),
        (Some("blog"), "/api/x", greeting("blog")),
        // The app named has no route for the path: it says so.
        (
            Some("api.example.com"),
            "/",
            (404, "app \"api\" has no route for /\n".to_string()),
        ),
    ];
    // On each node: one holds a replica of some apps and forwards the
    // others over the mesh.
    for node in &cluster.nodes {
        for (host, path, expected) in &cases {
            assert_eq!(
                get_as_host(&node.process.url, *host, path),
                *expected,
                "Host {host:?}, path {path:?}, via {}",
                node.name
            );
        }
    }
}

// === Forwarding past a node that cannot be reached ===

/// Lines of `stderr` where forwarding to `node` failed with `cause`.
fn forwarding_failures(stderr: &str, node: &str, cause: &str) -> usize {
    stderr
        .lines()
        .filter(|line| {
            line.contains("forwarding failed") && line.contains(cause) && line.contains(node)
        })
        .count()
}

#[test]
fn a_request_without_a_body_moves_on_when_a_node_cannot_be_reached() {
    // A node is marked down only after 60 s (30 s once its heartbeat
    // connection breaks): until then, every node keeps forwarding to the
    // dead one's endpoint, as it would before any control plane noticed.
    let mut cluster = Cluster::start(3, &["--down-after", "60s"]);
    let dir = temp_dir();
    cluster.cli(&["deploy", &app(dir.path(), "echo", ECHO, 2, ""), "--wait"]);
    let replicas = cluster.wait_running("echo", 2);
    let holders = nodes_of(&replicas);
    assert_eq!(holders.len(), 2, "one replica per node: {replicas:?}");
    let forwarder = cluster
        .nodes
        .iter()
        .position(|n| !holders.contains(&n.name))
        .unwrap();
    let forwarder_name = cluster.nodes[forwarder].name.clone();
    cluster.wait_known_everywhere("echo", 2);

    // One holder freezes (SIGSTOP): its kernel still completes TCP
    // handshakes, but TLS never answers. Then it dies. Neither time has
    // the control plane noticed.
    let dead = holders[0].clone();
    let dead_index = cluster.nodes.iter().position(|n| n.name == dead).unwrap();
    let forwarder_at = cluster.nodes[forwarder].process.at("/get");
    let every_get_answered = |cluster: &Cluster, how: &str, cause: &str| {
        // Every GET is answered by the other replica, including those
        // whose first choice was the node that cannot be reached.
        let stderr = || cluster.nodes[forwarder].process.stderr();
        let mut gets = 0;
        while forwarding_failures(&stderr(), &dead, cause) == 0 {
            gets += 1;
            assert!(gets <= 40, "no GET was first sent to {dead} ({how})");
            let (status, body) = get(&forwarder_at);
            assert_eq!(
                status, 200,
                "GET {gets} via {forwarder_name}, {how}: {body}"
            );
        }
        for _ in 0..3 {
            let (status, body) = get(&forwarder_at);
            assert_eq!(status, 200, "GET via {forwarder_name}, {how}: {body}");
        }
    };
    cluster.nodes[dead_index].process.signal("STOP");
    every_get_answered(&cluster, "frozen", "no TLS connection within 5s");
    cluster.nodes[dead_index].process.kill();
    every_get_answered(&cluster, "killed", "Connection refused");
    let forwarder = &cluster.nodes[forwarder].process;

    // Five failures in a row leave the dead replica out of forwarding
    // (outlier ejection): after that, GETs go to the live one first, and
    // no more fail there.
    let ejected = |forwarder: &support::Running| {
        forwarder
            .stderr()
            .lines()
            .any(|l| l.contains("outlier_ejected") && l.contains(&dead))
    };
    let mut gets = 0;
    while !ejected(forwarder) {
        gets += 1;
        assert!(gets <= 60, "the dead replica was never ejected");
        assert_eq!(get(&forwarder_at).0, 200);
    }
    let failures = forwarding_failures(&forwarder.stderr(), &dead, "Connection refused");
    for _ in 0..20 {
        assert_eq!(get(&forwarder_at).0, 200);
    }
    assert_eq!(
        forwarding_failures(&forwarder.stderr(), &dead, "Connection refused"),
        failures,
        "an ejected replica is not tried first"
    );
    // Once the ejection (10 s) lapses, it is tried again.
    std::thread::sleep(std::time::Duration::from_millis(10_500));

    // A request with a body is sent once: when its node cannot be
    // reached, the client gets 502 saying what kind of failure it was, but
    // not which node (the forwarding node's log says).
    let mut posts = 0;
    let refused = loop {
        posts += 1;
        assert!(posts <= 40, "no POST was first sent to {dead}");
        let mut response = http()
            .post(&forwarder.at("/post"))
            .send("the body")
            .expect("POST failed");
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string().unwrap();
        match status {
            200 => assert_eq!(body, "the body", "echoed by the live replica"),
            502 => break body,
            _ => panic!("POST {posts} via {forwarder_name}: {status} {body}"),
        }
    };
    assert!(
        refused.starts_with("app \"echo\" component \"web\": no replica could be reached (")
            && refused.contains("Connection refused")
            && !refused.contains(&dead),
        "{refused}"
    );
}
