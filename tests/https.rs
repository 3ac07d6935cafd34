//! End-to-end tests of HTTPS ingress on a real control plane and real
//! nodes on loopback addresses: certificates given with `skiff cert add`
//! (and what it refuses), served by SNI on every node over HTTP/2 and
//! HTTP/1.1, redirects from plain HTTP; and certificates ordered from a
//! real ACME server (pebble), once for every node, and renewed.

mod support;

use skiff_test_guests::{ECHO, HELLO};
use std::path::Path;
use std::time::Duration;
use support::cluster::{Cluster, get_as_host};
use support::tls::{CertInfo, client_trusting, https_get, unix_now};
use support::{temp_dir, toml_path, wait_until, write_manifest};

/// A CA of the test's own, issuing certificates for app domains.
struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl TestCa {
    fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Skiff HTTPS test CA");
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa {
            issuer: rcgen::Issuer::new(params, key),
            pem,
        }
    }

    /// A certificate for `names` valid from `from` to `until` (Unix
    /// seconds), written to `dir` as `<file>.pem` and `<file>.key`;
    /// returns their paths.
    fn issue(&self, dir: &Path, file: &str, names: &[&str], from: i64, until: i64) -> [String; 2] {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_before = time::OffsetDateTime::from_unix_timestamp(from).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(until).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let cert_path = dir.join(format!("{file}.pem"));
        let key_path = dir.join(format!("{file}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        [cert_path, key_path].map(|p| p.to_str().unwrap().to_string())
    }
}

/// `skiff cert add DOMAIN --cert CERT --key KEY` args.
fn cert_add<'a>(domain: &'a str, [cert, key]: &'a [String; 2]) -> [&'a str; 7] {
    ["cert", "add", domain, "--cert", cert, "--key", key]
}

/// A cluster of one node serving HTTPS, and the CA of the certificate
/// for `domain` given to it.
fn one_node_serving(domain: &str) -> (Cluster, TestCa) {
    let cluster = https_cluster(1, &[]);
    let ca = TestCa::new();
    let certs = temp_dir();
    let now = unix_now();
    let issued = ca.issue(certs.path(), "cert", &[domain], now - 60, now + 86_400);
    cluster.cli(&cert_add(domain, &issued));
    (cluster, ca)
}

/// A cluster of `nodes` nodes, each also serving HTTPS on its own
/// loopback address; with the control plane's `server_args`.
fn https_cluster(nodes: usize, server_args: &[&str]) -> Cluster {
    let mut cluster = Cluster::start(0, server_args);
    for i in 1..=nodes {
        let https = format!("127.0.0.{}:0", i + 1);
        cluster.add_node_with(i, &["--https-listen", &https]);
    }
    cluster
}

/// Where node `i` (from 0) of `cluster` serves HTTPS, from its banner.
fn https_addr(cluster: &Cluster, i: usize) -> String {
    cluster.nodes[i]
        .process
        .banner
        .split(" and https://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the node prints its HTTPS address")
        .to_string()
}

/// An app `name` serving `source` on every path at `domains`, with
/// `extra` `[app]` lines.
fn domain_app(dir: &Path, name: &str, source: &str, domains: &[&str], extra: &str) -> String {
    let domains: Vec<String> = domains.iter().map(|d| format!("\"{d}\"")).collect();
    write_manifest(
        dir,
        &format!(
            "[app]\nname = \"{name}\"\ndomains = [{}]\n{extra}\n\
             [component.web]\nsource = {}\nroute = \"/...\"\nenv = {{ GREETING = \"{name}\" }}\n\
             [component.web.placement]\nmemory = \"64MiB\"\n",
            domains.join(", "),
            toml_path(source)
        ),
    );
    dir.to_str().unwrap().to_string()
}

/// The echoed request headers of an answer from the echo guest: what the
/// guest saw, as `name: value` lines, without those that say how the
/// request came (its trace) rather than what it was.
fn echoed(headers: &http::HeaderMap) -> Vec<String> {
    let mut seen: Vec<String> = headers
        .iter()
        .filter_map(|(name, value)| {
            let name = name.as_str().strip_prefix("echo-")?;
            (name != "header-traceparent")
                .then(|| format!("{name}: {}", value.to_str().unwrap_or("?")))
        })
        .collect();
    seen.sort();
    seen
}

/// The status of `GET /` over HTTP/1.1 on a connection opened for `sni`,
/// naming `host`.
fn https_get_as(
    addr: &str,
    sni: &str,
    host: &str,
    tls: std::sync::Arc<rustls::ClientConfig>,
) -> u16 {
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let exchange = support::tls::exchange(&runtime, addr, sni, tls, request.as_bytes());
    let (_, answer) = exchange.answer.unwrap();
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"))
}

// === Certificates given to the cluster ===

#[test]
fn given_certificates_are_checked_then_served_by_sni_on_every_node_over_http2_and_http1() {
    let cluster = https_cluster(2, &[]);
    let ca = TestCa::new();
    let certs = temp_dir();
    let now = unix_now();
    let year = 365 * 24 * 3600;
    let shop = ca.issue(
        certs.path(),
        "shop",
        &["shop.example.test"],
        now - 60,
        now + year,
    );
    let wild = ca.issue(certs.path(), "wild", &["*.blog.test"], now - 60, now + year);
    let expired = ca.issue(
        certs.path(),
        "old",
        &["shop.example.test"],
        now - 2 * year,
        now - year,
    );
    let soon = ca.issue(
        certs.path(),
        "soon",
        &["shop.example.test"],
        now - 60,
        now + 3600,
    );

    // What `skiff cert add` refuses, each with what was wrong.
    let refusals = [
        (
            "shop.example.test",
            &shop[0],
            &wild[1],
            "the key does not match the certificate",
        ),
        (
            "shop.example.test",
            &wild[0],
            &wild[1],
            "it is not valid for shop.example.test; it names *.blog.test",
        ),
        (
            "shop.example.test",
            &expired[0],
            &expired[1],
            "it expired on ",
        ),
        (
            "shop.example.test",
            &shop[1],
            &shop[1],
            "holds no certificate",
        ),
        ("Shop..test", &shop[0], &shop[1], "not a valid domain"),
    ];
    for (domain, cert, key, why) in refusals {
        let refused = cluster.cli_fails(&["cert", "add", domain, "--cert", cert, "--key", key]);
        assert!(refused.contains(why), "{domain} {cert} {key}: {refused}");
    }
    // One about to expire is taken, with the date.
    let (_, warned) = cluster.cli_with_stderr(&cert_add("shop.example.test", &soon));
    assert!(warned.contains("warning: it expires on "), "{warned}");
    assert!(
        warned.contains("no app lists shop.example.test"),
        "{warned}"
    );
    let (added, _) = cluster.cli_with_stderr(&cert_add("shop.example.test", &shop));
    assert!(
        added.contains(
            "certificate for shop.example.test replaced (issued by CN=Skiff HTTPS test CA"
        ),
        "{added}"
    );
    cluster.cli(&cert_add("*.blog.test", &wild));
    // The store holding the keys is the owner's alone.
    use std::os::unix::fs::PermissionsExt;
    let store = cluster.home().join("server/state.redb");
    let mode = std::fs::metadata(&store).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", store.display());

    // Two apps: one redirecting plain HTTP to HTTPS, one served on both.
    let (shop_dir, blog_dir, rival_dir) = (temp_dir(), temp_dir(), temp_dir());
    let shop_app = domain_app(
        shop_dir.path(),
        "shop",
        ECHO,
        &["shop.example.test"],
        "https_redirect = true",
    );
    let blog_app = domain_app(blog_dir.path(), "blog", HELLO, &["www.blog.test"], "");
    cluster.cli(&["deploy", &shop_app, "--wait"]);
    cluster.cli(&["deploy", &blog_app, "--wait"]);
    // A domain claimed by another app: refused, naming both.
    let rival = domain_app(rival_dir.path(), "rival", HELLO, &["shop.example.test"], "");
    let refused = cluster.cli_fails(&["deploy", &rival]);
    assert!(
        refused.contains("domain \"shop.example.test\" is claimed by app \"shop\"; app \"rival\" cannot claim it too"),
        "{refused}"
    );

    let listed = cluster.json(&["certs"]);
    let row = |domain: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["domain"] == domain)
            .unwrap_or_else(|| panic!("{domain} in {listed}"))
            .clone()
    };
    assert_eq!(
        row("shop.example.test")["apps"],
        serde_json::json!(["shop"])
    );
    assert_eq!(row("shop.example.test")["status"], "valid");
    assert_eq!(row("shop.example.test")["source"], "uploaded");
    assert_eq!(row("*.blog.test")["apps"], serde_json::json!(["blog"]));
    assert!(!listed.to_string().contains("PRIVATE KEY"), "{listed}");
    let table = cluster.cli(&["certs"]);
    assert!(table.contains("CN=Skiff HTTPS test CA"), "{table}");
    assert!(!table.contains("no node serves HTTPS"), "{table}");
    // `skiff nodes` says where each node serves HTTPS.
    let nodes = cluster.json(&["nodes"]);
    for i in 0..2 {
        let name = format!("node-{}", i + 1);
        let node = nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name.as_str())
            .unwrap();
        assert_eq!(node["https"], https_addr(&cluster, i).as_str(), "{nodes}");
    }

    for node in 0..2 {
        let addr = https_addr(&cluster, node);
        // SNI picks each app's certificate; HTTP/2 when the client offers
        // it, HTTP/1.1 when it offers only that.
        let h2 = client_trusting(&ca.pem, &[b"h2", b"http/1.1"]);
        let h1 = client_trusting(&ca.pem, &[b"http/1.1"]);
        let over_h2 = wait_until(
            Duration::from_secs(20),
            "the node to serve shop over HTTPS",
            || https_get(&addr, "shop.example.test", h2.clone(), "/orders?id=7").ok(),
        );
        assert_eq!(over_h2.version, http::Version::HTTP_2);
        assert_eq!(over_h2.status, 200, "{}", over_h2.body);
        assert_eq!(
            CertInfo::of(&over_h2.certificate),
            CertInfo::of_pem(&std::fs::read_to_string(&shop[0]).unwrap())
        );
        let over_h1 = https_get(&addr, "shop.example.test", h1.clone(), "/orders?id=7").unwrap();
        assert_eq!(over_h1.version, http::Version::HTTP_11);
        // The guest sees the same request either way, and that it came
        // over HTTPS.
        assert_eq!(echoed(&over_h2.headers), echoed(&over_h1.headers));
        assert!(
            echoed(&over_h1.headers).contains(&"header-x-forwarded-proto: https".to_string()),
            "{:?}",
            echoed(&over_h1.headers)
        );
        let blog = https_get(&addr, "www.blog.test", h2.clone(), "/").unwrap();
        assert_eq!(blog.body, "blog from Skiff!\n");
        assert_eq!(
            CertInfo::of(&blog.certificate),
            CertInfo::of_pem(&std::fs::read_to_string(&wild[0]).unwrap())
        );
        // A name the cluster has no certificate for, or no name at all
        // (an IP address sends no SNI): the handshake is refused, and no
        // other domain's certificate is shown.
        // Nor is another app reached under this one's certificate.
        let misdirected = https_get_as(&addr, "shop.example.test", "www.blog.test", h1.clone());
        assert_eq!(misdirected, 421);
        // A Host that is no text names no app: refused, not routed
        // among every app by path.
        let unreadable = https_get_as(
            &addr,
            "shop.example.test",
            "www.blog.test\u{ff}",
            h1.clone(),
        );
        assert_eq!(unreadable, 400);
        let unknown = https_get(&addr, "other.example.test", h2.clone(), "/").unwrap_err();
        assert!(unknown.contains("handshake"), "{unknown}");
        let ip = addr.split(':').next().unwrap();
        let nameless = https_get(&addr, ip, h2.clone(), "/").unwrap_err();
        assert!(nameless.contains("handshake"), "{nameless}");

        // Plain HTTP: shop asks for HTTPS, blog does not.
        let plain = &cluster.nodes[node].process.url;
        let port = addr.rsplit(':').next().unwrap();
        let (status, body) = get_as_host(plain, Some("shop.example.test"), "/a?b=c");
        assert_eq!(status, 308, "{body}");
        assert!(
            body.contains(&format!("https://shop.example.test:{port}/a?b=c")),
            "{body}"
        );
        let (status, body) = get_as_host(plain, Some("www.blog.test"), "/");
        assert_eq!((status, body.as_str()), (200, "blog from Skiff!\n"));
    }

    // Removed, it is served by no node from their next heartbeat.
    cluster.cli(&["cert", "rm", "*.blog.test"]);
    for node in 0..2 {
        let addr = https_addr(&cluster, node);
        let h2 = client_trusting(&ca.pem, &[b"h2"]);
        wait_until(
            Duration::from_secs(20),
            "the node to drop the certificate",
            || https_get(&addr, "www.blog.test", h2.clone(), "/").err(),
        );
    }
    let refused = cluster.cli_fails(&["cert", "rm", "*.blog.test"]);
    assert!(
        refused.contains("no certificate for \"*.blog.test\""),
        "{refused}"
    );
}

// === Certificates ordered from an ACME server ===

/// A cluster whose control plane orders certificates from `directory`
/// (with `acme_args`), serving app `shop` at shop.acme.test; its two
/// nodes' plain-HTTP ingress listens on `http_port` of 127.0.0.2 and .3
/// (where the ACME server checks challenges), HTTPS on a port of their
/// own.
fn acme_cluster(directory: &str, acme_args: &[&str], http_port: u16) -> Cluster {
    let mut args = vec!["--acme-directory", directory];
    args.extend_from_slice(acme_args);
    let mut cluster = Cluster::start(0, &args);
    for i in 1..=2 {
        let token = cluster.cli(&["join-token"]).trim().to_string();
        let listen = format!("127.0.0.{}:{http_port}", i + 1);
        let https = format!("127.0.0.{}:0", i + 1);
        let node = cluster.launch_node(
            &format!("node-{i}"),
            &[
                "--token",
                &token,
                "--listen",
                &listen,
                "--https-listen",
                &https,
            ],
        );
        cluster.nodes.push(node);
    }
    // `shop` at shop.acme.test, redirected to HTTPS once a node holds its
    // certificate.
    let dir = temp_dir();
    let app = domain_app(
        dir.path(),
        "shop",
        HELLO,
        &["shop.acme.test"],
        "https_redirect = true",
    );
    cluster.cli(&["deploy", &app, "--wait"]);
    cluster
}

/// `domain`'s row of `skiff certs -o json`.
fn cert_row(cluster: &Cluster, domain: &str) -> serde_json::Value {
    let listed = cluster.json(&["certs"]);
    listed
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["domain"] == domain)
        .unwrap_or_else(|| panic!("{domain} in {listed}"))
        .clone()
}

#[test]
fn a_domain_is_ordered_once_through_pebble_served_on_every_node_and_renewed() {
    let http_port = support::etcd::free_port();
    // Certificates live 40 s and are renewed 30 s before they expire.
    let pebble = support::acme::Pebble::start("127.0.0.2", http_port, 40);
    let roots = pebble.ca_roots.to_str().unwrap().to_string();
    let cluster = acme_cluster(
        &pebble.directory,
        &[
            "--acme-ca-roots",
            &roots,
            "--acme-renew-before",
            "30s",
            "--acme-email",
            "ops@example.test",
        ],
        http_port,
    );
    let ordered = wait_until(
        Duration::from_secs(60),
        "the certificate to be ordered",
        || {
            let row = cert_row(&cluster, "shop.acme.test");
            (row["source"] == "acme").then_some(row)
        },
    );
    assert!(
        ordered["issuer"].as_str().unwrap().contains("Pebble"),
        "{ordered}\n{}",
        pebble.log()
    );
    assert_eq!(ordered["apps"], serde_json::json!(["shop"]));

    // Both nodes serve the one certificate ordered.
    let issued_by = client_trusting(&pebble.issuing_roots(), &[b"h2", b"http/1.1"]);
    let served = |node: usize| {
        let addr = https_addr(&cluster, node);
        https_get(&addr, "shop.acme.test", issued_by.clone(), "/")
            .ok()
            .filter(|answer| answer.body == "shop from Skiff!\n")
            .map(|answer| CertInfo::of(&answer.certificate))
    };
    let first = wait_until(Duration::from_secs(20), "node-1 to serve it", || served(0));
    let on_two = wait_until(Duration::from_secs(20), "node-2 to serve it", || {
        served(1).filter(|cert| *cert == first)
    });
    assert_eq!(on_two, first);
    // Plain HTTP goes to HTTPS, now that the nodes hold a certificate.
    let (status, body) = get_as_host(&cluster.nodes[1].process.url, Some("shop.acme.test"), "/");
    assert_eq!(status, 308, "{body}");

    // Renewed before it expires: every node moves to the new one, and the
    // old one served until then.
    let renewed = wait_until(
        Duration::from_secs(60),
        "the certificate to be renewed",
        || {
            let (one, two) = (served(0)?, served(1)?);
            (one == two && one != first).then_some(one)
        },
    );
    assert!(renewed.not_after > first.not_after, "{renewed:?} {first:?}");
}

#[test]
fn an_acme_server_that_is_down_shows_why_in_certs_and_serving_goes_on() {
    let http_port = support::etcd::free_port();
    let directory = format!("https://127.0.0.1:{}/dir", support::etcd::free_port());
    let cluster = acme_cluster(&directory, &[], http_port);
    let failing = wait_until(Duration::from_secs(30), "the order to fail", || {
        let row = cert_row(&cluster, "shop.acme.test");
        (row["status"] == "order failing").then_some(row)
    });
    let error = failing["error"].as_str().unwrap();
    assert!(error.contains(&directory), "{failing}");
    assert!(
        failing["next_try_unix"].as_i64().unwrap() > unix_now(),
        "{failing}"
    );
    let table = cluster.cli(&["certs"]);
    assert!(
        table.contains("shop.acme.test: cannot make an account at the ACME server"),
        "{table}"
    );
    // No certificate yet: plain HTTP serves the app rather than redirect
    // to a handshake that must fail.
    let (status, body) = get_as_host(&cluster.nodes[0].process.url, Some("shop.acme.test"), "/");
    assert_eq!((status, body.as_str()), (200, "shop from Skiff!\n"));
}

// === Handshake floods ===

/// A TCP connection to `addr` from `source` (an address of 127/8).
fn connect_from(source: &str, addr: &str) -> std::net::TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        let stream = socket.connect(addr.parse().unwrap()).await.unwrap();
        stream.into_std().unwrap()
    })
}

/// Whether the node closed `stream` within `within` (rather than wait
/// for its client hello).
fn closed_within(stream: &mut std::net::TcpStream, within: Duration) -> bool {
    use std::io::Read;
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(within)).unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn a_flood_of_unfinished_handshakes_from_one_address_is_closed_at_the_door() {
    let (cluster, ca) = one_node_serving("flood.example.test");
    let dir = temp_dir();
    let app = domain_app(dir.path(), "flood", HELLO, &["flood.example.test"], "");
    cluster.cli(&["deploy", &app, "--wait"]);
    let addr = https_addr(&cluster, 0);
    let tls = client_trusting(&ca.pem, &[b"h2", b"http/1.1"]);
    wait_until(Duration::from_secs(20), "HTTPS to serve", || {
        https_get(&addr, "flood.example.test", tls.clone(), "/").ok()
    });

    // 64 connections from one address that never send a client hello
    // take that address's places; the next is closed at once.
    let mut stalled: Vec<_> = (0..64).map(|_| connect_from("127.0.0.10", &addr)).collect();
    let mut extra = connect_from("127.0.0.10", &addr);
    assert!(closed_within(&mut extra, Duration::from_secs(5)));
    // Those waiting are not closed before their 10 s are up...
    assert!(!closed_within(&mut stalled[0], Duration::from_millis(500)));
    // ...and a client from elsewhere is served meanwhile.
    let served = https_get(&addr, "flood.example.test", tls.clone(), "/").unwrap();
    assert_eq!(served.body, "flood from Skiff!\n");
    // The places come back when the stalled connections go.
    drop(stalled);
    wait_until(
        Duration::from_secs(10),
        "the address's places to come back",
        || {
            let mut again = connect_from("127.0.0.10", &addr);
            (!closed_within(&mut again, Duration::from_millis(500))).then_some(())
        },
    );
}

#[test]
fn connections_from_one_address_are_capped_and_idle_ones_closed() {
    let (cluster, ca) = one_node_serving("idle.example.test");
    let addr = https_addr(&cluster, 0);
    let tls = client_trusting(&ca.pem, &[b"h2"]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let open = |source: &str| {
        runtime.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
            let tcp = socket.connect(addr.parse().unwrap()).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("idle.example.test").unwrap();
            tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name, tcp)
                .await
        })
    };
    wait_until(
        Duration::from_secs(20),
        "the node to hold the certificate",
        || open("127.0.0.11").ok(),
    );
    // Handshaken connections that send nothing still count: 256 from one
    // address, then the next is closed at once, handshake and all.
    let idle: Vec<_> = (0..256).map(|_| open("127.0.0.12").unwrap()).collect();
    assert!(
        open("127.0.0.12").is_err(),
        "a 257th connection from one address"
    );
    assert!(open("127.0.0.13").is_ok(), "another address is served");
    drop(idle);
    // One that never sends its HTTP/2 preface is closed after 10 s.
    let mut silent = open("127.0.0.14").unwrap();
    let started = std::time::Instant::now();
    let read = runtime.block_on(async {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 4096];
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match silent.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {} // the server's SETTINGS, pings
                }
            }
        })
        .await
    });
    assert!(read.is_ok(), "an idle HTTP/2 connection stays open");
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
