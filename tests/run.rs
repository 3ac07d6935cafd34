//! End to end: `skiff run` serving real components on loopback, and every
//! kind of bad input refused with a clear message.

mod support;

use skiff_test_guests as guests;
use support::*;

#[test]
fn hello_example_answers_200() {
    let home = temp_dir();
    let app = format!("{}/hello", guests::EXAMPLES_DIR);
    let skiff = Running::start(home.path(), &[&app]);
    let (status, body) = get(&skiff.at("/"));
    assert_eq!(status, 200);
    assert_eq!(body, "Hello from Skiff!\n");
    assert!(skiff.banner.contains("/... -> hello"), "{}", skiff.banner);
}

#[test]
fn a_bare_wasm_component_is_served_on_every_path() {
    let home = temp_dir();
    let skiff = Running::start(home.path(), &[guests::HELLO]);
    assert_eq!(get(&skiff.at("/any/where?x")).0, 200);
}

#[test]
fn echo_round_trips_method_path_query_headers_and_a_1mib_body() {
    let home = temp_dir();
    let app = format!("{}/echo", guests::EXAMPLES_DIR);
    let skiff = Running::start(home.path(), &[&app]);
    let body: Vec<u8> = (0..(1 << 20)).map(|i: u32| (i * 7 % 251) as u8).collect();
    let mut response = http()
        .put(&skiff.at("/some/path?a=1&b=two"))
        .header("x-custom", "value 42")
        .send(&body[..])
        .unwrap();
    assert_eq!(response.status(), 200);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    assert_eq!(header("echo-method").as_deref(), Some("PUT"));
    assert_eq!(header("echo-path").as_deref(), Some("/some/path"));
    assert_eq!(header("echo-query").as_deref(), Some("a=1&b=two"));
    assert_eq!(header("echo-header-x-custom").as_deref(), Some("value 42"));
    let echoed = response
        .body_mut()
        .with_config()
        .limit(4 << 20)
        .read_to_vec()
        .unwrap();
    assert_eq!(echoed.len(), body.len());
    assert!(echoed == body, "echoed body differs");
}

#[test]
fn exact_routes_beat_prefixes_longest_prefix_wins_and_unknown_is_404() {
    let home = temp_dir();
    let dir = temp_dir();
    let manifest = write_manifest(
        dir.path(),
        &format!(
            r#"
[app]
name = "routes"

[component.root]
source = {hello}
route = "/site/..."
env = {{ GREETING = "root" }}

[component.api]
source = {hello}
route = "/site/api/..."
env = {{ GREETING = "api" }}

[component.exact]
source = {echo}
route = "/site/api/echo"
"#,
            hello = toml_path(guests::HELLO),
            echo = toml_path(guests::ECHO),
        ),
    );
    let skiff = Running::start(home.path(), &[manifest.to_str().unwrap()]);
    assert_eq!(get(&skiff.at("/site")).1, "root from Skiff!\n");
    assert_eq!(get(&skiff.at("/site/x/y")).1, "root from Skiff!\n");
    assert_eq!(get(&skiff.at("/site/api")).1, "api from Skiff!\n");
    assert_eq!(get(&skiff.at("/site/api/users/1")).1, "api from Skiff!\n");
    let exact = http().get(&skiff.at("/site/api/echo")).call().unwrap();
    assert_eq!(
        exact.headers().get("echo-path").unwrap(),
        "/site/api/echo",
        "the exact route goes to the echo component"
    );
    let (status, body) = get(&skiff.at("/elsewhere"));
    assert_eq!(status, 404);
    assert!(body.contains("no route for /elsewhere"), "{body}");
}

#[test]
fn env_and_files_are_visible_only_as_granted() {
    let home = temp_dir();
    let dir = temp_dir();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("note.txt"), "granted file").unwrap();
    // skiff itself runs with the test's whole environment (PATH, HOME...);
    // the guest must see none of it.
    let manifest = write_manifest(
        dir.path(),
        &format!(
            r#"
[app]
name = "probe"

[component.probe]
source = {probe}
route = "/..."
env = {{ GRANTED = "yes" }}
files = [{{ source = "data", destination = "/data" }}]
"#,
            probe = toml_path(guests::PROBE),
        ),
    );
    let skiff = Running::start(home.path(), &[manifest.to_str().unwrap()]);
    let (status, env) = get(&skiff.at("/env"));
    assert_eq!(status, 200);
    assert_eq!(env, "GRANTED=yes\n", "only the granted variable is visible");

    assert_eq!(
        get(&skiff.at("/read?/data/note.txt")),
        (200, "granted file".to_string())
    );
    let (status, body) = get(&skiff.at("/write?/data/new.txt"));
    assert_eq!(status, 403, "the mount is read-only: {body}");
    assert!(!data.join("new.txt").exists());
    // Files the host can read, the granted one among them, are not there
    // by their host paths.
    let host_path = data.join("note.txt");
    assert!(std::fs::read_to_string("/etc/passwd").is_ok());
    assert_eq!(std::fs::read_to_string(&host_path).unwrap(), "granted file");
    let absent = "denied: No such file or directory (os error 44)";
    for (outside, error) in [
        (host_path.to_str().unwrap(), absent),
        ("/etc/passwd", absent),
        (
            "/data/../../etc/passwd",
            "denied: Operation not permitted (os error 63)",
        ),
    ] {
        let (status, body) = get(&skiff.at(&format!("/read?{outside}")));
        assert_eq!(
            (status, body.as_str()),
            (403, error),
            "{outside} must not be readable"
        );
    }
}

#[test]
fn outbound_http_succeeds_when_allowed_and_is_refused_otherwise() {
    let upstream = Upstream::start("upstream says hi");
    let home = temp_dir();
    let dir = temp_dir();
    let manifest = |allowed: &str| {
        format!(
            r#"
[app]
name = "fetcher"

[component.fetch]
source = {fetch}
route = "/..."
allowed_outbound_hosts = [{allowed}]
"#,
            fetch = toml_path(guests::FETCH),
        )
    };
    let allowed_dir = dir.path().join("allowed");
    std::fs::create_dir(&allowed_dir).unwrap();
    let allowed = write_manifest(
        &allowed_dir,
        &manifest(&format!("\"http://{}\"", upstream.addr)),
    );
    let skiff = Running::start(home.path(), &[allowed.to_str().unwrap()]);
    let target = format!("/?url=http://{}/", upstream.addr);
    assert_eq!(
        get(&skiff.at(&target)),
        (200, "upstream says hi".to_string())
    );
    assert_eq!(upstream.hits(), 1);
    drop(skiff);

    let denied_dir = dir.path().join("denied");
    std::fs::create_dir(&denied_dir).unwrap();
    let denied = write_manifest(&denied_dir, &manifest("\"https://example.com\""));
    let skiff = Running::start(home.path(), &[denied.to_str().unwrap()]);
    let (status, body) = get(&skiff.at(&target));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("not allowed"), "{body}");
    assert_eq!(
        upstream.hits(),
        1,
        "a denied request never reaches the network"
    );
    skiff.wait_for_stderr("outbound request denied");
}

#[test]
fn second_start_takes_the_component_from_the_compile_cache() {
    let home = temp_dir();
    let first = Running::start(home.path(), &[guests::ECHO]);
    assert!(first.banner.contains("(compiled)"), "{}", first.banner);
    drop(first);
    let second = Running::start(home.path(), &[guests::ECHO]);
    assert!(
        second.banner.contains("(from compile cache)"),
        "{}",
        second.banner
    );
    assert_eq!(get(&second.at("/")).0, 200);
    drop(second);

    // An entry not sealed by this home's key is discarded, never loaded.
    let cache = home.path().join("cache");
    for entry in std::fs::read_dir(&cache).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "cwasm") {
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[0] ^= 0xff;
            std::fs::write(&path, bytes).unwrap();
        }
    }
    let third = Running::start(home.path(), &[guests::ECHO]);
    assert!(third.banner.contains("(compiled)"), "{}", third.banner);
    third.wait_for_stderr("not sealed");
    assert_eq!(get(&third.at("/")).0, 200);
}

/// The JavaScript example, built by its own `build` command (npm and
/// componentize-js), is served by `skiff run` with no flag, and reads its
/// configuration from the manifest's `env` like a Rust component does.
#[test]
fn the_javascript_example_builds_and_serves_its_greeting_from_env() {
    let home = temp_dir();
    let app = format!("{}/hello-js", guests::EXAMPLES_DIR);
    let build = skiff(home.path())
        .args(["build", &app])
        .output()
        .expect("running skiff build");
    assert!(
        build.status.success(),
        "skiff build {app} failed (it needs Node.js and npm):\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let served = Running::start(home.path(), &[&app]);
    assert!(served.banner.contains("/... -> hello"), "{}", served.banner);
    assert_eq!(
        get(&served.at("/any/path")),
        (200, "Hello from JavaScript!\n".to_string())
    );
    drop(served);

    // The same component under another manifest: the greeting is the
    // manifest's, and the second start takes the compile cache.
    let dir = temp_dir();
    let manifest = dir.path().join("skiff.toml");
    std::fs::write(
        &manifest,
        format!(
            "[app]\nname = \"hola\"\nversion = \"1.0.0\"\n\n[component.hola]\nsource = {:?}\n\
             route = \"/...\"\nenv = {{ GREETING = \"Hola\" }}\n",
            format!("{app}/hello-js.wasm")
        ),
    )
    .unwrap();
    let served = Running::start(home.path(), &[manifest.to_str().unwrap()]);
    assert!(
        served.banner.contains("(from compile cache)"),
        "{}",
        served.banner
    );
    assert_eq!(
        get(&served.at("/")),
        (200, "Hola from JavaScript!\n".to_string())
    );
}

#[test]
fn sigterm_lets_in_flight_requests_finish() {
    let home = temp_dir();
    let skiff = Running::start(home.path(), &[guests::PROBE]);
    let slow = {
        let url = skiff.at("/sleep?2000");
        std::thread::spawn(move || get(&url))
    };
    // SIGTERM while the guest sleeps.
    let stderr = skiff.wait_for_stderr("sleeping 2000");
    assert!(!stderr.contains("awake"), "{stderr}");
    let status = skiff.terminate();
    assert!(status.success(), "skiff exits cleanly: {status}");
    assert_eq!(slow.join().unwrap(), (200, "slept 2000ms".to_string()));
}

// === bad input ===

#[test]
fn manifest_syntax_errors_name_file_line_and_field() {
    let home = temp_dir();
    let dir = temp_dir();
    let manifest = write_manifest(
        dir.path(),
        "[app]\nname = \"x\"\n\n[component.a]\nsource = \"a.wasm\"\nroutes = \"/\"\n",
    );
    let stderr = expect_failure(home.path(), &["run", manifest.to_str().unwrap()]);
    assert_eq!(
        stderr,
        format!(
            "error: {}:6:1: unknown field `routes`, expected one of `source`, `build`, `workdir`, `route`, `env`, `files`, `allowed_outbound_hosts`, `allow_callers`, `limits`, `dependencies`, `scale`, `placement`, `health`, `rollout`, `request_timeout`\n",
            manifest.display()
        )
    );

    std::fs::write(&manifest, "[app\nname = 1\n").unwrap();
    let stderr = expect_failure(home.path(), &["run", manifest.to_str().unwrap()]);
    assert_eq!(
        stderr,
        format!(
            "error: {}:1:5: unclosed table, expected `]`\n",
            manifest.display()
        )
    );
}

#[test]
fn missing_and_non_component_sources_are_refused_by_name() {
    let home = temp_dir();
    let dir = temp_dir();
    let app = |source: &str| {
        format!("[app]\nname = \"bad\"\n[component.web]\nsource = {source:?}\nroute = \"/...\"\n")
    };
    let manifest = write_manifest(dir.path(), &app("missing.wasm"));
    let stderr = expect_failure(home.path(), &["run", manifest.to_str().unwrap()]);
    assert!(stderr.contains("component \"web\""), "{stderr}");
    assert!(stderr.contains("missing.wasm"), "{stderr}");
    assert!(stderr.contains("no such file"), "{stderr}");

    std::fs::write(dir.path().join("text.wasm"), "not wasm at all").unwrap();
    std::fs::write(&manifest, app("text.wasm")).unwrap();
    let stderr = expect_failure(home.path(), &["run", manifest.to_str().unwrap()]);
    assert!(stderr.contains("is not a WebAssembly file"), "{stderr}");

    // The smallest valid core module: header only.
    std::fs::write(dir.path().join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    std::fs::write(&manifest, app("core.wasm")).unwrap();
    let stderr = expect_failure(home.path(), &["run", manifest.to_str().unwrap()]);
    assert!(
        stderr.contains("is a core Wasm module, not a component"),
        "{stderr}"
    );

    let truncated = std::fs::read(guests::HELLO).unwrap();
    std::fs::write(
        dir.path().join("cut.wasm"),
        &truncated[..truncated.len() / 2],
    )
    .unwrap();
    std::fs::write(&manifest, app("cut.wasm")).unwrap();
    let stderr = expect_failure(home.path(), &["run", manifest.to_str().unwrap()]);
    assert!(stderr.contains("is not a valid Wasm component"), "{stderr}");
}

#[test]
fn a_component_with_an_unknown_import_is_refused_naming_it() {
    let home = temp_dir();
    let stderr = expect_failure(home.path(), &["run", guests::UNKNOWN_IMPORT]);
    assert!(
        stderr.contains("imports skiff-test:missing/oracle"),
        "{stderr}"
    );
    assert!(stderr.contains("which Skiff does not provide"), "{stderr}");
    // The clear half only: not wasmtime's words about its linker.
    assert!(
        !stderr.contains("implementation is missing") && !stderr.contains("linker"),
        "{stderr}"
    );
}

#[test]
fn a_port_in_use_is_reported() {
    let home = temp_dir();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let stderr = expect_failure(home.path(), &["run", guests::HELLO, "--listen", &addr]);
    assert!(stderr.contains(&addr), "{stderr}");
    assert!(stderr.contains("already in use"), "{stderr}");
}

#[test]
fn paths_without_an_app_are_refused() {
    let home = temp_dir();
    let empty = temp_dir();
    let stderr = expect_failure(home.path(), &["run", empty.path().to_str().unwrap()]);
    assert!(stderr.contains("has no skiff.toml"), "{stderr}");
    let stderr = expect_failure(home.path(), &["run", "/no/such/place"]);
    assert!(stderr.contains("/no/such/place does not exist"), "{stderr}");
}

#[test]
fn build_failures_name_the_component() {
    let home = temp_dir();
    let dir = temp_dir();
    let manifest = write_manifest(
        dir.path(),
        "[app]\nname = \"b\"\n[component.broken]\nsource = \"x.wasm\"\nbuild = \"exit 3\"\n",
    );
    let stderr = expect_failure(home.path(), &["run", "--build", manifest.to_str().unwrap()]);
    assert!(
        stderr.contains("build of component \"broken\" failed"),
        "{stderr}"
    );
    // A build that succeeds without writing the component's source.
    let manifest = write_manifest(
        dir.path(),
        "[app]\nname = \"b\"\n[component.quiet]\nsource = \"x.wasm\"\nbuild = \"true\"\n",
    );
    let stderr = expect_failure(home.path(), &["build", manifest.to_str().unwrap()]);
    assert!(
        stderr.contains("did not write its source") && stderr.contains("x.wasm"),
        "{stderr}"
    );
}

#[test]
fn a_request_head_not_complete_within_10s_is_cut_off_while_others_are_served() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let home = temp_dir();
    let skiff = Running::start(home.path(), &[guests::HELLO]);
    let addr = skiff.url.trim_start_matches("http://").to_string();
    // One client stops halfway through its head; another trickles it a
    // byte every 300 ms. Each reports when the server hung up, and what
    // it answered first.
    let slow = |trickle: bool| {
        let addr = addr.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut stream = std::net::TcpStream::connect(&addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(40)))
                .unwrap();
            stream.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n").unwrap();
            if trickle {
                let mut writer = stream.try_clone().unwrap();
                std::thread::spawn(move || {
                    for byte in b"x-slow: ".iter().cycle() {
                        if writer.write_all(&[*byte]).is_err() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(300));
                    }
                });
            }
            // EOF, or a reset when the trickle wrote after the close.
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer);
            (started.elapsed(), answer)
        })
    };
    let stalled = slow(false);
    let trickling = slow(true);
    // Meanwhile the server answers everyone else at once.
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(
            get(&skiff.at("/")),
            (200, "Hello from Skiff!\n".to_string())
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a neighbour waited {:?}",
            started.elapsed()
        );
    }
    for (name, client) in [("stalled", stalled), ("trickling", trickling)] {
        let (after, answer) = client.join().unwrap();
        assert!(
            answer.is_empty(),
            "{name}: the server answered {:?}",
            String::from_utf8_lossy(&answer)
        );
        // The server's clock starts after the client's: never before 10 s.
        assert!(
            after >= Duration::from_secs(10),
            "{name}: cut off after {after:?}, before the 10 s the head may take"
        );
        assert!(
            after < Duration::from_secs(25),
            "{name}: cut off only after {after:?}"
        );
    }
}

#[test]
fn sigterm_waits_at_most_30s_for_a_request_that_never_finishes() {
    use std::time::{Duration, Instant};
    let home = temp_dir();
    let dir = temp_dir();
    let manifest = write_manifest(
        dir.path(),
        &format!(
            "[app]\nname = \"stuck\"\n[component.probe]\nsource = {}\nroute = \"/...\"\n[component.probe.limits]\ntimeout = \"10m\"\n",
            toml_path(guests::PROBE)
        ),
    );
    let mut skiff = Running::start(home.path(), &[manifest.to_str().unwrap()]);
    let addr = skiff.url.trim_start_matches("http://").to_string();
    let request = |ms: u32| {
        let url = skiff.at(&format!("/sleep?{ms}"));
        std::thread::spawn(move || {
            http()
                .get(&url)
                .call()
                .map(|mut r| (r.status().as_u16(), r.body_mut().read_to_string().unwrap()))
        })
    };
    let stuck = request(600_000);
    let finishing = request(3_000);
    skiff.wait_for_stderr("[probe] sleeping 600000");
    skiff.wait_for_stderr("[probe] sleeping 3000");
    // Taken before the signal: the drain cannot have begun earlier.
    let signalled = Instant::now();
    skiff.signal("TERM");
    skiff.wait_for_stderr("shutting down: finishing in-flight requests");
    wait_until(Duration::from_secs(5), "the listener to close", || {
        std::net::TcpStream::connect(&addr).is_err().then_some(())
    });
    assert_eq!(
        finishing.join().unwrap().expect("the finishing request"),
        (200, "slept 3000ms".to_string()),
        "a request in flight finishes during the drain"
    );
    let status = skiff.wait_exit(Duration::from_secs(60));
    let took = signalled.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        took >= Duration::from_secs(30),
        "exited after {took:?}, before the 30 s drain bound"
    );
    assert!(took < Duration::from_secs(45), "exited only after {took:?}");
    let stderr = skiff.stderr();
    assert!(
        stderr.contains("some connections did not finish within 30s"),
        "{stderr}"
    );
    assert!(stderr.lines().any(|l| l == "stopped"), "{stderr}");
    assert!(
        stuck.join().unwrap().is_err(),
        "the stuck request was cut off, not answered"
    );
}

/// `skiff new NAME --lang LANG` in a fresh directory, then `skiff run
/// NAME --build`: the app answers its greeting.
fn new_app_builds_and_serves(lang: &str, greeting: &str) {
    let home = temp_dir();
    let dir = temp_dir();
    let created = skiff(home.path())
        .args(["new", "shop-front", "--lang", lang])
        .current_dir(dir.path())
        .output()
        .expect("running skiff new");
    let said = String::from_utf8_lossy(&created.stdout);
    assert!(
        created.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&created.stderr)
    );
    assert!(said.contains("run ./shop-front --build"), "{said}");
    let app = dir.path().join("shop-front");
    let served = Running::start(home.path(), &[app.to_str().unwrap(), "--build"]);
    let (status, body) = get(&served.at("/orders"));
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with(greeting), "{body}");

    // A second `new` of the same name loses nothing.
    let again = skiff(home.path())
        .args(["new", "shop-front"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists and is not empty"));
}

#[test]
fn a_new_rust_app_builds_and_serves_outside_this_repository() {
    new_app_builds_and_serves("rust", "Hello from shop-front! You asked for /orders");
}

#[test]
fn a_new_javascript_app_builds_and_serves() {
    new_app_builds_and_serves("js", "Hello from shop-front!");
}

#[test]
fn new_refuses_a_name_an_app_cannot_have() {
    let home = temp_dir();
    let stderr = expect_failure(home.path(), &["new", "Shop_Front"]);
    assert!(
        stderr.contains("cannot name an app \"Shop_Front\""),
        "{stderr}"
    );
}

#[test]
fn completions_are_printed_for_each_shell() {
    let home = temp_dir();
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef skiff"),
        ("fish", "complete -c skiff"),
    ] {
        let output = skiff(home.path())
            .args(["completions", shell])
            .output()
            .unwrap();
        let script = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && script.contains(marker),
            "{shell}: {script}"
        );
        assert!(script.contains("rollback"), "{shell} completes subcommands");
    }
    let stderr = expect_failure(home.path(), &["completions", "tcsh"]);
    assert!(stderr.contains("tcsh"), "{stderr}");
}

#[test]
fn route_parameters_match_one_segment_and_reach_the_guest_in_headers() {
    let dir = temp_dir();
    write_manifest(
        dir.path(),
        &format!(
            "[app]\nname = \"orders\"\n\
             [component.order]\nsource = {probe}\nroute = \"/users/:user/orders/:id/...\"\n\
             [component.user]\nsource = {probe}\nroute = \"/users/:user/status\"\n\
             [component.me]\nsource = {probe}\nroute = \"/users/me/status\"\n",
            probe = toml_path(guests::PROBE)
        ),
    );
    let home = temp_dir();
    let served = Running::start(home.path(), &[dir.path().to_str().unwrap()]);
    let addr = served.url.clone();
    // A client's own parameter header is replaced by the platform's.
    let (status, headers) = support::cluster::get_with_headers(
        &addr,
        "/users/ann/orders/42/headers",
        "skiff-path-param-id: 7\r\nskiff-path-param-other: x\r\n\
         cookie: theme=dark; skiff_session=0123abcd\r\n",
    );
    assert_eq!(status, 200, "{headers}");
    assert!(
        headers.contains("skiff-path-param-user: ann\n"),
        "{headers}"
    );
    assert!(headers.contains("skiff-path-param-id: 42\n"), "{headers}");
    assert!(
        !headers.contains(": 7\n") && !headers.contains("param-other"),
        "{headers}"
    );
    // The dashboard's session cookie is the platform's: never a guest's.
    assert!(headers.contains("cookie: theme=dark\n"), "{headers}");
    assert!(!headers.contains("skiff_session"), "{headers}");
    // A literal segment beats a parameter; a parameter takes one segment.
    let (status, body) = get(&served.at("/users/me/status?204"));
    assert_eq!(status, 204, "{body}");
    assert_eq!(get(&served.at("/users/ann/status?201")).0, 201);
    assert_eq!(get(&served.at("/users/ann/orders")).0, 404);
    assert_eq!(get(&served.at("/users/a/b/status")).0, 404);
}

#[test]
fn a_route_parameter_without_a_name_is_refused_at_load() {
    let dir = temp_dir();
    write_manifest(
        dir.path(),
        &format!(
            "[app]\nname = \"orders\"\n[component.order]\nsource = {}\nroute = \"/orders/:/...\"\n",
            toml_path(guests::PROBE)
        ),
    );
    let stderr = expect_failure(temp_dir().path(), &["run", dir.path().to_str().unwrap()]);
    assert!(
        stderr.contains("invalid route \"/orders/:/...\"") && stderr.contains("needs a name"),
        "{stderr}"
    );
}
