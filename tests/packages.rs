//! End to end: packing apps into content-addressed packages, pushing them to
//! a real OCI registry (the CNCF distribution registry, Debian's
//! `docker-registry`, started on loopback by these tests), pulling them into
//! a clean Skiff home, running them, and refusing damaged content.

mod support;

use skiff_test_guests as guests;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// A registry on a free loopback port with its own storage; stopped when
/// dropped.
struct TestRegistry {
    child: Child,
    addr: String,
    storage: tempfile::TempDir,
    _config: tempfile::TempDir,
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
            .stdout(Stdio::null())
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
            _config: config_dir,
        }
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
    // Pushing again uploads nothing new and succeeds.
    skiff_ok(home.path(), &["push", &remote]);

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
    let output = skiff(clean.path())
        .args(["pull", &remote])
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
