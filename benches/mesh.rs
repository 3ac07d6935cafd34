//! Benchmark: what a mesh hop adds. A control plane and two nodes on
//! loopback (127.0.0.2 and .3) run three apps made of `examples/shop`'s
//! components:
//!
//! - `direct`: the catalog alone, routed: the callee called through
//!   ingress, the baseline;
//! - `near`: the frontend calling its catalog on the same node (in
//!   process, no network);
//! - `far`: the frontend on node-1 calling its catalog on node-2 (mTLS).
//!
//! Every request enters through node-1's ingress. Latency is measured by
//! `wrk` with one connection (each request alone), in interleaved rounds,
//! and reported as medians of the rounds' p50 and p99: `near - direct` is
//! what a same-node hop costs (the caller's instance included), `far -
//! near` what crossing to another node adds. Then the three are measured
//! again request by request in turn on one keep-alive connection, so the
//! machine's noise falls on all three alike; the target (at most 0.25 ms
//! added at p99) is judged on that measure. Throughput of `near` and `far` at 64 connections follows, and
//! the mesh connections open between the nodes afterwards: a steady path
//! reuses its connections instead of handshaking per request.
//!
//! `SKIFF_BENCH_ROUNDS` sets the rounds (default 7), `SKIFF_BENCH_SECONDS`
//! each `wrk` run (default 5).
//!
//! Run: `cargo bench -p skiff-orchestrator --bench mesh`. Needs `wrk`.

#[path = "../tests/support/mod.rs"]
mod support;
#[path = "support/mod.rs"]
mod wrk;

use skiff_test_guests::EXAMPLES_DIR;
use std::path::Path;
use std::time::Duration;
use support::cluster::Cluster;
use support::{temp_dir, wait_until, write_manifest};
use wrk::{WrkRun, wrk_available, wrk_with_headers};

/// The three apps, by name.
const APPS: [&str; 3] = ["direct", "near", "far"];

fn main() {
    if !wrk_available() {
        println!("wrk not found: apt-get install wrk");
        return;
    }
    let rounds = env_or("SKIFF_BENCH_ROUNDS", 7);
    let seconds = env_or("SKIFF_BENCH_SECONDS", 5) as u64;
    let cluster = Cluster::start(2, &[]);
    let dirs: Vec<_> = APPS.iter().map(|_| temp_dir()).collect();
    for (app, dir) in APPS.iter().zip(&dirs) {
        write_manifest(dir.path(), &manifest(app));
        cluster.cli(&["deploy", dir.path().to_str().unwrap(), "--wait"]);
    }
    let ingress = cluster.nodes[0].process.url.clone();
    for app in APPS {
        wait_until(Duration::from_secs(30), &format!("{app} to serve"), || {
            let (status, body) = support::cluster::get_as_host(&ingress, Some(app), "/");
            (status == 200 && body.contains("teapot")).then_some(())
        });
    }
    println!(
        "mesh hop latency, one connection, {rounds} rounds of {seconds} s, through node-1's ingress"
    );
    let mut runs: Vec<Vec<WrkRun>> = vec![Vec::new(); APPS.len()];
    for round in 0..rounds {
        // Alternate the order, so no app always runs on a warmer machine.
        let order: Vec<usize> = if round % 2 == 0 {
            vec![0, 1, 2]
        } else {
            vec![2, 1, 0]
        };
        for i in order {
            let host = format!("Host: {}", APPS[i]);
            let run = wrk_with_headers(&format!("{ingress}/"), 1, 1, seconds, &[&host]);
            println!("  round {} {:<6} {run}", round + 1, APPS[i]);
            runs[i].push(run);
        }
    }
    let median = |i: usize, pick: fn(&WrkRun) -> f64| {
        let mut values: Vec<f64> = runs[i].iter().map(pick).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let p50 = |i| median(i, |r| r.p50_ms);
    let p99 = |i| median(i, |r| r.p99_ms);
    println!("medians (and the range of p99 over the rounds: how noisy the machine was):");
    for (i, app) in APPS.iter().enumerate() {
        let p99s = runs[i].iter().map(|r| r.p99_ms);
        let (low, high) = p99s.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
        println!(
            "  {app:<6} p50 {:.3} ms  p99 {:.3} ms  (p99 {low:.2}..{high:.2} ms)",
            p50(i),
            p99(i)
        );
    }
    println!(
        "same-node hop (near - direct): p50 +{:.3} ms, p99 +{:.3} ms (the caller's instance included)",
        p50(1) - p50(0),
        p99(1) - p99(0)
    );
    println!(
        "cross-node hop (far - near): p50 +{:.3} ms, p99 +{:.3} ms",
        p50(2) - p50(1),
        p99(2) - p99(1)
    );

    // The same, request by request in turn on one connection: every app
    // sees the same moments of the machine, so its noise falls on all
    // three alike.
    let interleaved_secs = u64::from(rounds) * seconds;
    let latencies = interleaved(&ingress, Duration::from_secs(interleaved_secs));
    println!(
        "interleaved on one keep-alive connection (direct, near, far in turn), {interleaved_secs} s, {} requests each:",
        latencies[0].len()
    );
    let quantile = |i: usize, q: f64| percentile(&latencies[i], q);
    for (i, app) in APPS.iter().enumerate() {
        println!(
            "  {app:<6} p50 {:.3} ms  p99 {:.3} ms",
            quantile(i, 0.50),
            quantile(i, 0.99)
        );
    }
    let far_p99 = quantile(2, 0.99) - quantile(1, 0.99);
    println!(
        "cross-node hop (far - near), interleaved: p50 +{:.3} ms, p99 +{far_p99:.3} ms; target p99 <= 0.250 ms: {}",
        quantile(2, 0.50) - quantile(1, 0.50),
        if far_p99 <= 0.25 { "met" } else { "missed" }
    );

    println!("throughput at 64 connections, {seconds} s:");
    for app in ["near", "far"] {
        let host = format!("Host: {app}");
        let run = wrk_with_headers(&format!("{ingress}/"), 2, 64, seconds, &[&host]);
        println!("  {app:<6} {run}");
    }
    let node_2_mesh = &cluster.nodes[1].mesh;
    println!(
        "mesh connections from node-1 to node-2 open after the runs: {} (each reused across requests; a handshake per request would leave thousands in TIME-WAIT)",
        established_to(node_2_mesh)
    );
    println!(
        "connections to node-2's mesh in TIME-WAIT: {}",
        time_wait_to(node_2_mesh)
    );
}

/// Latencies in ms of requests to each of [`APPS`] in turn, over one
/// keep-alive connection to `ingress`, for `length`.
fn interleaved(ingress: &str, length: Duration) -> Vec<Vec<f64>> {
    use std::io::{BufRead, BufReader, Read, Write};
    let addr = ingress.trim_start_matches("http://");
    let stream = std::net::TcpStream::connect(addr).expect("ingress accepts");
    stream.set_nodelay(true).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut latencies = vec![Vec::new(); APPS.len()];
    let started = std::time::Instant::now();
    while started.elapsed() < length {
        for (i, app) in APPS.iter().enumerate() {
            let sent = std::time::Instant::now();
            write!(writer, "GET / HTTP/1.1\r\nHost: {app}\r\n\r\n").unwrap();
            // The head, then a body of its content-length or in chunks.
            let mut length = None;
            let mut chunked = false;
            let mut line = String::new();
            loop {
                line.clear();
                reader.read_line(&mut line).unwrap();
                let lower = line.trim_end().to_ascii_lowercase();
                if lower.is_empty() {
                    break;
                }
                if let Some(value) = lower.strip_prefix("content-length:") {
                    length = value.trim().parse::<usize>().ok();
                }
                chunked |= lower.starts_with("transfer-encoding:") && lower.contains("chunked");
            }
            if chunked {
                loop {
                    line.clear();
                    reader.read_line(&mut line).unwrap();
                    let size = usize::from_str_radix(line.trim(), 16).unwrap();
                    let mut chunk = vec![0u8; size + 2];
                    reader.read_exact(&mut chunk).unwrap();
                    if size == 0 {
                        break;
                    }
                }
            } else {
                let mut body = vec![0u8; length.expect("a length or chunks")];
                reader.read_exact(&mut body).unwrap();
            }
            latencies[i].push(sent.elapsed().as_secs_f64() * 1000.0);
        }
    }
    latencies
}

/// The `q` quantile of `values`, nearest rank.
fn percentile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The manifest of `app`: the shop's components, placed for the app's
/// role.
fn manifest(app: &str) -> String {
    let target = Path::new(EXAMPLES_DIR).join("target/wasm32-wasip2/release");
    let wasm = |name: &str| format!("{:?}", target.join(name).to_string_lossy());
    let catalog = wasm("shop_catalog.wasm");
    let frontend = wasm("shop_frontend.wasm");
    let big_limits = "[component.{C}.limits]\nmax_concurrency = 1000\nmax_queued = 1000\n";
    let limits = |c: &str| big_limits.replace("{C}", c);
    match app {
        "direct" => format!(
            "[app]\nname = \"direct\"\n[component.catalog]\nsource = {catalog}\nroute = \"/...\"\n\
             [component.catalog.placement]\nlabels = {{ zone = \"z1\" }}\n{}",
            limits("catalog")
        ),
        _ => {
            let catalog_zone = if app == "near" { "z1" } else { "z2" };
            format!(
                "[app]\nname = \"{app}\"\n\
                 [component.frontend]\nsource = {frontend}\nroute = \"/...\"\n\
                 env = {{ CATALOG_URL = \"http://catalog.{app}.skiff.internal/items\" }}\n\
                 [component.frontend.placement]\nlabels = {{ zone = \"z1\" }}\n{}\
                 [component.catalog]\nsource = {catalog}\nallow_callers = [\"{app}/frontend\"]\n\
                 [component.catalog.placement]\nlabels = {{ zone = \"{catalog_zone}\" }}\n{}",
                limits("frontend"),
                limits("catalog")
            )
        }
    }
}

/// TCP connections in `state` (`ss` filter) to `addr`.
fn connections_to(addr: &str, state: &str) -> usize {
    let output = std::process::Command::new("ss")
        .args(["-Htn", "state", state, "dst", addr])
        .output();
    match output {
        Ok(output) => String::from_utf8_lossy(&output.stdout).lines().count(),
        Err(_) => 0,
    }
}

fn established_to(addr: &str) -> usize {
    connections_to(addr, "established")
}

fn time_wait_to(addr: &str) -> usize {
    connections_to(addr, "time-wait")
}

fn env_or(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
