//! Benchmark: isolation under attack, with the limits a user gets.
//!
//! One `skiff run` process serves a well-behaved component (hello, at
//! `/good`) next to the hostile guest. The hostile component sets no limits
//! of its own: it runs under Skiff's defaults, printed beside the figures
//! (read from the manifest as Skiff loads it). It may call a small HTTP
//! server this program runs on loopback, which counts the requests that
//! reach it, and, by a `*` entry, any public address, so its calls to the
//! metadata address and loopback are refused by the internal-address
//! filter, not by the allow-list. `wrk` measures `/good` alone (baseline), then
//! under two attacks, each for the attack window:
//!
//! 1. Attack mix: attacker threads cycle through every hostile path (loops,
//!    memory bombs, recursion, 1 GiB responses read to their end, panics,
//!    resource floods, an outbound flood at the allowed upstream, SSRF
//!    attempts, oversized and slow-drip bodies).
//! 2. Overload: more attackers than the hostile component's
//!    `max_concurrency` and `max_queued` together hammer `/loop`, so its
//!    queue fills and the rest are refused with 503.
//!
//! For each, prints `/good`'s figures and its p99 against the baseline,
//! with its non-2xx responses and socket errors, and the attack requests by
//! outcome; for the mix also the bytes the large responses delivered and
//! how each ended, and the outbound calls the guest made against those the
//! upstream received. Then the limit hits Skiff logged and the process RSS
//! before, at peak and after.
//!
//! Attackers finish the requests they have in flight before the figures
//! are printed; with the default 30 s timeout that takes up to a minute
//! after the overload window.
//!
//! Run: `cargo bench -p skiff-orchestrator --bench isolation`. Needs `wrk`.
//! `SKIFF_BENCH_SECONDS` sets each attack window (default 30).

use http_body_util::Full;
use hyper_util::rt::TokioIo;
use skiff_runtime::manifest::Limits;
use skiff_runtime::{EngineConfig, Manifest};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod support;
use support::{WrkRun, wrk, wrk_available};

/// Attacker threads in the attack mix.
const ATTACKERS: usize = 6;
/// Overload attackers beyond the hostile component's running and queued
/// requests: these are the ones refused.
const OVERLOAD_EXTRA: usize = 6;
/// How much longer than a queued request's worst case (two timeouts) an
/// attacker waits for an answer.
const ANSWER_MARGIN: Duration = Duration::from_secs(30);
/// An answer this much later than the hostile component's timeout waited
/// in the queue before it ran.
const QUEUE_EVIDENCE: Duration = Duration::from_secs(5);
/// The labels of the attacks whose bodies are looked into.
const HUGE: &str = "/huge";
const FLOOD: &str = "/outbound-flood (allowed upstream)";

fn main() {
    let seconds: u64 = std::env::var("SKIFF_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    if !wrk_available() {
        println!("wrk not found: apt-get install wrk");
        return;
    }
    let upstream = Upstream::start();
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
allowed_outbound_hosts = ["http://{upstream}", "http://*:*"]

[component.good]
source = {hello:?}
route = "/good"
"#,
            hostile = skiff_test_guests::HOSTILE,
            hello = skiff_test_guests::HELLO,
            upstream = upstream.addr,
        ),
    )
    .unwrap();
    let limits = hostile_limits(&manifest);
    let max_instances = EngineConfig::default().max_instances;
    let origin = if limits == Limits::default() {
        "all skiff's defaults"
    } else {
        "some set in the manifest"
    };
    println!("hostile limits in force ({origin}): {}", describe(&limits));
    println!(
        "process: {max_instances} instance slots (skiff run's default); hostile may call http://{} (a server in this bench) and, by a `*` entry, any public address: its calls to the metadata address and loopback meet the internal-address filter",
        upstream.addr
    );

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
    let target = Target {
        url: url.clone(),
        addr: url.trim_start_matches("http://").to_string(),
        limits: limits.clone(),
        big_body: Arc::new(vec![
            0u8;
            (limits.max_request_body.bytes() + (64 << 10)) as usize
        ]),
    };
    let good = format!("{url}/good");

    wrk(&good, 1, 16, 3); // warm-up
    let rss_before = rss_kib(pid);
    let baseline = wrk(&good, 1, 16, 10);
    println!("baseline /good:      {baseline}");
    let peak = RssPeak::start(pid);

    // === Attack mix ===
    let assault = Assault::start(&target, attack_mix(&upstream.addr), ATTACKERS);
    let under_attack = wrk(&good, 1, 16, seconds);
    let mix = assault.finish();
    println!("under attack /good:  {under_attack}");
    print_ratio("under attack", &under_attack, &baseline);
    println!("attack requests by outcome: {:?}", mix.by_outcome());
    mix.print_by_attack();
    mix.huge.print(&limits);
    mix.flood.print(&limits, upstream.hits());

    // === Overload ===
    let overloaders = limits.max_concurrency as usize + limits.max_queued as usize + OVERLOAD_EXTRA;
    println!(
        "== overload: {overloaders} attackers on /loop (max_concurrency {} + max_queued {} + {OVERLOAD_EXTRA})",
        limits.max_concurrency, limits.max_queued
    );
    let looping = vec![Attack::Get {
        label: "/loop",
        path: "/loop".into(),
    }];
    let assault = Assault::start(&target, looping, overloaders);
    let started = Instant::now();
    let limit = limits.timeout.as_duration() + ANSWER_MARGIN;
    while assault.count("503") == 0 && started.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(20));
    }
    if assault.count("503") == 0 {
        println!("WARNING: no 503 within {limit:?}: the overload path is not running");
    } else {
        println!(
            "first 503 after {:.1} s; measuring /good",
            started.elapsed().as_secs_f64()
        );
    }
    let overloaded = wrk(&good, 1, 16, seconds);
    let overload = assault.finish();
    println!("under overload /good: {overloaded}");
    print_ratio("under overload", &overloaded, &baseline);
    println!("overload requests by outcome: {:?}", overload.by_outcome());
    overload.print_by_attack();

    // === The process afterwards ===
    let peak = peak.stop();
    std::thread::sleep(Duration::from_secs(3));
    let rss_after = rss_kib(pid);
    println!("limit hits logged by reason: {:?}", reasons.lock().unwrap());
    let growth = (rss_after as f64 / rss_before as f64 - 1.0) * 100.0;
    println!(
        "RSS: before {} MiB, peak {} MiB, after {} MiB ({growth:+.1}% vs before; target within 10%: {})",
        rss_before / 1024,
        peak / 1024,
        rss_after / 1024,
        verdict(growth <= 10.0)
    );
    println!("hostile limits in force: {}", describe(&limits));
    let _ = child.kill();
    let _ = child.wait();
}

/// The hostile component's limits as Skiff reads the manifest: the
/// defaults for every one the manifest leaves out.
fn hostile_limits(manifest: &Path) -> Limits {
    let manifest = Manifest::from_file(manifest).expect("the bench's manifest parses");
    manifest
        .component
        .iter()
        .find(|(name, _)| name.as_str() == "hostile")
        .map(|(_, spec)| spec.limits.clone())
        .expect("the manifest has a hostile component")
}

fn describe(limits: &Limits) -> String {
    format!(
        "memory {}, timeout {}, max_concurrency {}, max_queued {}, max_request_body {}, \
         max_response_body {}, max_outbound_requests {}, stack {}, max_resources {}",
        limits.memory,
        limits.timeout,
        limits.max_concurrency,
        limits.max_queued,
        limits.max_request_body,
        limits.max_response_body,
        limits.max_outbound_requests,
        limits.stack,
        limits.max_resources
    )
}

fn print_ratio(during: &str, run: &WrkRun, baseline: &WrkRun) {
    let ratio = run.p99_ms / baseline.p99_ms;
    println!(
        "p99 {during} / baseline: {ratio:.2}x (target <= 2x: {}); errors {} (target 0: {}; non-2xx {}, socket {})",
        verdict(ratio <= 2.0),
        run.errors,
        verdict(run.errors == 0),
        run.non_2xx,
        run.socket_errors
    );
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "missed" }
}

// === Attacks ===

/// Where the attackers send their requests, and what they need to know of
/// the hostile component's limits.
#[derive(Clone)]
struct Target {
    /// `http://127.0.0.1:PORT`
    url: String,
    /// `127.0.0.1:PORT`
    addr: String,
    limits: Limits,
    /// A body past `max_request_body`.
    big_body: Arc<Vec<u8>>,
}

/// Attacker threads, each sending the attacks in turn (attacker `i`
/// starting at the `i`th) until stopped.
struct Assault {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    attackers: Vec<std::thread::JoinHandle<()>>,
}

impl Assault {
    fn start(target: &Target, attacks: Vec<Attack>, attackers: usize) -> Assault {
        let attacks = Arc::new(attacks);
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let attackers = (0..attackers)
            .map(|i| {
                let (target, attacks) = (target.clone(), attacks.clone());
                let (stop, tally) = (stop.clone(), tally.clone());
                std::thread::spawn(move || {
                    let agent = agent(&target.limits);
                    let mut n = i;
                    while !stop.load(Ordering::Acquire) {
                        let attack = &attacks[n % attacks.len()];
                        let started = Instant::now();
                        let answer = attack.send(&target, &agent);
                        let took = started.elapsed();
                        let mut tally = tally.lock().unwrap();
                        tally.record(attack.label(), &answer, took, &target.limits);
                        n += 1;
                    }
                })
            })
            .collect();
        Assault {
            stop,
            tally,
            attackers,
        }
    }

    /// Answers with `outcome` so far.
    fn count(&self, outcome: &str) -> u64 {
        self.tally.lock().unwrap().count(outcome)
    }

    /// Stops the attackers, lets them finish the requests they have in
    /// flight, and says how long that took.
    fn finish(self) -> Tally {
        let finishing = Instant::now();
        self.stop.store(true, Ordering::Release);
        for attacker in self.attackers {
            attacker.join().unwrap();
        }
        println!(
            "(attackers finished their requests in flight {:.1} s after the window)",
            finishing.elapsed().as_secs_f64()
        );
        std::mem::take(&mut *self.tally.lock().unwrap())
    }
}

/// One hostile request.
enum Attack {
    /// A GET of `path`, its response read to the end.
    Get { label: &'static str, path: String },
    /// A POST declaring and sending a body past `max_request_body`.
    BigBody,
    /// A POST whose body trickles in, a byte every 300 ms, and stops short.
    SlowDrip,
}

/// The attack mix, each attacker starting at a different one.
fn attack_mix(upstream: &str) -> Vec<Attack> {
    let get = |label: &'static str, path: &str| Attack::Get {
        label,
        path: path.to_string(),
    };
    vec![
        get("/loop", "/loop"),
        get("/memory", "/memory"),
        get("/recursion", "/recursion"),
        get(HUGE, "/huge"),
        get("/panic", "/panic"),
        get("/resources", "/resources"),
        get(FLOOD, &format!("/outbound-flood?http://{upstream}/")),
        get(
            "/fetch (metadata address, under `*`)",
            "/fetch?http://169.254.169.254/",
        ),
        get(
            "/fetch (loopback port 1, under `*`)",
            "/fetch?http://127.0.0.1:1/",
        ),
        Attack::BigBody,
        Attack::SlowDrip,
    ]
}

impl Attack {
    fn label(&self) -> &'static str {
        match self {
            Attack::Get { label, .. } => label,
            Attack::BigBody => "oversized body",
            Attack::SlowDrip => "slow-drip body",
        }
    }

    fn send(&self, target: &Target, agent: &ureq::Agent) -> Answer {
        let wait = answer_wait(&target.limits);
        match self {
            Attack::Get { path, .. } => fetch(agent, &format!("{}{path}", target.url)),
            Attack::BigBody => raw(
                &target.addr,
                &format!(
                    "POST /read-body HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
                    target.big_body.len()
                ),
                &target.big_body,
                Duration::ZERO,
                wait,
            ),
            Attack::SlowDrip => raw(
                &target.addr,
                "POST /read-body HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n",
                &[b'x'; 6],
                Duration::from_millis(300),
                wait,
            ),
        }
    }
}

/// The longest an attacker waits for an answer: a queued request waits up
/// to one timeout for its turn, then runs for up to another.
fn answer_wait(limits: &Limits) -> Duration {
    limits.timeout.as_duration() * 2 + ANSWER_MARGIN
}

/// One attacker's HTTP client: keeps connections alive, treats every
/// status as an answer.
fn agent(limits: &Limits) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(answer_wait(limits)))
        .build()
        .into()
}

/// What one attack request got back.
struct Answer {
    /// The status code, or what went wrong before one arrived.
    outcome: String,
    /// Response body bytes read.
    bytes: u64,
    /// Whether the body ended as HTTP framing says it should; false when
    /// the connection was cut (or failed) before that.
    clean: bool,
    /// The body's first bytes, as text.
    start: String,
}

impl Answer {
    fn status_only(outcome: String) -> Answer {
        Answer {
            outcome,
            bytes: 0,
            clean: true,
            start: String::new(),
        }
    }
}

/// GETs `url` and reads the whole response body, counting its bytes.
fn fetch(agent: &ureq::Agent, url: &str) -> Answer {
    let mut response = match agent.get(url).call() {
        Ok(response) => response,
        Err(e) => return Answer::status_only(failure_name(&e)),
    };
    let outcome = response.status().as_str().to_string();
    let mut reader = response.body_mut().with_config().limit(u64::MAX).reader();
    let mut buf = vec![0u8; 64 << 10];
    let (mut bytes, mut start) = (0u64, Vec::new());
    let clean = loop {
        match reader.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => {
                let keep = n.min(256usize.saturating_sub(start.len()));
                start.extend_from_slice(&buf[..keep]);
                bytes += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break false,
        }
    };
    Answer {
        outcome,
        bytes,
        clean,
        start: String::from_utf8_lossy(&start).into_owned(),
    }
}

fn failure_name(error: &ureq::Error) -> String {
    match error {
        ureq::Error::Timeout(_) => "no-response".into(),
        ureq::Error::ConnectionFailed => "connect-failed".into(),
        ureq::Error::Io(e) => format!("io-{:?}", e.kind()),
        other => format!("error: {other}"),
    }
}

/// Sends a raw request, the body in one go or byte by byte with `drip`
/// between bytes; answers with the status line's code or the I/O outcome.
fn raw(addr: &str, head: &str, body: &[u8], drip: Duration, wait: Duration) -> Answer {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return Answer::status_only("connect-failed".into());
    };
    let _ = stream.set_read_timeout(Some(wait));
    if stream.write_all(head.as_bytes()).is_err() {
        return Answer::status_only("write-failed".into());
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
    Answer::status_only(match stream.read_exact(&mut status) {
        Ok(()) => String::from_utf8_lossy(&status[9..12]).into_owned(),
        Err(_) => "no-response".into(),
    })
}

// === What the attackers saw ===

/// Answers by attack and outcome, and what the large responses and the
/// outbound flood did.
#[derive(Default)]
struct Tally {
    seen: BTreeMap<(&'static str, String), Seen>,
    huge: Huge,
    flood: Flood,
}

/// Answers of one attack with one outcome.
#[derive(Default)]
struct Seen {
    count: u64,
    slowest: Duration,
    /// Answered more than [`QUEUE_EVIDENCE`] past the timeout: these waited
    /// in the queue before running.
    past_timeout: u64,
}

impl Tally {
    fn record(&mut self, label: &'static str, answer: &Answer, took: Duration, limits: &Limits) {
        let seen = self
            .seen
            .entry((label, answer.outcome.clone()))
            .or_default();
        seen.count += 1;
        seen.slowest = seen.slowest.max(took);
        if took > limits.timeout.as_duration() + QUEUE_EVIDENCE {
            seen.past_timeout += 1;
        }
        if label == HUGE {
            self.huge.record(answer);
        }
        if label == FLOOD {
            self.flood.record(answer);
        }
    }

    /// Answers with `outcome`, all attacks together.
    fn count(&self, outcome: &str) -> u64 {
        self.seen
            .iter()
            .filter(|((_, o), _)| o == outcome)
            .map(|(_, seen)| seen.count)
            .sum()
    }

    fn by_outcome(&self) -> BTreeMap<&str, u64> {
        let mut totals = BTreeMap::new();
        for ((_, outcome), seen) in &self.seen {
            *totals.entry(outcome.as_str()).or_default() += seen.count;
        }
        totals
    }

    fn print_by_attack(&self) {
        for ((label, outcome), seen) in &self.seen {
            let queued = if seen.past_timeout > 0 {
                format!(", {} past the timeout (queued first)", seen.past_timeout)
            } else {
                String::new()
            };
            println!(
                "  {label:<40} {outcome:<14} x{:<6} slowest {:.1} s{queued}",
                seen.count,
                seen.slowest.as_secs_f64()
            );
        }
    }
}

/// The large responses: how much each delivered and how it ended.
#[derive(Default)]
struct Huge {
    responses: u64,
    clean: u64,
    cut: u64,
    bytes: u64,
    fewest: Option<u64>,
    most: u64,
}

impl Huge {
    fn record(&mut self, answer: &Answer) {
        self.responses += 1;
        if answer.clean {
            self.clean += 1;
        } else {
            self.cut += 1;
        }
        self.bytes += answer.bytes;
        self.fewest = Some(self.fewest.map_or(answer.bytes, |f| f.min(answer.bytes)));
        self.most = self.most.max(answer.bytes);
    }

    fn print(&self, limits: &Limits) {
        println!(
            "{HUGE} (1 GiB offered, max_response_body {}): {} responses read to their end, \
             {} ended cleanly, {} cut off; {} to {} bytes each, {} MiB in all",
            limits.max_response_body,
            self.responses,
            self.clean,
            self.cut,
            self.fewest.unwrap_or(0),
            self.most,
            self.bytes >> 20
        );
    }
}

/// The outbound flood as the guest saw it (`ok=N refused=M` per request).
#[derive(Default)]
struct Flood {
    responses: u64,
    reached: u64,
    refused: u64,
}

impl Flood {
    fn record(&mut self, answer: &Answer) {
        self.responses += 1;
        for field in answer.start.split_whitespace() {
            match field.split_once('=') {
                Some(("ok", n)) => self.reached += n.parse::<u64>().unwrap_or(0),
                Some(("refused", n)) => self.refused += n.parse::<u64>().unwrap_or(0),
                _ => {}
            }
        }
    }

    fn print(&self, limits: &Limits, upstream_hits: u64) {
        println!(
            "outbound flood (1,000 calls a request, max_outbound_requests {}): {} requests; \
             the guest saw {} calls answered and {} refused; the upstream received {} requests",
            limits.max_outbound_requests, self.responses, self.reached, self.refused, upstream_hits
        );
    }
}

// === The upstream the hostile guest may call ===

/// An HTTP server on loopback answering every request with `pong`, and
/// counting them.
struct Upstream {
    /// `127.0.0.1:PORT`
    addr: String,
    hits: Arc<AtomicU64>,
}

impl Upstream {
    fn start() -> Upstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let hits = Arc::new(AtomicU64::new(0));
        let counter = hits.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let counter = counter.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |_request| {
                            counter.fetch_add(1, Ordering::Relaxed);
                            async {
                                Ok::<_, Infallible>(hyper::Response::new(Full::new(
                                    bytes::Bytes::from_static(b"pong"),
                                )))
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        Upstream { addr, hits }
    }

    /// Requests received so far.
    fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

// === The skiff process ===

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

/// The highest RSS of a process, sampled every 200 ms until stopped.
struct RssPeak {
    stop: Arc<AtomicBool>,
    sampler: std::thread::JoinHandle<u64>,
}

impl RssPeak {
    fn start(pid: u32) -> RssPeak {
        let stop = Arc::new(AtomicBool::new(false));
        let done = stop.clone();
        let sampler = std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(Ordering::Acquire) {
                peak = rss_kib(pid).max(peak);
                std::thread::sleep(Duration::from_millis(200));
            }
            peak
        });
        RssPeak { stop, sampler }
    }

    /// The peak, KiB.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Release);
        self.sampler.join().unwrap()
    }
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
