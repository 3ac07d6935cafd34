//! Shared by the benchmark programs: running `wrk` and reading its figures.

#![allow(dead_code)]

use std::process::Command;

/// One `wrk` run's figures.
#[derive(Debug, Clone, Copy)]
pub struct WrkRun {
    /// Requests per second.
    pub requests_per_sec: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Socket errors plus non-2xx responses.
    pub errors: u64,
    /// Responses with a status outside 2xx (wrk's "Non-2xx or 3xx
    /// responses"); wrk counts them in requests/s.
    pub non_2xx: u64,
    /// Connect, read and write errors and timeouts (wrk's "Socket errors");
    /// a request that timed out (wrk's default: 2 s) is left out of the
    /// latency percentiles.
    pub socket_errors: u64,
}

impl std::fmt::Display for WrkRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  errors {} (non-2xx {}, socket {})",
            self.requests_per_sec,
            self.p50_ms,
            self.p99_ms,
            self.errors,
            self.non_2xx,
            self.socket_errors
        )
    }
}

impl WrkRun {
    /// The run with the median requests/s.
    pub fn median(runs: &[WrkRun]) -> WrkRun {
        let mut sorted = runs.to_vec();
        sorted.sort_by(|a, b| a.requests_per_sec.total_cmp(&b.requests_per_sec));
        sorted[sorted.len() / 2]
    }
}

/// Whether `wrk` is installed.
pub fn wrk_available() -> bool {
    Command::new("wrk").arg("--version").output().is_ok()
}

/// Runs `wrk` against `url` with `threads` threads, `connections`
/// connections, for `seconds`.
pub fn wrk(url: &str, threads: u32, connections: u32, seconds: u64) -> WrkRun {
    wrk_with_headers(url, threads, connections, seconds, &[])
}

/// [`wrk`] sending `headers` (`"Name: value"`) with every request.
pub fn wrk_with_headers(
    url: &str,
    threads: u32,
    connections: u32,
    seconds: u64,
    headers: &[&str],
) -> WrkRun {
    let mut command = Command::new("wrk");
    command.args([
        &format!("-t{threads}"),
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        "--latency",
    ]);
    for header in headers {
        command.args(["-H", header]);
    }
    let output = command.arg(url).output().expect("running wrk");
    parse(&String::from_utf8_lossy(&output.stdout))
}

fn parse(text: &str) -> WrkRun {
    let field = |prefix: &str| -> Option<&str> {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
    };
    // Absent when there were none.
    let count = |marker: &str| -> u64 {
        text.lines()
            .filter(|l| l.contains(marker))
            .flat_map(|l| l.split(|c: char| !c.is_ascii_digit()))
            .filter_map(|n| n.parse::<u64>().ok())
            .sum()
    };
    let non_2xx = count("Non-2xx or 3xx responses");
    let socket_errors = count("Socket errors");
    WrkRun {
        requests_per_sec: field("Requests/sec:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0),
        p50_ms: field("50%").map_or(f64::NAN, duration_ms),
        p99_ms: field("99%").map_or(f64::NAN, duration_ms),
        errors: non_2xx + socket_errors,
        non_2xx,
        socket_errors,
    }
}

/// `"1.23ms"`, `"456.00us"`, `"1.02s"` -> milliseconds.
fn duration_ms(text: &str) -> f64 {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (text, 1.0)
    };
    number.parse::<f64>().unwrap_or(f64::NAN) * scale
}

/// A loopback port free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The status `url` answers a GET with, if it answers within 5 s.
pub fn get_status(url: &str) -> Option<u16> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(5)))
        .build()
        .into();
    agent.get(url).call().ok().map(|r| r.status().as_u16())
}
