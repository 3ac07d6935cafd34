//! End-to-end tests of `skiff up`, the one-process cluster: it keeps its
//! apps across a restart (clean or not) and refuses a second one on its
//! home, its ingress picks the app `Host` names, and `deploy --wait`
//! against it stops at a component that fails to load instead of waiting
//! out its timeout.

mod support;

use serde_json::Value;
use skiff_test_guests::HELLO;
use std::path::Path;
use std::time::{Duration, Instant};
use support::cluster::{app, get_as_host, one_at_a_time};
use support::{Running, skiff, temp_dir, toml_path, wait_until, write_manifest};

/// Starts `skiff up [PATH]` on ephemeral ports and waits until it serves.
fn start_up(home: &Path, path: Option<&str>) -> Running {
    let mut args = vec!["up"];
    args.extend(path);
    args.extend(["--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"]);
    Running::launch(home, &args, "Serving ")
}

/// Runs `skiff ARGS`, expecting success; returns `(stdout, stderr)`.
fn cli(home: &Path, args: &[&str]) -> (String, String) {
    let output = skiff(home).args(args).output().expect("running skiff");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "skiff {args:?} failed:\n{stderr}");
    (String::from_utf8_lossy(&output.stdout).into_owned(), stderr)
}

/// The names of the apps `skiff apps` lists.
fn app_names(home: &Path) -> Vec<String> {
    let apps: Value = serde_json::from_str(&cli(home, &["apps", "-o", "json"]).0).unwrap();
    apps.as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_string())
        .collect()
}

/// Waits until `up` answers for both "shop" and "blog", told apart by
/// `Host` (they share their route), each with its own greeting.
fn serves_shop_and_blog(up: &Running, when: &str) {
    for name in ["shop", "blog"] {
        let host = format!("{name}.localhost");
        let answer = wait_until(
            Duration::from_secs(30),
            &format!("{name} to be served {when}"),
            || {
                let answer = get_as_host(&up.url, Some(&host), "/");
                (answer.0 != 503).then_some(answer)
            },
        );
        assert_eq!(
            answer,
            (200, format!("{name} from Skiff!\n")),
            "Host {host:?} {when}"
        );
    }
}

#[test]
fn skiff_up_keeps_its_apps_across_a_restart() {
    let _serial = one_at_a_time();
    let home = temp_dir();
    let (shop, blog) = (temp_dir(), temp_dir());
    let shop = app(shop.path(), "shop", HELLO, 1, "GREETING = \"shop\"");
    let blog = app(blog.path(), "blog", HELLO, 1, "GREETING = \"blog\"");

    let up = start_up(home.path(), Some(shop.as_str()));
    assert!(up.banner.contains("App \"shop\""), "{}", up.banner);
    let (_, warned) = cli(home.path(), &["deploy", &blog, "--wait"]);
    assert!(
        warned.contains("route \"/...\" of blog/web is also served by app \"shop\""),
        "{warned}"
    );
    serves_shop_and_blog(&up, "before any restart");
    // Both apps are made of the same component: the node compiled it for
    // shop, and blog shares that code (each keeps its own environment).
    let stderr = up.stderr();
    let blog_running = stderr
        .lines()
        .find(|l| l.contains("replica running") && l.contains("app=\"blog\""))
        .unwrap_or_else(|| panic!("no \"replica running\" line for blog:\n{stderr}"));
    assert!(blog_running.contains("code=\"shared\""), "{blog_running}");
    assert!(
        up.terminate().success(),
        "skiff up stops cleanly on SIGTERM"
    );

    // Started again without an app, it has both.
    let mut up = start_up(home.path(), None);
    serves_shop_and_blog(&up, "after a restart");
    assert_eq!(app_names(home.path()), ["blog", "shop"]);

    // Killed, as a crash would, it comes back with both too.
    up.kill();
    let up = start_up(home.path(), None);
    serves_shop_and_blog(&up, "after a crash");
    assert_eq!(app_names(home.path()), ["blog", "shop"]);

    // Its node offers the machine: no figure in bytes, in JSON or text.
    let nodes: Value = serde_json::from_str(&cli(home.path(), &["nodes", "-o", "json"]).0).unwrap();
    assert!(nodes[0]["memory"].is_null(), "{nodes}");
    assert!(nodes[0]["placeable"].is_null(), "{nodes}");
    assert!(cli(home.path(), &["nodes"]).0.contains("unlimited"));

    // A second `skiff up` on the same home is refused, saying why, and
    // the first serves on.
    let second = skiff(home.path())
        .args(["up", "--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"])
        .output()
        .expect("running skiff");
    let refused = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{refused}");
    assert!(
        refused.contains("is in use by another control plane"),
        "{refused}"
    );
    serves_shop_and_blog(&up, "beside a refused second skiff up");
    assert!(up.terminate().success());
}

#[test]
fn deploy_wait_stops_at_a_component_that_fails_to_load() {
    let _serial = one_at_a_time();
    let home = temp_dir();
    let up = start_up(home.path(), None);
    // A stack above what any node runs: the node refuses to load it.
    let deep = temp_dir();
    let with_stack = |stack: &str| {
        write_manifest(
            deep.path(),
            &format!(
                "[app]\nname = \"deep\"\n\
                 [component.deep]\nsource = {}\nroute = \"/...\"\n\
                 [component.deep.limits]\nstack = \"{stack}\"\n",
                toml_path(HELLO)
            ),
        );
    };
    with_stack("16MiB");
    let timeout = Duration::from_secs(120);
    let started = Instant::now();
    let error = support::expect_failure(
        home.path(),
        &[
            "deploy",
            deep.path().to_str().unwrap(),
            "--wait",
            "--timeout",
            &format!("{}s", timeout.as_secs()),
        ],
    );
    let took = started.elapsed();
    assert!(
        error.contains("app \"deep\" failed to start: deep/deep/0: failed ("),
        "{error}"
    );
    assert!(error.contains("above this node's maximum"), "{error}");
    assert!(
        took < timeout / 2,
        "deploy --wait took {took:?} of its {timeout:?} timeout to report the load error"
    );

    // A version that loads: `--wait` waits for it, and is not stopped by
    // the failure of the version before.
    with_stack("1MiB");
    let (updated, _) = cli(
        home.path(),
        &["deploy", deep.path().to_str().unwrap(), "--wait"],
    );
    assert!(updated.contains("app \"deep\" updated"), "{updated}");
    assert_eq!(
        get_as_host(&up.url, None, "/"),
        (200, "Hello from Skiff!\n".to_string())
    );
}

#[test]
fn a_blob_damaged_on_the_nodes_disk_is_fetched_again_from_the_control_plane() {
    let _serial = one_at_a_time();
    let home = temp_dir();
    let dir = temp_dir();
    let hello = app(dir.path(), "hello", HELLO, 1, "");
    let up = start_up(home.path(), Some(&hello));
    wait_until(Duration::from_secs(30), "hello to serve", || {
        (get_as_host(&up.url, Some("hello"), "/").0 == 200).then_some(())
    });
    drop(up);
    // The node's copy of the component (its largest blob) loses a byte.
    let blobs = home.path().join("up/node/packages/blobs/sha256");
    let component = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&component).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&component, &bytes).unwrap();

    let up = start_up(home.path(), None);
    let answer = wait_until(Duration::from_secs(30), "hello to serve again", || {
        let answer = get_as_host(&up.url, Some("hello"), "/");
        (answer.0 == 200).then_some(answer)
    });
    assert_eq!(answer.1, "Hello from Skiff!\n");
    up.wait_for_stderr("corrupt: removed, fetching it again");
    assert_eq!(
        std::fs::read(HELLO).unwrap(),
        std::fs::read(&component).unwrap()
    );
}
