//! End to end: packing apps into content-addressed packages, pushing them to
//! a real OCI registry (the CNCF distribution registry, Debian's
//! `docker-registry`, started on loopback by these tests), pulling them into
//! a clean Skiff home, running them, and refusing damaged content.

mod support;

use skiff_test_guests as guests;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

/// A registry on a free loopback port with its own storage; stopped when
/// dropped.
struct TestRegistry {
    child: Child,
    addr: String,
    storage: tempfile::TempDir,
    /// Its config, and its access log (`access.log`).
    config: tempfile::TempDir,
}

impl TestRegistry {
    fn start() -> TestRegistry {
        TestRegistry::start_with_auth(None)
    }

    /// With `Some((user, password))`, the registry demands basic auth.
    fn start_with_auth(user: Option<(&str, &str)>) -> TestRegistry {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let storage = temp_dir();
        let config_dir = temp_dir();
        let config = config_dir.path().join("config.yml");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            storage.path().display()
        );
        if let Some((user, password)) = user {
            let htpasswd = config_dir.path().join("htpasswd");
            let hash = bcrypt::hash(password, 4).unwrap();
            std::fs::write(&htpasswd, format!("{user}:{hash}\n")).unwrap();
            yaml += &format!(
                "auth:\n  htpasswd:\n    realm: skiff-test\n    path: {}\n",
                htpasswd.display()
            );
        }
        std::fs::write(&config, yaml).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            // The registry writes its access log, a line per request, on
            // stdout.
            .stdout(std::fs::File::create(config_dir.path().join("access.log")).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry must be installed (scripts/test.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "the registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        TestRegistry {
            child,
            addr,
            storage,
            config: config_dir,
        }
    }

    /// The requests the registry has answered so far whose request line
    /// (`METHOD /path...`) starts with `method` and contains `path`.
    fn requests(&self, method: &str, path: &str) -> usize {
        std::fs::read_to_string(self.config.path().join("access.log"))
            .unwrap()
            .lines()
            .filter_map(|line| line.split('"').nth(1))
            .filter(|request| request.starts_with(&format!("{method} ")) && request.contains(path))
            .count()
    }

    /// Waits until the registry has logged `count` manifest uploads: every
    /// request of a push that made them is in the log by then.
    fn wait_manifest_puts(&self, count: usize) {
        wait_until(
            Duration::from_secs(10),
            &format!("{count} manifest uploads in the registry's log"),
            || (self.requests("PUT", "/manifests/") >= count).then_some(()),
        );
    }

    /// The registry's copy of blob `hex`.
    fn blob_file(&self, hex: &str) -> PathBuf {
        self.storage
            .path()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `skiff ARGS` expecting success; returns stdout.
fn skiff_ok(home: &Path, args: &[&str]) -> String {
    let output = skiff(home).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "skiff {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The `sha256:...` in a `packed ...`/`pulled ...` line.
fn digest_in(output: &str) -> String {
    output
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("no digest in {output:?}"))
        .to_string()
}

/// Packs the static app into `home` and tags it as `REGISTRY/acme/site:1.0.0`;
/// returns that reference.
fn pack_and_tag(home: &Path, dir: &Path, registry: &TestRegistry) -> String {
    skiff_ok(home, &["pack", static_app(dir).to_str().unwrap()]);
    let remote = format!("{}/acme/site:1.0.0", registry.addr);
    skiff_ok(home, &["tag", "site:1.0.0", &remote]);
    remote
}

/// The sha256 of a file, in hex.
fn sha256_hex(path: &str) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A copy of the static-files example whose source is the built component.
fn static_app(dir: &Path) -> PathBuf {
    let public = dir.join("public");
    std::fs::create_dir_all(public.join("sub")).unwrap();
    std::fs::write(public.join("hello.txt"), "hello from a package\n").unwrap();
    std::fs::write(public.join("sub/deep.txt"), "deep\n").unwrap();
    write_manifest(
        dir,
        &format!(
            "[app]\nname = \"site\"\nversion = \"1.0.0\"\n\n[component.files]\nsource = {}\nroute = \"/...\"\nfiles = [{{ source = \"public\", destination = \"/www\" }}]\n",
            toml_path(guests::STATIC_FILES)
        ),
    )
}

#[test]
fn packing_is_reproducible() {
    let home = temp_dir();
    let first = temp_dir();
    let second = temp_dir();
    let a = digest_in(&skiff_ok(
        home.path(),
        &["pack", static_app(first.path()).to_str().unwrap()],
    ));
    std::thread::sleep(Duration::from_millis(1100));
    let b = digest_in(&skiff_ok(
        home.path(),
        &["pack", static_app(second.path()).to_str().unwrap()],
    ));
    assert_eq!(
        a, b,
        "same inputs in another place and time give the same digest"
    );

    let other_home = temp_dir();
    let c = digest_in(&skiff_ok(
        other_home.path(),
        &["pack", static_app(first.path()).to_str().unwrap()],
    ));
    assert_eq!(a, c);

    let images = skiff_ok(home.path(), &["images"]);
    assert!(images.contains("site:1.0.0"), "{images}");
    assert!(images.contains(&a["sha256:".len()..][..12]), "{images}");
}

#[test]
fn push_pull_run_round_trip_through_a_registry() {
    let registry = TestRegistry::start();
    let home = temp_dir();
    let dir = temp_dir();
    let packed = digest_in(&skiff_ok(
        home.path(),
        &["pack", static_app(dir.path()).to_str().unwrap()],
    ));
    let remote = format!("{}/acme/site:1.0.0", registry.addr);
    skiff_ok(home.path(), &["tag", "site:1.0.0", &remote]);
    let pushed = digest_in(&skiff_ok(home.path(), &["push", &remote]));
    assert_eq!(pushed, packed);
    registry.wait_manifest_puts(1);
    // Config, component and file tree: each blob is uploaded once (a
    // POST starting the upload, a PUT completing it).
    let blob_uploads = |registry: &TestRegistry| {
        (
            registry.requests("POST", "/blobs/uploads/"),
            registry.requests("PUT", "/blobs/uploads/"),
        )
    };
    assert_eq!(blob_uploads(&registry), (3, 3));
    // Pushing again uploads nothing new and succeeds: it finds each blob
    // there and uploads only the manifest.
    let checked = registry.requests("HEAD", "/blobs/sha256:");
    skiff_ok(home.path(), &["push", &remote]);
    registry.wait_manifest_puts(2);
    assert_eq!(blob_uploads(&registry), (3, 3), "blobs uploaded again");
    assert_eq!(registry.requests("HEAD", "/blobs/sha256:"), checked + 3);

    let clean = temp_dir();
    let pulled = digest_in(&skiff_ok(clean.path(), &["pull", &remote]));
    assert_eq!(pulled, packed, "the digest survives the round trip");
    let skiff = Running::start(clean.path(), &[&remote]);
    assert_eq!(
        get(&skiff.at("/hello.txt")),
        (200, "hello from a package\n".to_string())
    );
    assert_eq!(get(&skiff.at("/sub/deep.txt")), (200, "deep\n".to_string()));
    drop(skiff);

    // `skiff run REF` pulls on its own into an empty home.
    let fresh = temp_dir();
    let skiff = Running::start(fresh.path(), &[&remote]);
    assert_eq!(get(&skiff.at("/hello.txt")).0, 200);
}

#[test]
fn a_tampered_blob_in_the_store_is_refused_by_digest() {
    let home = temp_dir();
    let dir = temp_dir();
    skiff_ok(
        home.path(),
        &["pack", static_app(dir.path()).to_str().unwrap()],
    );
    let wasm_digest = sha256_hex(guests::STATIC_FILES);
    let blob = home.path().join("store/blobs/sha256").join(&wasm_digest);
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&blob, &bytes).unwrap();

    let stderr = expect_failure(home.path(), &["run", "site:1.0.0"]);
    assert!(
        stderr.contains(&format!("blob sha256:{wasm_digest} is corrupt")),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&blob).unwrap(),
        bytes,
        "the store is left as it was"
    );
}

#[test]
fn a_tampered_blob_in_the_registry_is_refused_on_pull() {
    let registry = TestRegistry::start();
    let home = temp_dir();
    let dir = temp_dir();
    let remote = pack_and_tag(home.path(), dir.path(), &registry);
    skiff_ok(home.path(), &["push", &remote]);

    let hex = sha256_hex(guests::STATIC_FILES);
    let served = registry.blob_file(&hex);
    let mut bytes = std::fs::read(&served).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&served, &bytes).unwrap();

    let clean = temp_dir();
    let stderr = expect_failure(clean.path(), &["pull", &remote]);
    assert!(stderr.contains(&format!("sha256:{hex}")), "{stderr}");
    assert!(
        !clean.path().join("store/blobs/sha256").join(&hex).exists(),
        "the mismatched blob never enters the store"
    );
    assert!(!skiff_ok(clean.path(), &["images"]).contains("acme/site"));
}

#[test]
fn registry_errors_say_what_is_wrong() {
    let registry = TestRegistry::start();
    let home = temp_dir();
    let stderr = expect_failure(
        home.path(),
        &["pull", &format!("{}/acme/none:9.9.9", registry.addr)],
    );
    assert!(stderr.contains("not found"), "{stderr}");

    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    drop(registry);
    let stderr = expect_failure(home.path(), &["pull", &format!("{dead}/acme/site:1.0.0")]);
    assert!(stderr.contains("cannot reach registry"), "{stderr}");

    let stderr = expect_failure(home.path(), &["push", "127.0.0.1:1/never/tagged:1"]);
    assert!(stderr.contains("skiff tag"), "{stderr}");
    let stderr = expect_failure(home.path(), &["run", "nothing-here:1.0"]);
    assert!(
        stderr.contains("no package \"nothing-here:1.0\""),
        "{stderr}"
    );
}

#[test]
fn a_registry_with_auth_wants_credentials_from_login_or_the_environment() {
    let registry = TestRegistry::start_with_auth(Some(("alice", "s3cret")));
    let home = temp_dir();
    let dir = temp_dir();
    let remote = pack_and_tag(home.path(), dir.path(), &registry);

    let stderr = expect_failure(home.path(), &["push", &remote]);
    assert!(stderr.contains("refused access"), "{stderr}");
    assert!(stderr.contains("skiff login"), "{stderr}");

    let login = |password: &str| {
        let mut child = skiff(home.path())
            .args(["login", &registry.addr, "-u", "alice", "--password-stdin"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(
            child.stdin.as_mut().unwrap(),
            format!("{password}\n").as_bytes(),
        )
        .unwrap();
        child.wait_with_output().unwrap()
    };
    let wrong = login("guess");
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("refused"));
    assert!(login("s3cret").status.success());
    skiff_ok(home.path(), &["push", &remote]);

    let clean = temp_dir();
    let stderr = expect_failure(clean.path(), &["pull", &remote]);
    assert!(stderr.contains("refused access"), "{stderr}");
    // Credentials in the environment must name their registry.
    let unscoped = skiff(clean.path())
        .args(["pull", &remote])
        .env("SKIFF_REGISTRY_USERNAME", "alice")
        .env("SKIFF_REGISTRY_PASSWORD", "s3cret")
        .output()
        .unwrap();
    assert!(!unscoped.status.success());
    let stderr = String::from_utf8_lossy(&unscoped.stderr);
    assert!(stderr.contains("set SKIFF_REGISTRY"), "{stderr}");
    let output = skiff(clean.path())
        .args(["pull", &remote])
        .env("SKIFF_REGISTRY", &registry.addr)
        .env("SKIFF_REGISTRY_USERNAME", "alice")
        .env("SKIFF_REGISTRY_PASSWORD", "s3cret")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A loopback server speaking just enough of the distribution API for a
/// test: each request's head is recorded (with its `Authorization`) and
/// answered by `respond(path, stream)` on a thread of its own.
struct FakeRegistry {
    addr: String,
    /// `"PATH AUTHORIZATION"` per request, the header empty when absent.
    seen: Arc<Mutex<Vec<String>>>,
}

impl FakeRegistry {
    fn start(respond: impl Fn(&str, &mut TcpStream) + Send + Sync + 'static) -> FakeRegistry {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let respond = Arc::new(respond);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                let (record, respond) = (record.clone(), respond.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut request = String::new();
                    reader.read_line(&mut request).unwrap();
                    let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
                    let mut authorization = String::new();
                    let mut line = String::new();
                    while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                        if let Some((name, value)) = line.split_once(':')
                            && name.eq_ignore_ascii_case("authorization")
                        {
                            authorization = value.trim().to_string();
                        }
                        line.clear();
                    }
                    record
                        .lock()
                        .unwrap()
                        .push(format!("{path} {authorization}"));
                    respond(&path, &mut stream);
                });
            }
        });
        FakeRegistry { addr, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

fn respond(stream: &mut TcpStream, head: &str, body: &[u8]) {
    let _ = stream.write_all(
        format!(
            "HTTP/1.1 {head}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    let _ = stream.write_all(body);
}

/// Writes a chunked body of zeros until the reader hangs up; returns the
/// bytes written.
fn endless(stream: &mut TcpStream, content_type: &str) -> u64 {
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    if stream.write_all(head.as_bytes()).is_err() {
        return 0;
    }
    let chunk = [b'0'; 64 << 10];
    let mut sent = 0u64;
    while stream
        .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
        .and_then(|()| stream.write_all(&chunk))
        .and_then(|()| stream.write_all(b"\r\n"))
        .is_ok()
    {
        sent += chunk.len() as u64;
    }
    sent
}

fn sha256_of(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

#[test]
fn a_hostile_registry_cannot_send_more_or_less_than_it_declares() {
    let config = b"{}".to_vec();
    let layer = vec![b'a'; 100];
    let (config_digest, layer_digest) = (sha256_of(&config), sha256_of(&layer));
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.skiff.package.config.v1+json","digest":"{config_digest}","size":2}},"layers":[{{"mediaType":"application/wasm","digest":"{layer_digest}","size":100}}]}}"#
    );
    // Bytes the endless answers managed to write before the puller hung up.
    let endless_sent = Arc::new(Mutex::new(Vec::new()));
    let sent = endless_sent.clone();
    let registry = FakeRegistry::start(move |path, stream| {
        let repo = path.split('/').nth(2).unwrap_or("");
        if path == "/v2/" {
            respond(stream, "200 OK", b"{}");
        } else if path.contains("/manifests/") && repo == "bigmanifest" {
            let n = endless(stream, "application/vnd.oci.image.manifest.v1+json");
            sent.lock().unwrap().push(n);
        } else if path.contains("/manifests/") {
            respond(stream, "200 OK", manifest.as_bytes());
        } else if path.ends_with(&config_digest) {
            respond(stream, "200 OK", &config);
        } else if repo == "endless" {
            let n = endless(stream, "application/octet-stream");
            sent.lock().unwrap().push(n);
        } else if repo == "liar" {
            respond(stream, "200 OK", &vec![b'a'; 10 << 20]);
        } else if repo == "short" {
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n32\r\n",
            );
            let _ = stream.write_all(&[b'a'; 50]);
            let _ = stream.write_all(b"\r\n0\r\n\r\n");
        } else {
            respond(stream, "404 Not Found", b"{}");
        }
    });
    let home = temp_dir();
    let pull = |repo: &str| {
        let started = Instant::now();
        let stderr = expect_failure(
            home.path(),
            &["pull", &format!("{}/{repo}/pkg:1", registry.addr)],
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{repo} took {:?}",
            started.elapsed()
        );
        stderr
    };
    let stderr = pull("endless");
    assert!(
        stderr.contains("more bytes than the 100 its descriptor declares"),
        "{stderr}"
    );
    let stderr = pull("liar");
    assert!(stderr.contains("sends 10485760 bytes for blob"), "{stderr}");
    assert!(stderr.contains("declares 100"), "{stderr}");
    let stderr = pull("short");
    assert!(
        stderr.contains("ended after 50 bytes, but its descriptor declares 100"),
        "{stderr}"
    );
    let stderr = pull("bigmanifest");
    assert!(stderr.contains("larger than 4194304 bytes"), "{stderr}");

    // The pullers hung up soon: what the endless answers wrote is bounded
    // by socket buffers, not by the registry's will.
    wait_until_true(Duration::from_secs(20), || {
        endless_sent.lock().unwrap().len() == 2
    });
    for n in endless_sent.lock().unwrap().iter() {
        assert!(
            *n < 64 << 20,
            "the registry wrote {n} bytes before the pull stopped"
        );
    }
    // Nothing of the refused layer, nothing half written, no tag.
    let store = home.path().join("store");
    assert!(
        !store
            .join("blobs/sha256")
            .join(&layer_digest["sha256:".len()..])
            .exists()
    );
    assert_eq!(
        std::fs::read_dir(store.join("incoming")).unwrap().count(),
        0
    );
    assert!(!skiff_ok(home.path(), &["images"]).contains("pkg"));
}

fn wait_until_true(limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn credentials_go_only_to_the_registry_they_are_for() {
    let private = TestRegistry::start_with_auth(Some(("alice", "s3cret")));
    // Asks every caller for basic credentials and records what it gets.
    let recorder = FakeRegistry::start(|path, stream| {
        if path == "/v2/" {
            let _ = stream.write_all(b"HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Basic realm=\"fake\"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        } else {
            respond(stream, "404 Not Found", b"{}");
        }
    });
    let home = temp_dir();
    let mut login = skiff(home.path())
        .args(["login", &private.addr, "-u", "alice", "--password-stdin"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    login
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"s3cret\n")
        .unwrap();
    assert!(login.wait().unwrap().success());

    // Manifests from an untrusted repository naming the recorder, as an
    // `oci://` source and as a dependency.
    let (source_dir, dependency_dir) = (temp_dir(), temp_dir());
    let by_source = write_manifest(
        source_dir.path(),
        &format!(
            "[app]\nname = \"leak\"\n[component.web]\nsource = \"oci://{}/tools/hello:1.0\"\nroute = \"/...\"\n",
            recorder.addr
        ),
    );
    let by_dependency = write_manifest(
        dependency_dir.path(),
        &format!(
            "[app]\nname = \"leak\"\n[component.web]\nsource = {}\nroute = \"/...\"\n[component.web.dependencies]\n\"acme:lib/thing\" = \"oci://{}/tools/lib:1.0\"\n",
            toml_path(guests::HELLO),
            recorder.addr
        ),
    );
    let pack = |env: &[(&str, &str)]| {
        let mut stderr = String::new();
        for manifest in [&by_source, &by_dependency] {
            let mut command = skiff(home.path());
            command.args(["pack", manifest.to_str().unwrap()]);
            for (name, value) in env {
                command.env(name, value);
            }
            let output = command.output().unwrap();
            assert!(!output.status.success());
            stderr += &String::from_utf8_lossy(&output.stderr);
        }
        stderr
    };
    let private_env = [
        ("SKIFF_REGISTRY", private.addr.as_str()),
        ("SKIFF_REGISTRY_USERNAME", "alice"),
        ("SKIFF_REGISTRY_PASSWORD", "s3cret"),
    ];
    pack(&private_env);
    let seen = recorder.seen();
    assert!(
        seen.iter().any(|r| r.contains("/tools/hello/manifests/")),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|r| r.contains("/tools/lib/manifests/")),
        "{seen:?}"
    );
    assert!(
        seen.iter().all(|r| r.ends_with(' ')),
        "credentials leaked: {seen:?}"
    );

    // Unscoped credentials are refused before any registry is contacted.
    let before = recorder.seen().len();
    let stderr = pack(&private_env[1..]);
    assert!(stderr.contains("set SKIFF_REGISTRY"), "{stderr}");
    assert_eq!(recorder.seen().len(), before);

    // The recorder does see credentials given for it: the check above
    // would notice a leak.
    let recorder_env = [
        ("SKIFF_REGISTRY", recorder.addr.as_str()),
        ("SKIFF_REGISTRY_USERNAME", "bob"),
        ("SKIFF_REGISTRY_PASSWORD", "hunter2"),
    ];
    pack(&recorder_env);
    let seen = recorder.seen();
    assert!(
        seen[before..].iter().any(|r| r.contains("Basic ")),
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|r| r.contains("YWxpY2U6czNjcmV0")),
        "alice's credentials leaked: {seen:?}"
    );
}

/// Publishes `wasm` as a single component in the CNCF Wasm OCI layout,
/// speaking the distribution API directly, as other Wasm tooling would.
fn publish_component(registry: &TestRegistry, repo: &str, tag: &str, wasm: &[u8]) {
    use sha2::Digest as _;
    let agent = http();
    let base = format!("http://{}/v2/{repo}", registry.addr);
    let upload = |bytes: &[u8]| -> (String, usize) {
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)));
        let started = agent
            .post(&format!("{base}/blobs/uploads/"))
            .send_empty()
            .unwrap();
        assert_eq!(started.status(), 202);
        let location = started
            .headers()
            .get("location")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let location = if location.starts_with("http") {
            location
        } else {
            format!("http://{}{location}", registry.addr)
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let done = agent
            .put(&format!("{location}{separator}digest={digest}"))
            .header("content-type", "application/octet-stream")
            .send(bytes)
            .unwrap();
        assert_eq!(done.status(), 201);
        (digest, bytes.len())
    };
    let config = br#"{"architecture":"wasm","os":"wasip2"}"#;
    let (config_digest, config_size) = upload(config);
    let (layer_digest, layer_size) = upload(wasm);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/wasm","config":{{"mediaType":"application/vnd.wasm.config.v0+json","digest":"{config_digest}","size":{config_size}}},"layers":[{{"mediaType":"application/wasm","digest":"{layer_digest}","size":{layer_size}}}]}}"#
    );
    let put = agent
        .put(&format!("{base}/manifests/{tag}"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .send(manifest.as_bytes())
        .unwrap();
    assert_eq!(put.status(), 201);
}

#[test]
fn a_component_source_may_be_an_oci_artifact_published_by_other_tooling() {
    let registry = TestRegistry::start();
    publish_component(
        &registry,
        "tools/hello",
        "1.0",
        &std::fs::read(guests::HELLO).unwrap(),
    );
    let home = temp_dir();
    let dir = temp_dir();
    let manifest = write_manifest(
        dir.path(),
        &format!(
            "[app]\nname = \"remote\"\n[component.hello]\nsource = \"oci://{}/tools/hello:1.0\"\nroute = \"/...\"\nenv = {{ GREETING = \"Remote\" }}\n",
            registry.addr
        ),
    );
    let skiff = Running::start(home.path(), &[manifest.to_str().unwrap()]);
    assert_eq!(
        get(&skiff.at("/")),
        (200, "Remote from Skiff!\n".to_string())
    );
    drop(skiff);
    // Packing embeds the fetched component.
    let packed = skiff_ok(home.path(), &["pack", manifest.to_str().unwrap()]);
    assert!(packed.contains("remote:0.0.0"), "{packed}");

    // A Skiff package is not a single component.
    skiff_ok(
        home.path(),
        &[
            "tag",
            "remote:0.0.0",
            &format!("{}/apps/remote:1", registry.addr),
        ],
    );
    skiff_ok(
        home.path(),
        &["push", &format!("{}/apps/remote:1", registry.addr)],
    );
    std::fs::write(
        &manifest,
        format!(
            "[app]\nname = \"remote\"\n[component.hello]\nsource = \"oci://{}/apps/remote:1\"\nroute = \"/...\"\n",
            registry.addr
        ),
    )
    .unwrap();
    let stderr = expect_failure(home.path(), &["run", manifest.to_str().unwrap()]);
    assert!(stderr.contains("component \"hello\""), "{stderr}");
    assert!(
        stderr.contains("is not a Wasm component artifact"),
        "{stderr}"
    );
}

#[test]
fn rmi_removes_the_tag_and_unshared_blobs() {
    let home = temp_dir();
    let dir = temp_dir();
    let digest = digest_in(&skiff_ok(
        home.path(),
        &["pack", static_app(dir.path()).to_str().unwrap()],
    ));
    skiff_ok(home.path(), &["tag", "site:1.0.0", "site:stable"]);
    skiff_ok(home.path(), &["rmi", "site:1.0.0"]);
    let blobs = home.path().join("store/blobs/sha256");
    assert!(
        blobs.join(&digest["sha256:".len()..]).exists(),
        "still tagged site:stable"
    );
    skiff_ok(home.path(), &["rmi", "site:stable"]);
    assert_eq!(
        std::fs::read_dir(&blobs).unwrap().count(),
        0,
        "no blob left behind"
    );
    assert!(!skiff_ok(home.path(), &["images"]).contains("site"));
}

#[test]
fn dependencies_are_composed_for_run_and_pack() {
    let home = temp_dir();
    let app = format!("{}/greeting", guests::EXAMPLES_DIR);
    let skiff = Running::start(home.path(), &[&app]);
    assert_eq!(
        get(&skiff.at("/?name=Ada")),
        (
            200,
            "Hello, Ada! (from the greeter library component)\n".to_string()
        )
    );
    drop(skiff);

    let packed = skiff_ok(home.path(), &["pack", &app]);
    assert!(packed.contains("greeting:0.1.0"), "{packed}");
    let skiff = Running::start(home.path(), &["greeting:0.1.0"]);
    assert_eq!(get(&skiff.at("/?name=Bo")).0, 200);
}

#[test]
fn a_dependency_that_does_not_fit_is_refused_by_name() {
    let home = temp_dir();
    let dir = temp_dir();
    let app = |import: &str, library: &str| {
        format!(
            "[app]\nname = \"deps\"\n[component.web]\nsource = {}\nroute = \"/...\"\n[component.web.dependencies]\n{import:?} = {}\n",
            toml_path(guests::GREETING),
            toml_path(library)
        )
    };
    let manifest = write_manifest(
        dir.path(),
        &app("skiff-examples:greeter/greet", guests::HELLO),
    );
    let stderr = expect_failure(home.path(), &["run", manifest.to_str().unwrap()]);
    assert!(stderr.contains("component \"web\""), "{stderr}");
    assert!(stderr.contains("does not export it"), "{stderr}");

    std::fs::write(&manifest, app("acme:missing/thing", guests::GREETER)).unwrap();
    let stderr = expect_failure(home.path(), &["pack", manifest.to_str().unwrap()]);
    assert!(
        stderr.contains("dependency \"acme:missing/thing\""),
        "{stderr}"
    );
    assert!(stderr.contains("has no such import"), "{stderr}");
}
