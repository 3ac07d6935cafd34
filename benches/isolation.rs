//! Benchmark: isolation under attack.
//!
//! One `skiff run` process serves a well-behaved component (hello, at
//! `/good`) next to the hostile guest. First `wrk` measures `/good` alone
//! (baseline); then, for the attack window, attacker threads hammer every
//! hostile path (loops, memory bombs, recursion, 1 GiB responses, panics,
//! resource floods, outbound floods and SSRF attempts, oversized and
//! slow-drip bodies) while `wrk` measures `/good` again. Prints the good
//! component's errors and p99 against its baseline, the attack requests by
//! status, and the process RSS before, during and after.
//!
//! Run: `cargo bench -p skiff-orchestrator --bench isolation`. Needs `wrk`.
//! `SKIFF_BENCH_SECONDS` sets the attack window (default 30).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod support;
use support::{wrk, wrk_available};

const ATTACKERS: usize = 6;

fn main() {
    let seconds: u64 = std::env::var("SKIFF_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    if !wrk_available() {
        println!("wrk not found: apt-get install wrk");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("skiff.toml");
    std::fs::write(
        &manifest,
        format!(
            r#"
[app]
name = "isolation"

[component.hostile]
source = {hostile:?}
route = "/..."
allowed_outbound_hosts = ["http://*:*"]
[component.hostile.limits]
memory = "64MiB"
timeout = "1s"
max_concurrency = {ATTACKERS}
max_request_body = "1MiB"
max_response_body = "16MiB"

[component.good]
source = {hello:?}
route = "/good"
"#,
            hostile = skiff_test_guests::HOSTILE,
            hello = skiff_test_guests::HELLO,
        ),
    )
    .unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["run", manifest.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .env("SKIFF_HOME", home.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting skiff");
    let pid = child.id();
    let reasons = count_reasons(child.stderr.take().unwrap());
    let mut url = String::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("Serving ") {
            url = rest.split_whitespace().next().unwrap().to_string();
            break;
        }
    }
    let addr = url.trim_start_matches("http://").to_string();
    let good = format!("{url}/good");

    wrk(&good, 1, 16, 3); // warm-up
    let rss_before = rss_kib(pid);
    let baseline = wrk(&good, 1, 16, 10);
    println!("baseline /good:      {baseline}");

    let stop = Arc::new(AtomicBool::new(false));
    let statuses = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let attackers: Vec<_> = (0..ATTACKERS)
        .map(|i| {
            let (stop, statuses, addr) = (stop.clone(), statuses.clone(), addr.clone());
            std::thread::spawn(move || attack(i, &addr, &stop, &statuses))
        })
        .collect();
    let peak = Arc::new(Mutex::new(0u64));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                let mut p = peak.lock().unwrap();
                *p = (*p).max(rss_kib(pid));
                drop(p);
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let under_attack = wrk(&good, 1, 16, seconds);
    stop.store(true, Ordering::Release);
    for a in attackers {
        a.join().unwrap();
    }
    sampler.join().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let rss_after = rss_kib(pid);

    println!("under attack /good:  {under_attack}");
    println!(
        "p99 under attack / baseline: {:.2}x (target <= 2x); errors {} (target 0)",
        under_attack.p99_ms / baseline.p99_ms,
        under_attack.errors
    );
    println!("attack requests by outcome: {:?}", statuses.lock().unwrap());
    println!("limit hits logged by reason: {:?}", reasons.lock().unwrap());
    println!(
        "RSS: before {} MiB, peak {} MiB, after {} MiB ({:+.1}% vs before; target within 10%)",
        rss_before / 1024,
        *peak.lock().unwrap() / 1024,
        rss_after / 1024,
        (rss_after as f64 / rss_before as f64 - 1.0) * 100.0
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// Attacker `i`: cycles through the attacks, offset by `i`, until `stop`.
fn attack(i: usize, addr: &str, stop: &AtomicBool, statuses: &Mutex<BTreeMap<String, u64>>) {
    let attacks: &[&str] = &[
        "/loop",
        "/memory",
        "/recursion",
        "/huge",
        "/panic",
        "/resources",
        "/outbound-flood?http://169.254.169.254/",
        "/fetch?http://127.0.0.1:1/",
        "big-body",
        "slow-drip",
    ];
    let mut n = i;
    while !stop.load(Ordering::Acquire) {
        let outcome = match attacks[n % attacks.len()] {
            "big-body" => raw(
                addr,
                "POST /read-body HTTP/1.1\r\nhost: x\r\ncontent-length: 4194304\r\n\r\n",
                &vec![0u8; 4 << 20],
                Duration::ZERO,
            ),
            "slow-drip" => raw(
                addr,
                "POST /read-body HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n",
                &[b'x'; 6],
                Duration::from_millis(300),
            ),
            path => raw(
                addr,
                &format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n"),
                &[],
                Duration::ZERO,
            ),
        };
        *statuses.lock().unwrap().entry(outcome).or_default() += 1;
        n += 1;
    }
}

/// Sends a raw request, the body in one go or byte by byte with `drip`
/// between bytes; returns the status line's code or the I/O outcome.
fn raw(addr: &str, head: &str, body: &[u8], drip: Duration) -> String {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return "connect-failed".into();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream.write_all(head.as_bytes()).is_err() {
        return "write-failed".into();
    }
    if drip.is_zero() {
        let _ = stream.write_all(body);
    } else {
        for byte in body {
            if stream.write_all(&[*byte]).is_err() {
                break;
            }
            std::thread::sleep(drip);
        }
    }
    let mut status = [0u8; 12];
    match stream.read_exact(&mut status) {
        Ok(()) => String::from_utf8_lossy(&status[9..12]).into_owned(),
        Err(_) => "no-response".into(),
    }
}

/// Counts `reason="..."` fields in skiff's log lines.
fn count_reasons(stderr: impl Read + Send + 'static) -> Arc<Mutex<BTreeMap<String, u64>>> {
    let counts = Arc::new(Mutex::new(BTreeMap::new()));
    let sink = counts.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.split("reason=\"").nth(1)
                && let Some(reason) = rest.split('"').next()
            {
                *sink
                    .lock()
                    .unwrap()
                    .entry(reason.to_string())
                    .or_insert(0u64) += 1;
            }
        }
    });
    counts
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
