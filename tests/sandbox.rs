//! End to end: hostile guests are contained. Each attack fails only its
//! own request, with a precise status and a logged reason, while a
//! well-behaved component in the same process keeps serving.

mod support;

use skiff_test_guests as guests;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::*;

/// An app with the hostile guest at `/...`, hello at `/good`, and the probe
/// at `/probe/...` with `data/` mounted; `allowed` is the hostile guest's
/// `allowed_outbound_hosts`.
fn hostile_app(dir: &std::path::Path, allowed: &str, extra_limits: &str) -> String {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("ok.txt"), "inside").unwrap();
    let _ = std::os::unix::fs::symlink("/etc/passwd", data.join("passwd-link"));
    let _ = std::os::unix::fs::symlink("..", data.join("up"));
    let manifest = write_manifest(
        dir,
        &format!(
            r#"
[app]
name = "hostile"

[component.hostile]
source = {hostile}
route = "/..."
allowed_outbound_hosts = [{allowed}]
[component.hostile.limits]
memory = "32MiB"
timeout = "2s"
max_request_body = "1MiB"
max_response_body = "8MiB"
max_outbound_requests = 5
{extra_limits}

[component.good]
source = {hello}
route = "/good"

[component.probe]
source = {probe}
route = "/probe/..."
env = {{ ONLY_THIS = "1" }}
files = [{{ source = "data", destination = "/data" }}]
"#,
            hostile = toml_path(guests::HOSTILE),
            hello = toml_path(guests::HELLO),
            probe = toml_path(guests::PROBE),
        ),
    );
    manifest.to_str().unwrap().to_string()
}

fn start(allowed: &str) -> (Running, tempfile::TempDir, tempfile::TempDir) {
    let home = temp_dir();
    let dir = temp_dir();
    let manifest = hostile_app(dir.path(), allowed, "");
    (Running::start(home.path(), &[&manifest]), home, dir)
}

fn assert_neighbour_serves(skiff: &Running) {
    assert_eq!(
        get(&skiff.at("/good")),
        (200, "Hello from Skiff!\n".to_string())
    );
}

#[test]
fn an_infinite_loop_times_out_while_neighbours_keep_serving() {
    let (skiff, _h, _d) = start("");
    let looping = {
        let url = skiff.at("/loop");
        std::thread::spawn(move || {
            let started = Instant::now();
            (get(&url), started.elapsed())
        })
    };
    // Once the guest loops, the neighbour is served before the loop's
    // timeout stops it.
    skiff.wait_for_stderr("[hostile] looping");
    assert_neighbour_serves(&skiff);
    assert!(
        !looping.is_finished() && !skiff.stderr().contains("reason=\"timeout\""),
        "the neighbour was held up until the loop was stopped:\n{}",
        skiff.stderr()
    );
    let ((status, body), took) = looping.join().unwrap();
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("timed out"), "{body}");
    assert!(
        (Duration::from_secs(2)..Duration::from_secs(8)).contains(&took),
        "the 2s timeout fired after {took:?}"
    );
    skiff.wait_for_stderr("reason=\"timeout\"");
}

#[test]
fn a_memory_bomb_hits_its_cap_and_fails_alone() {
    let (skiff, _h, _d) = start("");
    let (status, body) = get(&skiff.at("/memory"));
    assert_eq!(status, 500);
    assert!(body.contains("exceeded its memory limit"), "{body}");
    skiff.wait_for_stderr("reason=\"memory_limit\"");
    assert_neighbour_serves(&skiff);
}

#[test]
fn unbounded_recursion_panics_and_table_exhaustion_trap_alone() {
    let (skiff, _h, _d) = start("");
    for attack in ["/recursion", "/panic", "/resources"] {
        let (status, body) = get(&skiff.at(attack));
        assert_eq!(status, 500, "{attack}: {body}");
        assert!(body.contains("trapped"), "{attack}: {body}");
        assert_neighbour_serves(&skiff);
    }
    skiff.wait_for_stderr("resource table has no free keys");
    skiff.wait_for_stderr("[hostile] deliberate panic");
}

#[test]
fn a_gigabyte_response_is_cut_off_at_the_response_limit() {
    let (skiff, _h, _d) = start("");
    let mut response = http().get(&skiff.at("/huge")).call().unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("content-length").is_none());
    let mut received = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    let mut reader = response.body_mut().with_config().limit(u64::MAX).reader();
    // Every byte up to the limit arrives; then the connection closes
    // before the body's end, so the client sees a broken body, not a
    // complete one.
    let end = loop {
        match reader.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                assert!(buf[..n].iter().all(|b| *b == b'x'), "at byte {received}");
                received += n as u64;
            }
            Err(e) => break Err(e),
        }
    };
    // Skiff hands exactly the limit to hyper (the unit test of
    // `LimitedBody` checks that), but cutting the connection may drop what
    // hyper still buffered: at most one write buffer.
    assert!(
        received <= 8 << 20 && received > (8 << 20) - (1 << 20),
        "{received} bytes received of a 1 GiB body limited to 8 MiB"
    );
    let broken = end.expect_err("the body cut off at the limit ended as if complete");
    assert_eq!(broken.kind(), std::io::ErrorKind::UnexpectedEof, "{broken}");
    skiff.wait_for_stderr("reason=\"response_too_large\"");
    assert_neighbour_serves(&skiff);
}

#[test]
fn an_outbound_flood_is_capped_per_instance() {
    let upstream = Upstream::start("pong");
    let allowed = format!("\"http://{}\"", upstream.addr);
    let (skiff, _h, _d) = start(&allowed);
    let target = format!("/outbound-flood?http://{}/", upstream.addr);
    assert_eq!(
        get(&skiff.at(&target)),
        (200, "ok=5 refused=995".to_string())
    );
    assert_eq!(upstream.hits(), 5);
    let log = skiff.wait_for_stderr("max_outbound_requests reached");
    assert_eq!(
        log.matches("max_outbound_requests reached").count(),
        1,
        "{log}"
    );
    assert_neighbour_serves(&skiff);
}

#[test]
fn outbound_to_a_host_not_allowed_is_denied() {
    let upstream = Upstream::start("pong");
    let (skiff, _h, _d) = start("\"https://api.example.com\"");
    let (status, body) = get(&skiff.at(&format!("/fetch?http://{}/", upstream.addr)));
    assert_eq!(status, 502);
    assert!(body.contains("denied"), "{body}");
    assert_eq!(upstream.hits(), 0);
}

#[test]
fn internal_addresses_are_refused_unless_named_even_under_a_wildcard() {
    let upstream = Upstream::start("pong");
    let port = upstream.addr.rsplit(':').next().unwrap().to_string();
    let (skiff, _h, _d) = start("\"http://*:*\"");
    for target in [
        format!("http://{}/", upstream.addr),
        format!("http://localhost:{port}/"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://[::1]/".to_string(),
        "http://10.0.0.1/".to_string(),
    ] {
        let (status, body) = get(&skiff.at(&format!("/fetch?{target}")));
        assert_eq!(status, 502, "{target}: {body}");
        assert!(body.contains("DestinationIpProhibited"), "{target}: {body}");
    }
    assert_eq!(
        upstream.hits(),
        0,
        "no connection reached the loopback server"
    );
    drop(skiff);

    // Named explicitly, the same loopback server is reachable.
    let (skiff, _h, _d) = start(&format!("\"http://{}\"", upstream.addr));
    let (status, body) = get(&skiff.at(&format!("/fetch?http://{}/", upstream.addr)));
    assert_eq!((status, body.as_str()), (200, "reached: 200 OK"));
}

#[test]
fn files_and_env_stay_inside_what_was_granted() {
    let (skiff, _h, _d) = start("");
    assert_eq!(get(&skiff.at("/probe/env")).1, "ONLY_THIS=1\n");
    assert_eq!(
        get(&skiff.at("/probe/read?/data/ok.txt")),
        (200, "inside".into())
    );
    for escape in [
        "/etc/passwd",
        "/data/../../../etc/passwd",
        "/data/passwd-link",
        "/data/up/skiff.toml",
        "/data/up/../../etc/passwd",
    ] {
        let (status, body) = get(&skiff.at(&format!("/probe/read?{escape}")));
        assert_eq!(status, 403, "{escape} leaked: {body}");
    }
    let (status, _) = get(&skiff.at("/probe/write?/data/ok.txt"));
    assert_eq!(status, 403, "the mount is read-only");
    assert_eq!(get(&skiff.at("/probe/read?/data/ok.txt")).1, "inside");
}

#[test]
fn oversized_request_bodies_get_413_declared_or_streamed() {
    let (skiff, _h, _d) = start("");
    let body = vec![7u8; 2 << 20];
    let response = http()
        .post(&skiff.at("/read-body"))
        .send(&body[..])
        .unwrap();
    assert_eq!(response.status(), 413);
    // Chunked: no length up front, so the limit trips mid-stream.
    let chunked = std::io::Cursor::new(body);
    let response = http()
        .post(&skiff.at("/read-body"))
        .send(ureq::SendBody::from_reader(&mut { chunked }))
        .unwrap();
    assert_eq!(response.status(), 413);
    let ok = http()
        .post(&skiff.at("/read-body"))
        .send(&[1u8; 1000][..])
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_neighbour_serves(&skiff);
}

#[test]
fn a_slow_drip_body_is_bounded_by_the_timeout() {
    let (skiff, _h, _d) = start("");
    let addr = skiff.url.trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream
        .write_all(b"POST /read-body HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    // A byte every 250 ms: the whole body would take 25 s, until the
    // answer comes.
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let dripper = {
        let mut stream = stream.try_clone().unwrap();
        let answered = answered.clone();
        std::thread::spawn(move || {
            for _ in 0..100 {
                if answered.load(std::sync::atomic::Ordering::Relaxed)
                    || stream.write_all(b"x").is_err()
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    let took = started.elapsed();
    answered.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(&head, b"HTTP/1.1 504", "{}", String::from_utf8_lossy(&head));
    assert!(
        (Duration::from_secs(2)..Duration::from_secs(12)).contains(&took),
        "the 2s timeout ended a 25 s body after {took:?}"
    );
    skiff.wait_for_stderr("reason=\"timeout\"");
    assert_neighbour_serves(&skiff);
    drop(stream);
    dripper.join().unwrap();
}

#[test]
fn past_the_concurrency_limit_requests_get_503_with_retry_after() {
    let home = temp_dir();
    let dir = temp_dir();
    let manifest = write_manifest(
        dir.path(),
        &format!(
            "[app]\nname = \"busy\"\n[component.probe]\nsource = {}\nroute = \"/...\"\n[component.probe.limits]\nmax_concurrency = 1\nmax_queued = 1\n",
            toml_path(guests::PROBE)
        ),
    );
    let skiff = Running::start(home.path(), &[manifest.to_str().unwrap()]);
    let running = {
        let url = skiff.at("/sleep?3000");
        std::thread::spawn(move || get(&url).0)
    };
    skiff.wait_for_stderr("[probe] sleeping 3000");
    // While it runs, of two more requests one waits in the queue and the
    // other, whichever comes second, is refused at once.
    let more: Vec<_> = (0..2)
        .map(|_| {
            let url = skiff.at("/sleep?1");
            std::thread::spawn(move || {
                let response = http().get(&url).call().unwrap();
                let retry_after = response.headers().get("retry-after").cloned();
                (response.status().as_u16(), retry_after)
            })
        })
        .collect();
    let mut answers: Vec<_> = more.into_iter().map(|h| h.join().unwrap()).collect();
    answers.sort_by_key(|(status, _)| *status);
    assert_eq!(
        answers,
        [
            (200, None),
            (503, Some(http::HeaderValue::from_static("1")))
        ],
        "the queued request and the refused one (with retry-after: 1)"
    );
    let stderr = skiff.wait_for_stderr("[probe] sleeping 1\n");
    assert_eq!(
        stderr.matches("[probe] sleeping").count(),
        2,
        "the queued request ran after the first: {stderr}"
    );
    assert_eq!(running.join().unwrap(), 200, "the running request finishes");
    skiff.wait_for_stderr("reason=\"overloaded\"");
}

#[test]
fn the_wasm_stack_is_limited_per_component() {
    let home = temp_dir();
    let dir = temp_dir();
    let manifest = write_manifest(
        dir.path(),
        &format!(
            "[app]\nname = \"stacks\"\n\
             [component.shallow]\nsource = {hostile}\nroute = \"/shallow/...\"\n\
             [component.shallow.limits]\nstack = \"64KiB\"\n\
             [component.deep]\nsource = {hostile}\nroute = \"/deep-ok/...\"\n\
             [component.deep.limits]\nstack = \"4MiB\"\n",
            hostile = toml_path(guests::HOSTILE)
        ),
    );
    let skiff = Running::start(home.path(), &[manifest.to_str().unwrap()]);
    let (status, body) = get(&skiff.at("/shallow/deep?20000"));
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("overflowed its stack"), "{body}");
    assert_eq!(
        get(&skiff.at("/deep-ok/deep?20000")),
        (200, "depth 20000".to_string()),
        "the same guest with a larger stack gets through"
    );
    assert_eq!(get(&skiff.at("/shallow/deep?10")).0, 200);

    let too_big = write_manifest(
        dir.path(),
        &format!(
            "[app]\nname = \"stacks\"\n[component.huge]\nsource = {}\nroute = \"/...\"\n[component.huge.limits]\nstack = \"64MiB\"\n",
            toml_path(guests::HOSTILE)
        ),
    );
    let stderr = expect_failure(home.path(), &["run", too_big.to_str().unwrap()]);
    assert!(
        stderr.contains("limits.stack \"64.0 MiB\" is above this node's maximum of 8 MiB"),
        "{stderr}"
    );
}

#[test]
fn an_internal_entry_grants_only_its_own_scheme_host_and_port() {
    let named = Upstream::start("pong");
    let other = Upstream::start("other");
    let other_port = other.addr.rsplit(':').next().unwrap().to_string();
    let fetch = |skiff: &Running, target: &str| get(&skiff.at(&format!("/fetch?{target}")));

    // Named alone: its port and scheme only.
    let (skiff, _h, _d) = start(&format!("\"http://{}\"", named.addr));
    assert_eq!(
        fetch(&skiff, &format!("http://{}/", named.addr)),
        (200, "reached: 200 OK".to_string())
    );
    for target in [
        format!("http://{}/", other.addr),
        format!("https://{}/", named.addr),
    ] {
        let (status, body) = fetch(&skiff, &target);
        assert_eq!(status, 502, "{target}: {body}");
    }
    drop(skiff);

    // Beside a wildcard: the wildcard reaches no other port, scheme or
    // name of the named address.
    let (skiff, _h, _d) = start(&format!("\"*://*:*\", \"http://{}\"", named.addr));
    for target in [
        format!("http://{}/", other.addr),
        format!("http://localhost:{other_port}/"),
        format!("http://[::ffff:127.0.0.1]:{other_port}/"),
        format!("https://{}/", named.addr),
        format!(
            "http://localhost:{}/",
            named.addr.rsplit(':').next().unwrap()
        ),
    ] {
        let (status, body) = fetch(&skiff, &target);
        assert_eq!(status, 502, "{target}: {body}");
        assert!(body.contains("DestinationIpProhibited"), "{target}: {body}");
    }
    assert_eq!(
        fetch(&skiff, &format!("http://{}/", named.addr)),
        (200, "reached: 200 OK".to_string())
    );
    assert_eq!(other.hits(), 0, "no connection reached the other port");
    assert_eq!(named.hits(), 2, "only the two allowed requests reached it");
    skiff.wait_for_stderr("reason=\"outbound_internal_address\"");
}

#[test]
fn a_guest_cannot_set_the_platforms_headers() {
    let upstream = Upstream::start("pong");
    let (skiff, _h, _d) = start(&format!("\"http://{}\"", upstream.addr));
    let mut response = http()
        .get(&skiff.at(&format!("/not-here?http://{}/", upstream.addr)))
        .call()
        .unwrap();
    assert_eq!(response.status(), 503);
    for name in ["skiff-not-here", "skiff-app"] {
        assert!(
            response.headers().get(name).is_none(),
            "{name} leaked from the guest"
        );
    }
    let body = response.body_mut().read_to_string().unwrap();
    assert_eq!(body, "forged, after calling: 200 OK");
    assert_eq!(upstream.hits(), 1);
}

#[test]
fn a_replica_saturating_its_concurrency_leaves_instance_slots_to_its_neighbours() {
    let home = temp_dir();
    let dir = temp_dir();
    // The busy requests wait until the test opens this gate, so they all
    // overlap however slowly they arrive.
    std::fs::create_dir(dir.path().join("gate")).unwrap();
    let manifest = write_manifest(
        dir.path(),
        &format!(
            "[app]\nname = \"crowd\"\n\
             [component.busy]\nsource = {probe}\nroute = \"/busy/...\"\n\
             files = [{{ source = \"gate\", destination = \"/gate\" }}]\n\
             [component.busy.limits]\nmax_concurrency = 50\nmax_queued = 50\ntimeout = \"60s\"\n\
             [component.good]\nsource = {hello}\nroute = \"/good\"\n",
            probe = toml_path(guests::PROBE),
            hello = toml_path(guests::HELLO),
        ),
    );
    // Eight instance slots in the process: one replica may hold six.
    let skiff = Running::start(
        home.path(),
        &[manifest.to_str().unwrap(), "--max-instances", "8"],
    );
    let busy: Vec<_> = (0..12)
        .map(|_| {
            let url = skiff.at("/busy/wait?/gate/open");
            std::thread::spawn(move || get(&url))
        })
        .collect();
    // Wait until the busy replica holds all it may (six running at once,
    // by its own log), then the neighbour is served at once.
    wait_until(Duration::from_secs(30), "six busy instances", || {
        (busy_running(&skiff.stderr()).0 >= 6).then_some(())
    });
    assert_neighbour_serves(&skiff);
    std::fs::write(dir.path().join("gate/open"), "").unwrap();
    for handle in busy {
        let (status, body) = handle.join().unwrap();
        assert_eq!(
            (status, body.as_str()),
            (200, "released"),
            "the busy replica's own requests wait for a slot, none fail"
        );
    }
    // Never more than six of its instances ran at once.
    let most = busy_running(&skiff.stderr()).1;
    assert!(most <= 6, "{most} ran at once: {}", skiff.stderr());
}

/// Instances of the busy component running now, and the most at once,
/// from its `sleeping` and `awake` log lines.
fn busy_running(stderr: &str) -> (i32, i32) {
    let mut running = 0;
    let mut most = 0;
    for line in stderr.lines() {
        if line.starts_with("[busy] sleeping") {
            running += 1;
        } else if line.starts_with("[busy] awake") {
            running -= 1;
        }
        most = most.max(running);
    }
    (running, most)
}

#[test]
fn sixty_four_distinct_stacks_load_in_at_most_eight_engines() {
    use skiff_runtime::engine::MAX_STACK_CLASSES;
    use skiff_runtime::{CompileCache, EngineConfig, LoadedApp, Manifest, SkiffEngine};
    let dir = temp_dir();
    let mut text = String::from("[app]\nname = \"stacks\"\n");
    let stacks: Vec<u64> = (0..64u64).map(|i| (64 << 10) + i * 127_000 + i).collect();
    for (i, stack) in stacks.iter().enumerate() {
        text += &format!(
            "[component.c{i}]\nsource = {}\n[component.c{i}.limits]\nstack = {stack}\n",
            toml_path(guests::HELLO)
        );
    }
    let manifest = Manifest::parse(&text, &dir.path().join("skiff.toml")).unwrap();
    let engine = SkiffEngine::new(EngineConfig {
        max_instances: 4,
        ..EngineConfig::default()
    })
    .unwrap();
    let cache = CompileCache::open(&dir.path().join("cache")).unwrap();
    let app = LoadedApp::load(&engine, &cache, &manifest, dir.path()).unwrap();
    assert!(
        engine.engine_count() <= MAX_STACK_CLASSES,
        "{} engines",
        engine.engine_count()
    );
    assert_eq!(app.components.len(), 64);
    for component in &app.components {
        // Components are in name order: find each one's request by name.
        let i: usize = component.name.as_str()[1..].parse().unwrap();
        assert!(
            component.wasm_stack() as u64 >= stacks[i],
            "{} asked for {} and got {}",
            component.name,
            stacks[i],
            component.wasm_stack()
        );
    }
}

#[test]
fn apps_made_of_one_component_share_its_compiled_code_while_any_lives() {
    use skiff_runtime::{
        CacheOutcome, CompileCache, EngineConfig, LoadedApp, Manifest, SkiffEngine,
    };
    let dir = temp_dir();
    let engine = SkiffEngine::new(EngineConfig {
        max_instances: 4,
        ..EngineConfig::default()
    })
    .unwrap();
    let cache = CompileCache::open(&dir.path().join("cache")).unwrap();
    let load = |name: &str| {
        let text = format!(
            "[app]\nname = \"{name}\"\n[component.web]\nsource = {}\nenv = {{ GREETING = \"{name}\" }}\n",
            toml_path(guests::HELLO)
        );
        let manifest = Manifest::parse(&text, &dir.path().join("skiff.toml")).unwrap();
        LoadedApp::load(&engine, &cache, &manifest, dir.path()).unwrap()
    };
    let apps: Vec<LoadedApp> = ["a", "b", "c"].into_iter().map(load).collect();
    let outcomes: Vec<CacheOutcome> = apps.iter().map(|a| a.components[0].cache).collect();
    assert_eq!(
        outcomes,
        [
            CacheOutcome::Compiled,
            CacheOutcome::Shared,
            CacheOutcome::Shared
        ]
    );
    assert_eq!(engine.prepared_components(), 1);
    // The code lives while one app does, and goes with the last.
    let mut apps = apps;
    apps.truncate(1);
    assert_eq!(engine.prepared_components(), 1);
    assert_eq!(load("d").components[0].cache, CacheOutcome::Shared);
    drop(apps);
    assert_eq!(engine.prepared_components(), 0);
    assert_eq!(load("e").components[0].cache, CacheOutcome::Hit);
}

#[test]
fn a_guest_logging_without_end_keeps_its_first_thousand_lines_per_instance() {
    let (skiff, _h, _d) = start("");
    // Two instances flooding at once, stdout and stderr in turn; each has
    // its own budget.
    let floods: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|tag| {
            let url = skiff.at(&format!("/probe/flood?{tag}&1500"));
            std::thread::spawn(move || get(&url))
        })
        .collect();
    for flood in floods {
        assert_eq!(flood.join().unwrap(), (200, "wrote 1500 lines".to_string()));
    }
    assert_eq!(
        get(&skiff.at("/probe/flood?c&1000")),
        (200, "wrote 1000 lines".to_string())
    );
    // Each instance's lines are written before it answers: once a later
    // request's line shows, every earlier line has.
    assert_eq!(get(&skiff.at("/probe/log?after")).0, 200);
    let stderr = skiff.wait_for_stderr("[probe] after\n");
    for tag in ["a", "b", "c"] {
        let prefix = format!("[probe] {tag} ");
        let numbers: Vec<u32> = stderr
            .lines()
            .filter_map(|line| line.strip_prefix(&prefix))
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(
            numbers,
            (1..=1000).collect::<Vec<_>>(),
            "instance {tag} keeps exactly its first 1000 lines"
        );
    }
    let dropped = "[probe] (log limit of 1000 lines or 1 MiB reached; further output of this instance dropped)";
    assert_eq!(
        stderr.matches(dropped).count(),
        2,
        "one line says so for each instance past the limit, none for the one at it"
    );
    assert_neighbour_serves(&skiff);
}

#[test]
fn sockets_and_name_lookups_are_refused_and_logged() {
    let upstream = Upstream::start("pong");
    // Even with the upstream allowed for outbound HTTP, no socket reaches it.
    let (skiff, _h, _d) = start(&format!("\"http://{}\"", upstream.addr));
    let connect = format!("std-connect&{}", upstream.addr);
    for (attempt, seen) in [
        ("tcp", "error access-denied"),
        ("udp", "error access-denied"),
        ("lookup", "error access-denied"),
        (connect.as_str(), "PermissionDenied"),
        ("std-listen", "PermissionDenied"),
        ("std-udp", "PermissionDenied"),
    ] {
        let (status, body) = get(&skiff.at(&format!("/socket?{attempt}")));
        assert_eq!((status, body.as_str()), (200, seen), "{attempt}");
    }
    // Retrying in a loop is refused every time, and logged once.
    assert_eq!(
        get(&skiff.at("/socket?tcp-flood")),
        (200, "refused 1000 of 1000".to_string())
    );
    assert_eq!(upstream.hits(), 0, "no connection reached the upstream");
    // Log lines are written by a thread of their own: wait for the last
    // refusals' lines, then count.
    let stderr = wait_until(Duration::from_secs(10), "every refusal logged", || {
        let stderr = skiff.stderr();
        let lines = stderr
            .lines()
            .filter(|line| line.contains("reason=\"socket_denied\""))
            .count();
        // tcp (11), udp (2), the lookup, and the flood's last word.
        let expected = 15;
        (lines >= expected).then_some(stderr)
    });
    let refusals: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("reason=\"socket_denied\""))
        .collect();
    for line in &refusals {
        assert!(line.contains("component=\"hostile\""), "{line}");
        assert!(line.contains(" refused"), "{line}");
    }
    let count = |what: &str| refusals.iter().filter(|l| l.contains(what)).count();
    assert_eq!(
        (
            count("tcp socket refused"),
            count("udp socket refused"),
            count("name lookup of \"localhost\" refused")
        ),
        (11, 2, 1),
        "one line per refusal, the flood's first 8 only: tcp, std-connect, std-listen and the flood; udp and std-udp; the lookup:\n{stderr}"
    );
    assert_eq!(count("more socket calls refused"), 1, "{stderr}");
    assert_neighbour_serves(&skiff);
}

/// A TCP server on loopback answering `pong` to whatever comes; counts
/// its connections.
fn pong_server() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counted.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 64];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"pong\n");
        }
    });
    (addr, connections)
}

#[test]
fn tcp_reaches_exactly_the_hosts_and_ports_allowed() {
    let (allowed, allowed_hits) = pong_server();
    let (by_name, by_name_hits) = pong_server();
    let (other, other_hits) = pong_server();
    let (skiff, _h, _d) = start(&format!(
        "\"tcp://{allowed}\", \"*://localhost:{}\", \"https://example.com\"",
        by_name.port()
    ));
    let talk = |to: &str| get(&skiff.at(&format!("/socket?std-talk&{to}")));
    assert_eq!(talk(&allowed.to_string()), (200, "got pong".to_string()));
    // A name an entry allows is looked up, and its loopback address taken.
    assert_eq!(
        talk(&format!("localhost:{}", by_name.port())),
        (200, "got pong".to_string())
    );
    // Another port of an allowed address; another address; a name no
    // entry grants TCP to (an https:// entry does not).
    assert_eq!(
        talk(&other.to_string()),
        (200, "PermissionDenied".to_string())
    );
    assert_eq!(
        talk(&format!("127.0.0.1:{}", by_name.port())),
        (200, "PermissionDenied".to_string())
    );
    let (status, refused) = talk("example.com:443");
    assert_eq!(status, 200);
    assert_ne!(refused, "got pong");
    // Still no listening and no UDP.
    for (attempt, seen) in [
        ("std-listen", "PermissionDenied"),
        ("std-udp", "PermissionDenied"),
    ] {
        assert_eq!(
            get(&skiff.at(&format!("/socket?{attempt}"))),
            (200, seen.to_string())
        );
    }
    assert_eq!(allowed_hits.load(Ordering::SeqCst), 1);
    assert_eq!(by_name_hits.load(Ordering::SeqCst), 1);
    assert_eq!(
        other_hits.load(Ordering::SeqCst),
        0,
        "no connection reached the other server"
    );
    // Each refused connection and lookup is logged (log lines are written
    // by a thread of their own: wait for them).
    skiff.wait_for_stderr(&format!("TcpConnect to {other} refused"));
    skiff.wait_for_stderr("name lookup of \"example.com\" refused");
    assert_neighbour_serves(&skiff);
}

#[test]
fn a_response_cut_by_the_timeout_or_a_trap_aborts_instead_of_ending() {
    let (skiff, _h, _d) = start("");
    // Ticks every 100 ms, past the component's 2 s timeout.
    let started = Instant::now();
    let (head, body, complete) = get_chunked(&skiff, "/drip?100");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        body.starts_with("tick 1\ntick 2\n"),
        "the response streamed: {body:?}"
    );
    assert!(!complete, "the cut-off response ended cleanly: {body:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "cut off late: {:?}",
        started.elapsed()
    );
    skiff.wait_for_line(&[
        "exceeded its 2s timeout",
        "reason=\"timeout\"",
        "component=\"hostile\"",
    ]);

    // Three ticks, then a panic.
    let (head, body, complete) = get_chunked(&skiff, "/drip-panic");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "tick 1\ntick 2\ntick 3\n");
    assert!(!complete, "the trapped response ended cleanly");
    skiff.wait_for_stderr("deliberate panic mid-response");
    skiff.wait_for_line(&["reason=\"trap\"", "component=\"hostile\""]);
    // A streamed response the guest finishes still ends cleanly.
    let (head, body, complete) = get_chunked(&skiff, "/drip?10&3");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        (body.as_str(), complete),
        ("tick 1\ntick 2\ntick 3\n", true)
    );
    assert_neighbour_serves(&skiff);
}

/// GETs `path` over a raw HTTP/1.1 connection and reads its chunked body
/// as far as it goes: the head, the body, and whether it ended properly
/// (with the final chunk) rather than with the connection closing.
fn get_chunked(skiff: &Running, path: &str) -> (String, String, bool) {
    use std::io::BufRead;
    let addr = skiff.url.trim_start_matches("http://");
    let stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    (&stream)
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .unwrap();
    let mut reader = std::io::BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("reading the head");
        assert!(!line.is_empty(), "no response head: {head}");
        if line == "\r\n" {
            break;
        }
        head += &line;
    }
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    let mut body = Vec::new();
    let complete = loop {
        let mut size = String::new();
        match reader.read_line(&mut size) {
            Ok(n) if n > 0 && size.ends_with("\r\n") => {}
            _ => break false,
        }
        let size = usize::from_str_radix(size.trim_end(), 16).expect("a chunk size");
        let mut chunk = vec![0u8; size + 2];
        if reader.read_exact(&mut chunk).is_err() {
            break false;
        }
        if size == 0 {
            break true;
        }
        body.extend_from_slice(&chunk[..size]);
    };
    (head, String::from_utf8_lossy(&body).into_owned(), complete)
}

/// Pool slots keep the pages an instance wrote resident for the next one:
/// they must come back as the component's original contents, so nothing a
/// request wrote, in its data segment or zeroed memory, reaches the next.
#[test]
fn nothing_one_request_writes_in_memory_reaches_the_next_instance() {
    let (skiff, _h, _d) = start("");
    for i in 0..20 {
        let secret = format!("secret-{i:02}-of-the-previous-request");
        let (status, body) = get(&skiff.at(&format!("/probe/remember?{secret}")));
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body, "data=pristine data segment contents.. bss=clean",
            "request {i} saw what an earlier one wrote"
        );
    }
}
