//! End-to-end tests of the control plane under abuse and damage: a flood
//! of slow connections, uploaded packages no app uses, a damaged state
//! store, a corrupted blob nodes must refuse, and the modes of the secrets
//! it keeps on disk. Real `skiff server` processes on loopback addresses.

mod support;

use bytes::Bytes;
use serde_json::Value;
use skiff_orchestrator::api_client::ApiClient;
use skiff_orchestrator::mesh::NodeIdentity;
use skiff_runtime::package::{Digest, Store};
use skiff_test_guests::HELLO;
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};
use support::cluster::one_at_a_time;
use support::{Running, skiff, start_server, temp_dir, toml_path, wait_until, write_manifest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Runs `skiff ARGS`, expecting success; returns stdout.
fn cli(home: &Path, args: &[&str]) -> String {
    let output = skiff(home).args(args).output().expect("running skiff");
    assert!(
        output.status.success(),
        "skiff {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn json(home: &Path, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&cli(home, &all)).expect("JSON output")
}

fn ca_pem(home: &Path) -> String {
    std::fs::read_to_string(home.join("server/ca.pem")).unwrap()
}

fn admin_client(home: &Path, api: &str) -> ApiClient {
    let tls = skiff_orchestrator::mesh::tls::client_trusting(&ca_pem(home)).unwrap();
    let token = std::fs::read_to_string(home.join("server/admin-token")).unwrap();
    ApiClient::new(api, tls, Some(token.trim().to_string()))
}

/// An app `name` at `version` running hello on `route`.
fn hello_app(dir: &Path, name: &str, version: &str, route: &str) -> String {
    write_manifest(
        dir,
        &format!(
            "[app]\nname = \"{name}\"\nversion = \"{version}\"\n\
             [component.web]\nsource = {}\nroute = \"{route}\"\n\
             [component.web.placement]\nmemory = \"64MiB\"\n",
            toml_path(HELLO)
        ),
    );
    dir.to_str().unwrap().to_string()
}

// === A flood of slow connections ===

/// Opens a TLS connection to `api` from `from` and sends the head of a
/// join announcing `length` body bytes, and then only a few of them.
/// `None` when the server closed the connection before the handshake.
async fn slow_join(
    api: SocketAddr,
    from: IpAddr,
    tls: TlsConnector,
    length: usize,
) -> Option<TlsStream<TcpStream>> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(from, 0)).ok()?;
    let tcp = socket.connect(api).await.ok()?;
    let name = rustls::pki_types::ServerName::IpAddress(api.ip().into());
    let mut stream = tokio::time::timeout(Duration::from_secs(20), tls.connect(name, tcp))
        .await
        .ok()?
        .ok()?;
    let head = format!(
        "POST /v1/join HTTP/1.1\r\nHost: {api}\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\n\r\n{{\"token\": \"skt1."
    );
    stream.write_all(head.as_bytes()).await.ok()?;
    stream.flush().await.ok()?;
    Some(stream)
}

/// Opens `count` slow joins from `from` at once; the ones the server took.
async fn flood(
    api: SocketAddr,
    from: IpAddr,
    tls: &TlsConnector,
    count: usize,
) -> Vec<TlsStream<TcpStream>> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..count {
        set.spawn(slow_join(api, from, tls.clone(), 60_000));
    }
    let mut held = Vec::new();
    while let Some(joined) = set.join_next().await {
        held.extend(joined.unwrap());
    }
    held
}

/// What the server answers on `stream`, read until it closes it.
async fn answer(mut stream: TlsStream<TcpStream>) -> String {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[test]
fn a_flood_of_slow_connections_is_bounded_and_cut_off() {
    let _serial = one_at_a_time();
    let home = temp_dir();
    let server = start_server(
        home.path(),
        "127.0.0.1:0",
        &[
            "--max-connections",
            "48",
            "--max-connections-per-ip",
            "16",
            "--body-timeout",
            "5s",
        ],
    );
    let api: SocketAddr = server.url.trim_start_matches("https://").parse().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let tls = TlsConnector::from(
        skiff_orchestrator::mesh::tls::client_trusting(&ca_pem(home.path())).unwrap(),
    );
    let local: IpAddr = "127.0.0.1".parse().unwrap();
    let health = || {
        runtime
            .block_on(admin_client(home.path(), &server.url).get::<Value>("/v1/health"))
            .map(|v| v["ok"] == true)
            .unwrap_or(false)
    };

    // A join announcing 16 MB is refused before a byte of it is read.
    let started = Instant::now();
    let big = runtime
        .block_on(slow_join(api, local, tls.clone(), 16_000_000))
        .expect("the server takes one connection");
    let refused = runtime.block_on(answer(big));
    assert!(refused.starts_with("HTTP/1.1 413"), "{refused}");
    assert!(
        refused.contains("over the limit of 65536 bytes"),
        "{refused}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once"
    );

    // 300 slow joins from one address: only 16 are held, the rest are
    // closed at once.
    let flooder: IpAddr = "127.0.0.2".parse().unwrap();
    let started = Instant::now();
    let held = runtime.block_on(flood(api, flooder, &tls, 300));
    // Exactly 16 while all are open at once; a few more if the machine was
    // so slow that the first were already cut off.
    assert!(
        (16..=32).contains(&held.len()),
        "{} of 300 slow connections held",
        held.len()
    );
    server.wait_for_stderr("API connection limit reached");

    // The API still answers everyone else, the CLI included.
    assert!(health(), "/v1/health answers during the flood");
    let apps = cli(home.path(), &["apps", "-o", "json"]);
    assert_eq!(apps.trim(), "[]");

    // The slow bodies are cut off after the deadline, with a 408.
    let answers = runtime.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for stream in held {
            set.spawn(answer(stream));
        }
        set.join_all().await
    });
    let elapsed = started.elapsed();
    for answer in &answers {
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("did not arrive within 5s"), "{answer}");
    }
    assert!(
        elapsed >= Duration::from_secs(4),
        "cut after the deadline, {elapsed:?}"
    );

    // From many addresses, the total holds: 48 slow joins fill it, the
    // next connection is closed at once, and once they are cut off the
    // API answers again.
    let held: Vec<_> = runtime.block_on(async {
        let mut all = Vec::new();
        // Three addresses of 16 fill it, unless a closed connection of
        // the checks above is still being let go.
        for i in 3..=9 {
            if all.len() == 48 {
                break;
            }
            let from: IpAddr = format!("127.0.0.{i}").parse().unwrap();
            all.extend(flood(api, from, &tls, 16.min(48 - all.len())).await);
        }
        all
    });
    assert_eq!(held.len(), 48, "the total is reached");
    assert!(
        runtime
            .block_on(slow_join(api, local, tls.clone(), 10))
            .is_none(),
        "a connection over the total is closed at once"
    );
    wait_until(Duration::from_secs(60), "the API to answer again", || {
        health().then_some(())
    });
    drop(held);
}

// === Collecting packages no app uses ===

/// The blobs of package `digest` in the client's local store.
fn blobs_of(home: &Path, digest: &str) -> BTreeSet<String> {
    let store = Store::open(&home.join("store")).unwrap();
    let digest: Digest = digest.parse().unwrap();
    let manifest = store.manifest(&digest).unwrap();
    std::iter::once(&digest)
        .chain(std::iter::once(&manifest.config.digest))
        .chain(manifest.layers.iter().map(|l| &l.digest))
        .map(|d| d.hex().to_string())
        .collect()
}

/// Every file in the server's package store's blob directory.
fn server_blobs(home: &Path) -> BTreeSet<String> {
    std::fs::read_dir(home.join("server/packages/blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn package_of(home: &Path, app: &str) -> String {
    support::cluster::package_in(&json(home, &["apps"]), app)
}

#[test]
fn packages_no_app_uses_nor_may_roll_back_to_are_collected_after_a_grace_period() {
    let _serial = one_at_a_time();
    let home = temp_dir();
    let server = start_server(home.path(), "127.0.0.1:0", &["--package-grace", "3s"]);
    let app_dir = temp_dir();

    hello_app(app_dir.path(), "shop", "1.0.0", "/...");
    cli(home.path(), &["deploy", app_dir.path().to_str().unwrap()]);
    let v1 = blobs_of(home.path(), &package_of(home.path(), "shop"));
    assert_eq!(server_blobs(home.path()), v1);

    hello_app(app_dir.path(), "shop", "2.0.0", "/...");
    cli(home.path(), &["deploy", app_dir.path().to_str().unwrap()]);
    let v2 = blobs_of(home.path(), &package_of(home.path(), "shop"));
    assert_ne!(v1, v2);
    // An upload of a deploy still in progress: nothing declares it yet.
    let stray = b"a blob a deploy in progress uploaded".to_vec();
    let stray_digest = Digest::of(&stray);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime
        .block_on(admin_client(home.path(), &server.url).send(
            http::Method::PUT,
            &format!("/v1/blobs/{stray_digest}"),
            Some((Bytes::from(stray), "application/octet-stream")),
            Duration::from_secs(30),
        ))
        .unwrap();
    // Within the grace period, nothing goes.
    let all = server_blobs(home.path());
    assert!(all.is_superset(&v1) && all.is_superset(&v2), "{all:?}");
    assert!(all.contains(stray_digest.hex()));

    // After it, exactly what the app runs now and the version before it
    // (kept for `skiff rollback`) are kept.
    let kept: BTreeSet<String> = v1.union(&v2).cloned().collect();
    wait_until(Duration::from_secs(60), "the stray blob to go", || {
        (server_blobs(home.path()) == kept).then_some(())
    });
    server.wait_for_stderr("uploaded blob(s) that no app uses");

    cli(home.path(), &["delete", "shop"]);
    wait_until(Duration::from_secs(60), "every blob of shop to go", || {
        server_blobs(home.path()).is_empty().then_some(())
    });
}

// === A damaged store ===

#[test]
fn a_damaged_record_or_package_does_not_stop_the_control_plane() {
    let _serial = one_at_a_time();
    let home = temp_dir();
    // A fixed address, so the node finds the control plane after its
    // restart.
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let server = start_server(home.path(), &listen, &[]);
    let token = cli(home.path(), &["join-token"]).trim().to_string();
    let node = Running::launch(
        home.path(),
        &[
            "node",
            "--server",
            &server.url,
            "--name",
            "node-1",
            "--capacity",
            "1GiB",
            "--token",
            &token,
            "--listen",
            "127.0.0.2:0",
        ],
        "serving ingress on ",
    );
    let good = temp_dir();
    let broken = temp_dir();
    hello_app(good.path(), "good", "1.0.0", "/...");
    hello_app(broken.path(), "broken", "1.0.0", "/broken/...");
    for dir in [&good, &broken] {
        cli(
            home.path(),
            &["deploy", dir.path().to_str().unwrap(), "--wait"],
        );
    }
    let broken_package = package_of(home.path(), "broken");
    server.terminate();

    // While it is stopped: a record that is not JSON in the apps table,
    // and the locked manifest of "broken" damaged on disk.
    {
        let db = redb::Database::create(home.path().join("server/state.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let apps: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("apps");
            let mut apps = tx.open_table(apps).unwrap();
            apps.insert("ghost", b"{\"name\": \"gho".as_slice())
                .unwrap();
        }
        tx.commit().unwrap();
    }
    let store = Store::open(&home.path().join("store")).unwrap();
    let config = store
        .manifest(&broken_package.parse().unwrap())
        .unwrap()
        .config
        .digest;
    std::fs::write(
        home.path()
            .join("server/packages/blobs/sha256")
            .join(config.hex()),
        b"damaged",
    )
    .unwrap();

    let server = start_server(home.path(), &listen, &[]);
    let stderr = server.wait_for_stderr("the apps record \"ghost\" is damaged");
    assert!(
        stderr.contains("moved to the \"quarantine\" table"),
        "{stderr}"
    );
    assert!(stderr.contains("deploy the app again"), "{stderr}");

    // The other apps are served; the broken one keeps its replica and
    // says why it cannot be read.
    let apps = wait_until(Duration::from_secs(30), "good to run again", || {
        let apps = json(home.path(), &["apps"]);
        let good = apps.as_array()?.iter().find(|a| a["name"] == "good")?;
        (good["components"][0]["running"] == 1).then_some(apps)
    });
    let names: Vec<&str> = apps
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["broken", "good"]);
    let error = apps[0]["error"].as_str().unwrap();
    assert!(error.contains("cannot read the app's package"), "{error}");
    assert!(error.contains(config.as_str()), "{error}");
    let listing = cli(home.path(), &["apps"]);
    assert!(
        listing.contains("app \"broken\": the control plane cannot read"),
        "{listing}"
    );
    let ps = json(home.path(), &["ps", "broken"]);
    assert_eq!(ps[0]["node"], "node-1", "{ps}");
    assert!(
        ps[0]["reason"].as_str().unwrap().contains("cannot be read"),
        "{ps}"
    );
    let (status, body) = support::get(&format!("{}/", node.url));
    assert_eq!(status, 200, "{body}");

    // Deploying it again repairs it.
    cli(home.path(), &["deploy", broken.path().to_str().unwrap()]);
    let apps = json(home.path(), &["apps"]);
    assert!(apps[0].get("error").is_none(), "{apps}");
    drop(node);
}

// === A corrupted blob in the control plane's store ===

/// Joins node `name` on 127.0.0.2 to the control plane at `server`.
fn start_node(home: &Path, server: &str, name: &str) -> Running {
    let token = cli(home, &["join-token"]).trim().to_string();
    Running::launch(
        home,
        &[
            "node",
            "--server",
            server,
            "--name",
            name,
            "--capacity",
            "1GiB",
            "--token",
            &token,
            "--listen",
            "127.0.0.2:0",
        ],
        "serving ingress on ",
    )
}

#[test]
fn a_node_refuses_a_blob_the_control_plane_holds_corrupted() {
    let _serial = one_at_a_time();
    let home = temp_dir();
    let server = start_server(home.path(), "127.0.0.1:0", &[]);
    // No node yet: the package waits in the control plane's store.
    let app_dir = temp_dir();
    hello_app(app_dir.path(), "shop", "1.0.0", "/...");
    cli(home.path(), &["deploy", app_dir.path().to_str().unwrap()]);
    let package: Digest = package_of(home.path(), "shop").parse().unwrap();
    let layer = Store::open(&home.path().join("store"))
        .unwrap()
        .manifest(&package)
        .unwrap()
        .layers
        .into_iter()
        .find(|l| l.media_type == "application/wasm")
        .expect("the component's layer");

    // Its component, damaged on the control plane's disk: same size,
    // one byte flipped.
    let on_disk = home
        .path()
        .join("server/packages/blobs/sha256")
        .join(layer.digest.hex());
    let original = std::fs::read(&on_disk).unwrap();
    let mut corrupted = original.clone();
    let middle = corrupted.len() / 2;
    corrupted[middle] ^= 0xff;
    std::fs::write(&on_disk, &corrupted).unwrap();
    let refusal = format!(
        "refused blob {} from the control plane: what arrived hashes to {}, so the control plane's copy (or the transfer) is corrupt; nothing was stored",
        layer.digest,
        Digest::of(&corrupted)
    );

    // The node that is assigned the replica refuses the blob, says why,
    // stores nothing and runs nothing.
    let node = start_node(home.path(), &server.url, "node-1");
    let failed = wait_until(Duration::from_secs(30), "the replica to fail", || {
        let ps = json(home.path(), &["ps", "shop"]);
        let replica = ps.as_array()?.first()?.clone();
        (replica["state"] == "failed").then_some(replica)
    });
    let reason = failed["reason"].as_str().unwrap();
    assert!(reason.starts_with(&refusal), "{reason}");
    let logged = node.wait_for_stderr("replica failed to load");
    assert!(logged.contains(&refusal), "{logged}");
    let node_store = home.path().join("node-node-1/packages/blobs/sha256");
    assert!(!node_store.join(layer.digest.hex()).exists());
    let (status, body) = support::get(&format!("{}/", node.url));
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no running replica"), "{body}");

    // Repaired on the control plane, it is fetched and run at the next
    // attempt.
    std::fs::write(&on_disk, &original).unwrap();
    wait_until(Duration::from_secs(60), "the replica to run", || {
        let ps = json(home.path(), &["ps", "shop"]);
        (ps[0]["state"] == "running").then_some(())
    });
    assert!(node_store.join(layer.digest.hex()).exists());
    assert_eq!(
        support::get(&format!("{}/", node.url)),
        (200, "Hello from Skiff!\n".to_string())
    );
}

// === Secrets on disk ===

#[test]
fn secrets_on_disk_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let _serial = one_at_a_time();
    let home = temp_dir();
    let server = start_server(home.path(), "127.0.0.1:0", &[]);
    let _node = start_node(home.path(), &server.url, "node-1");
    let token = std::fs::read_to_string(home.path().join("server/admin-token")).unwrap();
    let secrets = [
        ("server/admin-token", "the admin token", token.trim()),
        ("server/ca.key", "the cluster CA's key", "PRIVATE KEY"),
        (
            "cluster.json",
            "the CLI's copy of the admin token",
            token.trim(),
        ),
        ("node-node-1/node.pem", "the node's key", "PRIVATE KEY"),
        ("cache/key", "the compile cache's sealing key", ""),
    ];
    for (file, what, holds) in secrets {
        let path = home.path().join(file);
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.is_empty() && String::from_utf8_lossy(&bytes).contains(holds),
            "{file} holds {what}"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{what}: {file} has mode {mode:o}");
    }
}

/// A node with news while its heartbeat is held asks for the answer with
/// `POST /v1/node/news` and gets it at once, on the same connection,
/// rather than at the end of the heartbeat interval; a node starting
/// thousands of replicas has news every few milliseconds and must still
/// be heard. Without news, the heartbeat is held.
#[test]
fn news_answers_a_held_heartbeat_at_once() {
    let _serial = one_at_a_time();
    let home = temp_dir();
    let server = start_server(
        home.path(),
        "127.0.0.1:0",
        &["--heartbeat", "20s", "--down-after", "60s"],
    );
    let api = server.url.clone();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let node = join_by_api(&runtime, home.path(), &api, "node-1");
    let heartbeat = |version: u64, epoch: u64, seq: Option<u64>| {
        serde_json::json!({
            "version": version, "epoch": epoch, "memory": 1u64 << 30,
            "ingress": "127.0.0.2:1", "mesh": "127.0.0.2:2",
            "status_run": 1, "status_seq": 1, "status_base": seq,
            "components": [], "logs_first_seq": 0, "logs": []
        })
    };
    // Each heartbeat: answered at once while the node is behind (a first
    // heartbeat, a version moved); once it is up to date both ways, held,
    // and then news is told half a second in.
    let sync = |version: u64, epoch: u64, seq: Option<u64>| -> (Value, bool, Duration) {
        runtime.block_on(async {
            let body = heartbeat(version, epoch, seq);
            let call = node.call::<_, Value>(
                http::Method::POST,
                "/v1/node/sync",
                &body,
                Duration::from_secs(60),
            );
            let mut call = std::pin::pin!(call);
            let started = Instant::now();
            tokio::select! {
                answer = &mut call => (answer.unwrap(), false, started.elapsed()),
                () = tokio::time::sleep(Duration::from_millis(500)) => {
                    node.send(
                        http::Method::POST,
                        "/v1/node/news",
                        None,
                        Duration::from_secs(10),
                    )
                    .await
                    .expect("the control plane takes news from a member");
                    (call.await.unwrap(), true, started.elapsed())
                }
            }
        })
    };
    let (mut version, mut epoch, mut seq) = (0, 0, None);
    let mut held = None;
    for _ in 0..5 {
        let (answer, told, took) = sync(version, epoch, seq);
        version = answer["version"].as_u64().unwrap();
        epoch = answer["epoch"].as_u64().unwrap();
        seq = answer["status_seq"].as_u64();
        if told {
            held = Some((answer, took));
            break;
        }
    }
    let (answer, took) = held.expect("a heartbeat up to date both ways is held");
    assert_eq!(seq, Some(1), "the control plane holds the node's status");
    assert!(answer["desired"].is_null(), "nothing changed: {answer}");
    assert!(
        took < Duration::from_secs(10),
        "answered at the news, not after the 20 s heartbeat interval: {took:?}"
    );

    // News from a certificate the cluster did not sign is not taken.
    let stranger = ApiClient::new(
        &api,
        skiff_orchestrator::mesh::tls::client_trusting(&ca_pem(home.path())).unwrap(),
        None,
    );
    let refused = runtime
        .block_on(stranger.send(
            http::Method::POST,
            "/v1/node/news",
            None,
            Duration::from_secs(10),
        ))
        .unwrap_err();
    assert_eq!(refused.status(), Some(http::StatusCode::UNAUTHORIZED));
}

/// Joins a node named `name` through the API alone, as a compromised
/// node's owner could: the node's API client.
fn join_by_api(runtime: &tokio::runtime::Runtime, home: &Path, api: &str, name: &str) -> ApiClient {
    let token = cli(home, &["join-token"]).trim().to_string();
    let pin = token.split('.').nth(1).unwrap();
    let joining = ApiClient::new(
        api,
        skiff_orchestrator::mesh::tls::client_pinned(pin).unwrap(),
        None,
    );
    let (key, csr) = NodeIdentity::request().unwrap();
    let joined: Value = runtime
        .block_on(joining.post(
            "/v1/join",
            &serde_json::json!({
                "token": token, "name": name, "csr_pem": csr, "memory": 1u64 << 30
            }),
        ))
        .unwrap();
    let identity = NodeIdentity::new(
        key,
        joined["cert_pem"].as_str().unwrap().to_string(),
        joined["ca_pem"].as_str().unwrap().to_string(),
    );
    ApiClient::new(api, identity.control_plane_client_config().unwrap(), None)
}

#[test]
fn a_node_that_never_starts_its_replica_loses_it_to_a_node_that_does() {
    let _serial = one_at_a_time();
    let home = temp_dir();
    let server = start_server(home.path(), "127.0.0.1:0", &[]);
    let api = server.url.clone();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // A compromised node: it heartbeats, and says every replica it is
    // given failed to start.
    let evil = join_by_api(&runtime, home.path(), &api, "evil");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let heartbeats = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            let (mut version, mut epoch, mut seq) = (0u64, 0u64, 1u64);
            let mut assigned: BTreeSet<(String, String, String)> = BTreeSet::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                seq += 1;
                let components: Vec<Value> = assigned
                    .iter()
                    .map(|(app, component, package)| {
                        serde_json::json!({
                            "app": app, "component": component, "package": package,
                            "state": "failed", "error": "never started"
                        })
                    })
                    .collect();
                let body = serde_json::json!({
                    "version": version, "epoch": epoch, "memory": 1u64 << 30,
                    "ingress": "127.0.0.9:1", "mesh": "127.0.0.9:2",
                    "status_run": 1, "status_seq": seq, "status_base": null,
                    "components": components, "logs_first_seq": 0, "logs": []
                });
                let Ok(answer) = runtime.block_on(evil.call::<_, Value>(
                    http::Method::POST,
                    "/v1/node/sync",
                    &body,
                    Duration::from_secs(10),
                )) else {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                };
                version = answer["version"].as_u64().unwrap_or(version);
                epoch = answer["epoch"].as_u64().unwrap_or(epoch);
                let desired = &answer["desired"];
                if desired["full"] == true {
                    assigned.clear();
                }
                for a in desired["assignments"].as_array().into_iter().flatten() {
                    assigned.insert((
                        a["app"].as_str().unwrap().to_string(),
                        a["component"].as_str().unwrap().to_string(),
                        a["package"].as_str().unwrap().to_string(),
                    ));
                }
                for u in desired["unassigned"].as_array().into_iter().flatten() {
                    let key = (
                        u[0].as_str().unwrap().to_string(),
                        u[1].as_str().unwrap().to_string(),
                        u[2].as_str().unwrap().to_string(),
                    );
                    assigned.remove(&key);
                }
            }
        })
    };
    let dir = temp_dir();
    let app = hello_app(dir.path(), "web", "1.0.0", "/...");
    cli(home.path(), &["deploy", &app]);
    wait_until(
        Duration::from_secs(10),
        "the replica on the evil node",
        || {
            let replicas = json(home.path(), &["ps", "web"]);
            (replicas[0]["node"] == "evil" && replicas[0]["state"] == "failed").then_some(())
        },
    );
    // An honest node joins: within seconds the replica moves there and
    // serves.
    let honest = start_node(home.path(), &api, "honest");
    let replicas = wait_until(Duration::from_secs(30), "the replica moved", || {
        let replicas = json(home.path(), &["ps", "web"]);
        (replicas[0]["node"] == "honest" && replicas[0]["state"] == "running").then_some(replicas)
    });
    assert_eq!(replicas.as_array().unwrap().len(), 1);
    let (status, body) = support::get(&honest.at("/"));
    assert_eq!((status, body.as_str()), (200, "Hello from Skiff!\n"));
    let events = cli(home.path(), &["events", "web"]);
    assert!(events.contains("from evil to honest"), "{events}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    heartbeats.join().unwrap();
}

/// A compromised node reports impossible traffic (figures at the edge of
/// u64, errors past requests, components it was not assigned though it
/// says it holds them): `skiff top` shows bounded figures for what it
/// runs, nothing for the rest, and the control plane keeps serving.
#[test]
fn a_node_reporting_impossible_traffic_cannot_bring_the_control_plane_down() {
    let _serial = one_at_a_time();
    let home = temp_dir();
    let server = start_server(home.path(), "127.0.0.1:0", &[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let node = join_by_api(&runtime, home.path(), &server.url, "node-1");
    let buckets = skiff_runtime::metrics::REQUEST_DURATION_BUCKETS.len() + 1;
    // Counts that began now: counted from zero.
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let lie = |app: &str, component: &str| {
        serde_json::json!({
            "app": app, "component": component, "concurrency": 0.0, "held": 0, "versions": [],
            "traffic": {
                "requests": 1, "errors": u64::MAX, "in_flight": u64::MAX,
                "durations": vec![u64::MAX; buckets], "since_unix_ms": since
            }
        })
    };
    let held = |app: &str, component: &str| serde_json::json!({"app": app, "component": component, "package": "sha256:00", "state": "running", "serving": "sha256:00"});
    let heartbeat = serde_json::json!({
        "version": 0, "epoch": 0, "memory": 1u64 << 30,
        "ingress": "127.0.0.2:1", "mesh": "127.0.0.2:2",
        "status_run": 1, "status_seq": 1, "status_base": null,
        "components": [held("shop", "probe"), held("stranger", "web")],
        "logs_first_seq": 0, "logs": [],
        "load": [lie("shop", "probe"), lie("shop", "probe"), lie("stranger", "web")]
    });
    let sync = || {
        runtime
            .block_on(node.call::<_, Value>(
                http::Method::POST,
                "/v1/node/sync",
                &heartbeat,
                Duration::from_secs(30),
            ))
            .expect("the heartbeat is taken")
    };
    sync();
    // The node runs the one replica of shop/probe.
    let dir = temp_dir();
    let app = support::cluster::probe_app(dir.path(), "shop", "");
    cli(home.path(), &["deploy", &app]);
    let top = wait_until(
        Duration::from_secs(20),
        "the node's traffic to show",
        || {
            sync();
            let top: Value =
                serde_json::from_str(&cli(home.path(), &["top", "-o", "json"])).ok()?;
            let shows = top["components"]
                .as_array()?
                .iter()
                .any(|c| c["app"] == "shop" && c["rps"].as_f64().unwrap_or(0.0) > 0.0);
            shows.then_some(top)
        },
    );
    let components = top["components"].as_array().unwrap();
    assert!(
        components.iter().all(|c| c["app"] != "stranger"),
        "traffic of a component not assigned to the node: {top}"
    );
    let shop = components.iter().find(|c| c["app"] == "shop").unwrap();
    assert!(shop["error_rate"].as_f64().unwrap() <= 1.0, "{shop}");
    assert!(shop["in_flight"].as_u64().unwrap() <= 1_000_000, "{shop}");
    assert!(
        shop["p99_ms"].as_f64().is_some_and(f64::is_finite),
        "{shop}"
    );
    // Still serving.
    let nodes: Value = serde_json::from_str(&cli(home.path(), &["nodes", "-o", "json"])).unwrap();
    assert_eq!(nodes.as_array().unwrap().len(), 1, "{nodes}");
}
