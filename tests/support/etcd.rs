//! Real etcd clusters (Debian's `etcd-server`, which the test command
//! installs) on loopback ports, in a temporary directory: started, killed
//! and restarted member by member by the tests.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// An etcd cluster of one or more members.
pub struct Etcd {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    /// The key prefix this cluster's tests use.
    pub prefix: String,
}

struct Member {
    name: String,
    client: u16,
    peer: u16,
    process: Option<Child>,
}

/// A free loopback port (free when asked; etcd binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Etcd {
    /// Starts a cluster of `members` members and waits until it has a
    /// leader.
    pub fn start(members: usize) -> Etcd {
        assert!(
            Command::new("etcd").arg("--version").output().is_ok(),
            "etcd is not installed: the test command (scripts/test.sh) installs Debian's etcd-server"
        );
        let mut etcd = Etcd {
            dir: super::temp_dir(),
            members: (0..members)
                .map(|i| Member {
                    name: format!("m{i}"),
                    client: free_port(),
                    peer: free_port(),
                    process: None,
                })
                .collect(),
            prefix: "/skiff/".to_string(),
        };
        for i in 0..members {
            etcd.launch(i, "new");
        }
        etcd.wait_healthy();
        etcd
    }

    /// `--store` for a control plane on this cluster: every member.
    pub fn store_arg(&self) -> String {
        let members: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client))
            .collect();
        format!("etcd://{}", members.join(","))
    }

    /// `http://127.0.0.1:PORT` of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect()
    }

    fn launch(&mut self, i: usize, state: &str) {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect();
        let member = &self.members[i];
        let data = self.dir.path().join(&member.name);
        let client = format!("http://127.0.0.1:{}", member.client);
        let peer = format!("http://127.0.0.1:{}", member.peer);
        let log =
            std::fs::File::create(self.dir.path().join(format!("{}.log", member.name))).unwrap();
        let child = Command::new("etcd")
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "skiff-test"])
            // Quick elections: the failover tests wait for them.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting etcd");
        self.members[i].process = Some(child);
    }

    /// Waits (at most 30 s) until the members up agree on a leader.
    pub fn wait_healthy(&self) {
        super::wait_until(Duration::from_secs(30), "etcd to elect a leader", || {
            self.members
                .iter()
                .filter(|m| m.process.is_some())
                .any(|m| {
                    let url = format!("http://127.0.0.1:{}/health", m.client);
                    super::http().get(&url).call().is_ok_and(|mut response| {
                        response.status() == 200
                            && response
                                .body_mut()
                                .read_to_string()
                                .is_ok_and(|body| body.contains("\"true\""))
                    })
                })
                .then_some(())
        })
    }

    /// Kills member `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.launch(i, "existing");
    }

    /// What member `i` logged, for a failing test's message.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(
            self.dir
                .path()
                .join(format!("{}.log", self.members[i].name)),
        )
        .unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
