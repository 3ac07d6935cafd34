//! Benchmark: the cluster's reaction times, with real processes on
//! loopback (a control plane and three nodes on 127.0.0.2-4).
//!
//! - Deploy-to-ready: from starting `skiff deploy` on a new app to its
//!   first 200 through a node's ingress (target under 1 s), cold and warm,
//!   alternating: a cold round deploys a component no node has compiled
//!   (the hello component with a custom section naming the round, so its
//!   digest differs), and checks that it was compiled and added to the
//!   compile cache; a warm round deploys the hello component, already in
//!   the cache.
//! - Failover: from `kill -9` of the node running an app's only replica
//!   (its connections close at once), or from SIGSTOP of it (it goes
//!   silent, as a hung or cut-off machine does, and is only taken for down
//!   after `--down-after`), to the first 200 served by the moved replica
//!   through another node's ingress, with default heartbeat settings
//!   (target under 3 s for `kill -9`). The probe sends a request every
//!   10 ms, each on its own thread, so requests hanging on the silent node
//!   delay nothing. A stopped node is killed after its round, so it never
//!   comes back.
//! - Ingress throughput (with `wrk` installed): hello through the ingress
//!   of the node holding its replica, and through another node's ingress,
//!   which forwards every request over the mTLS mesh; interleaved rounds,
//!   alternating which goes first, reported as medians and their ratio.
//!
//! `SKIFF_BENCH_ROUNDS` sets the rounds of each deploy and failover kind
//! (default 10), `SKIFF_BENCH_WRK_ROUNDS` the throughput rounds (default
//! 3) and `SKIFF_BENCH_SECONDS` each `wrk` run (default 10).
//!
//! Run: `cargo bench -p skiff-orchestrator --bench cluster`.

#[path = "../tests/support/mod.rs"]
mod support;
#[path = "support/mod.rs"]
mod wrk;

use skiff_test_guests::HELLO;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::{Running, skiff, temp_dir, toml_path, write_manifest};
use wasm_encoder::{ComponentSection, CustomSection};

/// The longest any one wait for a first 200 may take.
const FIRST_200_LIMIT: Duration = Duration::from_secs(60);

struct Node {
    name: String,
    process: Running,
}

fn main() {
    let rounds = env_or("SKIFF_BENCH_ROUNDS", 10);
    let wrk_rounds = env_or("SKIFF_BENCH_WRK_ROUNDS", 3);
    let seconds = env_or("SKIFF_BENCH_SECONDS", 10) as u64;
    let home = temp_dir();
    let data = home.path().join("server");
    let server = Running::launch(
        home.path(),
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        "Control plane serving ",
    );
    let mut nodes: Vec<Node> = (1..=3)
        .map(|i| start_node(home.path(), &server.url, i))
        .collect();

    deploys(home.path(), &nodes, rounds);

    let dir = app_dir("fo", Path::new(HELLO));
    cli(
        home.path(),
        &["deploy", dir.path().to_str().unwrap(), "--wait"],
    );
    let mut killed = Vec::new();
    let mut silenced = Vec::new();
    for round in 0..2 * rounds {
        // Nodes 1-3 started above; each round starts one more.
        let next_node = 4 + round;
        let holder = holder_of(home.path(), "fo");
        let index = nodes.iter().position(|n| n.name == holder).unwrap();
        let mut victim = nodes.remove(index);
        let probe = nodes[0].process.url.clone();
        if round % 2 == 0 {
            victim.process.kill();
            let since = Instant::now();
            killed.push(first_200(&probe, "fo", since));
        } else {
            victim.process.signal("STOP");
            let since = Instant::now();
            silenced.push(first_200(&probe, "fo", since));
            // Never to come back: a stopped process dies of SIGKILL too.
            victim.process.kill();
        }
        // Keep three nodes for the next round.
        nodes.push(start_node(home.path(), &server.url, next_node));
    }
    report("failover after kill -9", &mut killed, Some(1000.0 * 3.0));
    report(
        "failover after SIGSTOP (silent node; down after the default --down-after 3s)",
        &mut silenced,
        None,
    );
    println!("  old-comparable: the kill -9 line (the only failover measured before)");

    if !wrk::wrk_available() {
        println!("ingress throughput: skipped (install wrk)");
        return;
    }
    throughput(home.path(), &nodes, wrk_rounds, seconds);
}

/// Deploy-to-ready rounds, a cold one and a warm one in each, alternating
/// which goes first.
fn deploys(home: &Path, nodes: &[Node], rounds: usize) {
    let cache = home.join("cache");
    // The hello component compiled once, so the warm rounds find it.
    let prime = app_dir("prime", Path::new(HELLO));
    cli(home, &["deploy", prime.path().to_str().unwrap(), "--wait"]);
    let hello = std::fs::read(HELLO).unwrap();
    assert!(
        cached(&cache, &hello),
        "the hello component is not in the compile cache {} after a deploy",
        cache.display()
    );
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for round in 0..rounds {
        for is_cold in [round % 2 == 0, round % 2 != 0] {
            let entries = cache_entries(&cache);
            let (app, wasm) = if is_cold {
                (format!("cold-{round}"), distinct_hello(&hello, round))
            } else {
                (format!("warm-{round}"), hello.clone())
            };
            let source_dir = temp_dir();
            let source = source_dir.path().join("hello.wasm");
            std::fs::write(&source, &wasm).unwrap();
            assert_eq!(cached(&cache, &wasm), !is_cold, "{app}: cache state before");
            let dir = app_dir(&app, &source);
            let started = Instant::now();
            cli(home, &["deploy", dir.path().to_str().unwrap()]);
            let took = first_200(&nodes[0].process.url, &app, started);
            if is_cold {
                assert!(
                    cached(&cache, &wasm),
                    "{app}: the distinct component was not compiled into the cache"
                );
                cold.push(took);
            } else {
                assert_eq!(
                    cache_entries(&cache),
                    entries,
                    "{app}: a warm deploy compiled something"
                );
                warm.push(took);
            }
        }
    }
    report(
        "deploy-to-ready, cold (a component never compiled)",
        &mut cold,
        Some(1000.0),
    );
    report(
        "deploy-to-ready, warm (the component in the compile cache)",
        &mut warm,
        Some(1000.0),
    );
    println!(
        "  old-comparable: the warm line (before, every round but the first reused one cached component)"
    );
}

/// The hello component with a custom section naming `round`: the same
/// program, with another digest, so it is compiled afresh.
fn distinct_hello(hello: &[u8], round: usize) -> Vec<u8> {
    let mut wasm = hello.to_vec();
    let data = format!("round {round} of pid {}", std::process::id());
    CustomSection {
        name: "skiff-bench".into(),
        data: data.as_bytes().into(),
    }
    .append_to_component(&mut wasm);
    wasm
}

/// Whether the compile cache in `cache` holds an entry for `wasm` (entries
/// are named by the component's sha256).
fn cached(cache: &Path, wasm: &[u8]) -> bool {
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(wasm));
    cache_entries(cache).iter().any(|entry| {
        entry
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&digest)
    })
}

/// The compiled entries in the cache, sorted.
fn cache_entries(cache: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(cache)
        .map(|dir| {
            dir.filter_map(|e| Some(e.ok()?.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
                .collect()
        })
        .unwrap_or_default();
    entries.sort();
    entries
}

/// Local and forwarded ingress throughput, `rounds` each, interleaved.
fn throughput(home: &Path, nodes: &[Node], rounds: usize, seconds: u64) {
    let dir = temp_dir();
    write_manifest(
        dir.path(),
        &format!(
            "[app]\nname = \"tp\"\n[component.web]\nsource = {}\nroute = \"/tp/...\"\n\
             [component.web.placement]\nmemory = \"64MiB\"\n",
            toml_path(HELLO)
        ),
    );
    cli(home, &["deploy", dir.path().to_str().unwrap(), "--wait"]);
    let holder = holder_of(home, "tp");
    let local = nodes.iter().find(|n| n.name == holder).unwrap();
    let remote = nodes.iter().find(|n| n.name != holder).unwrap();
    let mut local_runs = Vec::new();
    let mut forwarded_runs = Vec::new();
    for round in 0..rounds {
        for is_local in [round % 2 == 0, round % 2 != 0] {
            if is_local {
                local_runs.push(wrk::wrk(&local.process.at("/tp/"), 2, 32, seconds));
            } else {
                forwarded_runs.push(wrk::wrk(&remote.process.at("/tp/"), 2, 32, seconds));
            }
        }
    }
    let local_median = wrk::WrkRun::median(&local_runs);
    let forwarded_median = wrk::WrkRun::median(&forwarded_runs);
    println!(
        "ingress throughput, median of {rounds} interleaved {seconds} s runs each (alternating which goes first):"
    );
    println!("  replica on the node:  {local_median}");
    println!("  forwarded over mTLS:  {forwarded_median}");
    let all = |runs: &[wrk::WrkRun]| {
        let rates: Vec<String> = runs
            .iter()
            .map(|r| format!("{:.0}", r.requests_per_sec))
            .collect();
        rates.join(", ")
    };
    println!(
        "  every run, req/s: local {}; forwarded {}",
        all(&local_runs),
        all(&forwarded_runs)
    );
    println!(
        "  forwarded / local: {:.2}x req/s (medians)",
        forwarded_median.requests_per_sec / local_median.requests_per_sec
    );
    println!(
        "  old-comparable: the two median lines and the ratio (before: one run each, local first)"
    );
}

fn start_node(home: &Path, api: &str, i: usize) -> Node {
    let token = cli(home, &["join-token"]).trim().to_string();
    let name = format!("node-{i}");
    let listen = format!("127.0.0.{}:0", 2 + (i - 1) % 3);
    let process = Running::launch(
        home,
        &[
            "node",
            "--server",
            api,
            "--token",
            &token,
            "--name",
            &name,
            "--listen",
            &listen,
            "--capacity",
            "4GiB",
        ],
        "serving ingress on ",
    );
    Node { name, process }
}

/// An app `name` of one component from `source`.
fn app_dir(name: &str, source: &Path) -> tempfile::TempDir {
    let dir = temp_dir();
    write_manifest(
        dir.path(),
        &format!(
            "[app]\nname = \"{name}\"\n[component.web]\nsource = {}\nroute = \"/...\"\n\
             [component.web.placement]\nmemory = \"64MiB\"\n",
            toml_path(source.to_str().unwrap())
        ),
    );
    dir
}

fn cli(home: &Path, args: &[&str]) -> String {
    let output = skiff(home).args(args).output().expect("running skiff");
    assert!(
        output.status.success(),
        "skiff {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Sends a GET for `app` (chosen by Host) through `ingress` every 10 ms,
/// each on its own thread so that one hanging on an unreachable node
/// delays none of the others, until one answers 200; returns the time
/// from `since` to that answer.
fn first_200(ingress: &str, app: &str, since: Instant) -> Duration {
    let (answered, first) = mpsc::channel();
    let host = format!("{app}.skiff.local");
    loop {
        if let Ok(at) = first.recv_timeout(Duration::from_millis(10)) {
            return at - since;
        }
        assert!(
            since.elapsed() < FIRST_200_LIMIT,
            "{app} never answered 200 through {ingress}"
        );
        let (ingress, host, answered) = (ingress.to_string(), host.clone(), answered.clone());
        std::thread::spawn(move || {
            let answer = support::http().get(&ingress).header("host", &host).call();
            if answer.is_ok_and(|r| r.status() == 200) {
                let _ = answered.send(Instant::now());
            }
        });
    }
}

fn holder_of(home: &Path, app: &str) -> String {
    let ps: serde_json::Value =
        serde_json::from_str(&cli(home, &["ps", app, "-o", "json"])).unwrap();
    ps[0]["node"]
        .as_str()
        .expect("the replica is placed")
        .to_string()
}

/// Prints the median and max of `samples`, and whether the max is under
/// `target_ms` if there is one.
fn report(what: &str, samples: &mut [Duration], target_ms: Option<f64>) {
    samples.sort();
    let median = samples[samples.len() / 2];
    let max = samples[samples.len() - 1];
    let verdict = match target_ms {
        Some(target) => format!(
            " (target under {target:.0} ms: {})",
            if max.as_secs_f64() * 1e3 < target {
                "met"
            } else {
                "missed"
            }
        ),
        None => String::new(),
    };
    println!(
        "{what}: median {:.0} ms, max {:.0} ms over {} rounds{verdict}",
        median.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        samples.len(),
    );
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
