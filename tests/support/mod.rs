//! Helpers shared by the end-to-end tests: start the real `skiff` binary,
//! wait until it serves, talk HTTP to it, and stop it.

#![allow(dead_code)]

pub mod acme;
pub mod cluster;
pub mod etcd;
pub mod load;
pub mod tls;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `skiff` binary under test.
pub fn skiff_bin() -> &'static str {
    env!("CARGO_BIN_EXE_skiff")
}

/// A `skiff` command with its own Skiff home.
pub fn skiff(home: &Path) -> Command {
    let mut cmd = Command::new(skiff_bin());
    cmd.env("SKIFF_HOME", home).env("RUST_LOG", "info");
    cmd
}

/// A running `skiff run`; killed when dropped.
pub struct Running {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// Everything printed on stdout up to the "Serving" line.
    pub banner: String,
    stderr: Arc<Mutex<String>>,
}

impl Running {
    /// Starts `skiff run ARGS --listen 127.0.0.1:0` and waits for it to
    /// serve.
    pub fn start(home: &Path, args: &[&str]) -> Running {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--listen", "127.0.0.1:0"]);
        Running::launch(home, &all, "Serving ")
    }

    /// Starts `skiff up APP EXTRA` on free loopback ports and waits for
    /// it to serve; `url` is its ingress.
    pub fn up(home: &Path, app: &str, extra: &[&str]) -> Running {
        let mut args = vec!["up", app, "--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        Running::launch(home, &args, "Serving ")
    }

    /// Starts `skiff ARGS` and waits for a stdout line containing
    /// `marker`; `url` is the word after it.
    pub fn launch(home: &Path, args: &[&str], marker: &str) -> Running {
        let mut child = skiff(home)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting skiff");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let marker = marker.to_string();
        std::thread::spawn(move || {
            let mut banner = String::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                banner.push_str(&line);
                banner.push('\n');
                if let Some((_, rest)) = line.split_once(marker.as_str()) {
                    let url = rest.split_whitespace().next().unwrap().to_string();
                    let _ = tx.send((url, banner.clone()));
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok((url, banner)) => Running {
                child,
                url,
                banner,
                stderr,
            },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "skiff {args:?} did not start serving; stderr:\n{}",
                    stderr.lock().unwrap()
                );
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `url` + `path`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits up to 5 s for `needle` to appear on stderr; returns stderr.
    pub fn wait_for_stderr(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let stderr = self.stderr();
            if stderr.contains(needle) {
                return stderr;
            }
            assert!(
                Instant::now() < deadline,
                "stderr never showed {needle:?}:\n{stderr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to 5 s for a stderr line containing every one of
    /// `needles`; returns that line.
    pub fn wait_for_line(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let stderr = self.stderr();
            if let Some(line) = stderr
                .lines()
                .find(|line| needles.iter().all(|n| line.contains(n)))
            {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "stderr never showed a line with {needles:?}:\n{stderr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (e.g. "STOP", "CONT") to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args([&format!("-{signal}"), &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `limit` for the process to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "skiff did not exit within {limit:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "skiff did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A panic in skiff fails the test that ran it, even when the test
        // saw nothing wrong: a handler that panics is a defect whatever
        // the client got. (A guest's own panic is a line of its output,
        // `[app] thread ... panicked`, and is no defect of skiff's.)
        let stderr = self.stderr();
        let mut lines = stderr.lines();
        if !std::thread::panicking()
            && let Some(line) = lines
                .by_ref()
                .find(|l| l.starts_with("thread '") && l.contains(" panicked at "))
        {
            let message: Vec<&str> = lines.take(2).collect();
            panic!("skiff {line}\n{}", message.join("\n"));
        }
    }
}

/// Runs `skiff ARGS` to completion, expecting failure; returns stderr.
pub fn expect_failure(home: &Path, args: &[&str]) -> String {
    let output = skiff(home).args(args).output().expect("running skiff");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "skiff {args:?} should have failed; stdout:\n{}\nstderr:\n{stderr}",
        String::from_utf8_lossy(&output.stdout)
    );
    stderr
}

/// An HTTP client that returns every status as a response, not an error.
pub fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// GET `url`, returning (status, body).
pub fn get(url: &str) -> (u16, String) {
    let mut response = http().get(url).call().expect("GET failed");
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().unwrap_or_default();
    (status, body)
}

/// A fresh temporary directory.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Writes `skiff.toml` with `text` into `dir` and returns its path.
pub fn write_manifest(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("skiff.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A TOML string literal for `path`.
pub fn toml_path(path: &str) -> String {
    format!("{path:?}")
}

/// A one-shot-per-connection HTTP server on loopback answering every
/// request with `body`; counts the requests it saw.
pub struct Upstream {
    /// `127.0.0.1:PORT`
    pub addr: String,
    hits: Arc<Mutex<usize>>,
}

impl Upstream {
    /// Starts the server on an ephemeral port.
    pub fn start(body: &'static str) -> Upstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let hits = Arc::new(Mutex::new(0));
        let counter = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                *counter.lock().unwrap() += 1;
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    if line == "\r\n" {
                        break;
                    }
                    line.clear();
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = std::io::Write::write_all(&mut stream, response.as_bytes());
            }
        });
        Upstream { addr, hits }
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        *self.hits.lock().unwrap()
    }
}

/// Starts `skiff server --listen LISTEN` with its data under
/// `HOME/server` and EXTRA flags, and waits for it to serve.
pub fn start_server(home: &Path, listen: &str, extra: &[&str]) -> Running {
    let data = home.join("server");
    let mut args = vec![
        "server",
        "--listen",
        listen,
        "--data-dir",
        data.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Running::launch(home, &args, "Control plane serving ")
}

/// Polls `check` every 50 ms until it returns a value or `limit` passes.
pub fn wait_until<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
