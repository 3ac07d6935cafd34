//! Benchmark: HTTPS ingress against plain HTTP on the same node.
//!
//! `skiff up` serves the hello component at a domain over HTTP and HTTPS
//! (a certificate of a CA made here, given with `skiff cert add`). One
//! load generator in this process, the same for both, measures:
//!
//! - keep-alive throughput and latency: `SKIFF_BENCH_CONNECTIONS`
//!   connections (default 32), each sending requests one after another,
//!   over plain HTTP/1.1 and over HTTPS (HTTP/1.1, TLS 1.3); interleaved
//!   rounds, alternating which goes first, reported as medians and their
//!   ratio (target: HTTPS at least 0.8x);
//! - new TLS handshakes a second: every request on a new connection (a
//!   full handshake, TLS 1.3, ECDSA P-256), against new plain-HTTP
//!   connections;
//! - HTTP/2: one connection with 64 streams in flight at all times.
//!
//! With `wrk` installed, it also runs `wrk` against plain HTTP, as a peer
//! load generator's figure for the same node (wrk cannot be pointed at a
//! domain that does not resolve, so HTTPS is measured only by this one).
//!
//! `SKIFF_BENCH_ROUNDS` sets the rounds (default 3), `SKIFF_BENCH_SECONDS`
//! each run (default 10).
//!
//! Run: `cargo bench -p skiff-orchestrator --bench https`.

#[path = "../tests/support/mod.rs"]
mod support;
#[path = "support/mod.rs"]
mod wrk;

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use skiff_test_guests::HELLO;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{Running, skiff, temp_dir, toml_path, write_manifest};

/// The domain the app is served at.
const DOMAIN: &str = "bench.skiff.test";

/// Streams kept in flight on the one HTTP/2 connection.
const STREAMS: usize = 64;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Figures of one run: requests answered 200, the rest, and latencies.
struct Run {
    ok: u64,
    failed: u64,
    seconds: f64,
    latencies: Vec<Duration>,
}

impl Run {
    fn empty() -> Run {
        Run {
            ok: 0,
            failed: 0,
            seconds: 0.0,
            latencies: Vec::new(),
        }
    }

    /// Counts one request: answered 200 after `took`, or not.
    fn record(&mut self, ok: bool, took: Duration) {
        if ok {
            self.ok += 1;
            self.latencies.push(took);
        } else {
            self.failed += 1;
        }
    }

    /// The runs of `tasks`, merged, over the time since `started`.
    async fn join(tasks: Vec<tokio::task::JoinHandle<Run>>, started: Instant) -> Run {
        let mut runs = Vec::new();
        for task in tasks {
            runs.push(task.await.unwrap());
        }
        Run::merge(runs, started.elapsed().as_secs_f64())
    }

    fn rate(&self) -> f64 {
        self.ok as f64 / self.seconds
    }

    fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[i].as_secs_f64() * 1000.0
    }

    fn merge(runs: Vec<Run>, seconds: f64) -> Run {
        let mut all = Run {
            seconds,
            ..Run::empty()
        };
        for run in runs {
            all.ok += run.ok;
            all.failed += run.failed;
            all.latencies.extend(run.latencies);
        }
        all
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>8.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  failed {}",
            self.rate(),
            self.percentile(0.50),
            self.percentile(0.99),
            self.failed
        )
    }
}

/// How a load connection reaches the node.
#[derive(Clone)]
enum Transport {
    Plain(String),
    Tls(String, Arc<rustls::ClientConfig>),
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>;

impl Transport {
    /// A new HTTP/1.1 connection, ready to send.
    async fn connect(&self) -> Result<Sender, String> {
        let (addr, tls) = match self {
            Transport::Plain(addr) => (addr, None),
            Transport::Tls(addr, tls) => (addr, Some(tls.clone())),
        };
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        match tls {
            None => handshake(TokioIo::new(tcp)).await,
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(DOMAIN).unwrap();
                let stream = tokio_rustls::TlsConnector::from(tls)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| e.to_string())?;
                handshake(TokioIo::new(stream)).await
            }
        }
    }
}

async fn handshake<I>(io: I) -> Result<Sender, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok(sender)
}

/// The load generator's runtime: two workers, as many as the node has
/// cores.
fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// One GET of `/` for the domain; whether it was answered 200.
async fn get(sender: &mut Sender) -> bool {
    let request = http::Request::get("/")
        .header(http::header::HOST, DOMAIN)
        .body(Empty::new())
        .unwrap();
    match sender.send_request(request).await {
        Ok(response) => {
            let ok = response.status() == 200;
            ok && response.into_body().collect().await.is_ok()
        }
        Err(_) => false,
    }
}

/// `connections` connections sending requests one after another for
/// `seconds`; with `fresh`, a new connection (and handshake) per request.
fn load(transport: &Transport, connections: usize, seconds: u64, fresh: bool) -> Run {
    let runtime = client_runtime();
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    runtime.block_on(async {
        let tasks: Vec<_> = (0..connections)
            .map(|_| {
                let transport = transport.clone();
                tokio::spawn(async move {
                    let mut run = Run::empty();
                    let mut kept: Option<Sender> = None;
                    while Instant::now() < until {
                        let asked = Instant::now();
                        let mut sender = match kept.take() {
                            Some(sender) if !fresh => sender,
                            _ => match transport.connect().await {
                                Ok(sender) => sender,
                                Err(_) => {
                                    run.failed += 1;
                                    tokio::time::sleep(Duration::from_millis(10)).await;
                                    continue;
                                }
                            },
                        };
                        let ok = get(&mut sender).await;
                        run.record(ok, asked.elapsed());
                        if ok {
                            kept = Some(sender);
                        }
                    }
                    run
                })
            })
            .collect();
        Run::join(tasks, started).await
    })
}

/// One HTTP/2 connection with [`STREAMS`] requests in flight for
/// `seconds`.
fn multiplexed(addr: &str, tls: Arc<rustls::ClientConfig>, seconds: u64) -> Run {
    let runtime = client_runtime();
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let addr = addr.to_string();
    runtime.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let _ = tcp.set_nodelay(true);
        let name = rustls::pki_types::ServerName::try_from(DOMAIN).unwrap();
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        let tasks: Vec<_> = (0..STREAMS)
            .map(|_| {
                let mut sender = sender.clone();
                tokio::spawn(async move {
                    let mut run = Run::empty();
                    while Instant::now() < until {
                        let asked = Instant::now();
                        let request = http::Request::get(format!("https://{DOMAIN}/"))
                            .body(Empty::<bytes::Bytes>::new())
                            .unwrap();
                        let ok = match sender.send_request(request).await {
                            Ok(response) => {
                                response.status() == 200
                                    && response.into_body().collect().await.is_ok()
                            }
                            Err(_) => false,
                        };
                        run.record(ok, asked.elapsed());
                    }
                    run
                })
            })
            .collect();
        Run::join(tasks, started).await
    })
}

/// A CA, and a certificate and key for [`DOMAIN`] it signed (PEM).
fn certificate() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![DOMAIN.to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca_pem, leaf.pem(), key.serialize_pem())
}

fn median(runs: &mut [Run]) -> &Run {
    runs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    &runs[runs.len() / 2]
}

fn main() {
    let rounds = env_or("SKIFF_BENCH_ROUNDS", 3);
    let seconds = env_or("SKIFF_BENCH_SECONDS", 10) as u64;
    let connections = env_or("SKIFF_BENCH_CONNECTIONS", 32);
    let home = temp_dir();
    let app = temp_dir();
    write_manifest(
        app.path(),
        &format!(
            "[app]\nname = \"bench\"\ndomains = [\"{DOMAIN}\"]\n\
             [component.hello]\nsource = {}\nroute = \"/...\"\n",
            toml_path(HELLO)
        ),
    );
    let (http_port, https_port, api_port) = (wrk::free_port(), wrk::free_port(), wrk::free_port());
    let http = format!("127.0.0.1:{http_port}");
    let https = format!("127.0.0.1:{https_port}");
    let _up = Running::launch(
        home.path(),
        &[
            "up",
            app.path().to_str().unwrap(),
            "--listen",
            &http,
            "--https-listen",
            &https,
            "--api",
            &format!("127.0.0.1:{api_port}"),
        ],
        "Serving ",
    );
    let (ca_pem, cert_pem, key_pem) = certificate();
    let certs = temp_dir();
    std::fs::write(certs.path().join("cert.pem"), cert_pem).unwrap();
    std::fs::write(certs.path().join("key.pem"), key_pem).unwrap();
    let added = skiff(home.path())
        .args(["cert", "add", DOMAIN, "--cert"])
        .arg(certs.path().join("cert.pem"))
        .arg("--key")
        .arg(certs.path().join("key.pem"))
        .output()
        .unwrap();
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let h1 = support::tls::client_trusting(&ca_pem, &[b"http/1.1"]);
    let h2 = support::tls::client_trusting(&ca_pem, &[b"h2"]);
    support::wait_until(Duration::from_secs(30), "HTTPS to serve", || {
        support::tls::https_get(&https, DOMAIN, h1.clone(), "/")
            .ok()
            .filter(|a| a.status == 200)
    });
    let plain = Transport::Plain(http.clone());
    let tls = Transport::Tls(https.clone(), h1);

    println!(
        "HTTPS ingress against plain HTTP on one `skiff up` node, {connections} connections, {rounds} rounds of {seconds}s, same load generator"
    );
    let (mut plains, mut secures) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for secure in order {
            if secure {
                secures.push(load(&tls, connections, seconds, false));
            } else {
                plains.push(load(&plain, connections, seconds, false));
            }
        }
    }
    let plain_run = median(&mut plains);
    let secure_run = median(&mut secures);
    println!("  keep-alive HTTP/1.1   {plain_run}");
    println!("  keep-alive HTTPS/1.1  {secure_run}");
    println!(
        "  HTTPS / HTTP: {:.2}x requests/s (target at least 0.8x), p99 {:.2}x",
        secure_run.rate() / plain_run.rate(),
        secure_run.percentile(0.99) / plain_run.percentile(0.99)
    );

    let fresh_plain = load(&plain, connections, seconds, true);
    let fresh_tls = load(&tls, connections, seconds, true);
    println!("  new connection per request, HTTP   {fresh_plain}");
    println!(
        "  new connection per request, HTTPS  {fresh_tls}  ({:.0} TLS handshakes/s)",
        fresh_tls.rate()
    );

    let streams = multiplexed(&https, h2, seconds);
    println!("  HTTP/2, one connection, {STREAMS} streams  {streams}");

    if wrk::wrk_available() {
        let peer = wrk::wrk(&format!("http://{http}/"), 2, connections as u32, seconds);
        println!(
            "  wrk (peer load generator), keep-alive HTTP/1.1 to the same node: {peer}; this generator's HTTP figure is {:.2}x wrk's",
            plain_run.rate() / peer.requests_per_sec
        );
    } else {
        println!("  (wrk not installed: `apt-get install wrk` for a peer's figure)");
    }
}
