//! A real ACME server: Let's Encrypt's test server pebble (Debian's
//! `pebble`, which the test command installs), with its DNS server
//! (`pebble-challtestsrv`) answering every name with one loopback address,
//! on loopback ports in a temporary directory.

use super::etcd::free_port;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running pebble and its DNS server.
pub struct Pebble {
    _dir: tempfile::TempDir,
    processes: Vec<Child>,
    /// The ACME directory URL.
    pub directory: String,
    /// `127.0.0.1:PORT` of pebble's management API (its roots).
    management: String,
    /// A PEM file of the CA pebble's own HTTPS certificate chains to:
    /// what a control plane gets as `--acme-ca-roots`.
    pub ca_roots: PathBuf,
    ca_pem: String,
}

impl Pebble {
    /// Starts pebble, validating HTTP-01 challenges at `resolve_to:
    /// http_port` for every domain, and issuing certificates valid for
    /// `validity_secs`.
    pub fn start(resolve_to: &str, http_port: u16, validity_secs: u64) -> Pebble {
        assert!(
            Command::new("pebble").arg("-h").output().is_ok(),
            "pebble is not installed: the test command (scripts/test.sh) installs Debian's pebble"
        );
        let dir = super::temp_dir();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pebble listener test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("ca.pem"), ca.pem()).unwrap();
        std::fs::write(path("cert.pem"), leaf.pem()).unwrap();
        std::fs::write(path("key.pem"), key.serialize_pem()).unwrap();
        let (listen, management, dns) = (free_port(), free_port(), free_port());
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{listen}"),
                "managementListenAddress": format!("127.0.0.1:{management}"),
                "certificate": path("cert.pem"),
                "privateKey": path("key.pem"),
                "httpPort": http_port,
                "tlsPort": free_port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": validity_secs,
            }
        });
        std::fs::write(path("pebble.json"), config.to_string()).unwrap();
        let log = |name: &str| Stdio::from(std::fs::File::create(path(name)).unwrap());
        let dns_server = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", resolve_to, "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{}", free_port())])
            .stdout(log("dns.log"))
            .stderr(log("dns.err"))
            .spawn()
            .unwrap();
        let pebble = Command::new("pebble")
            .args(["-config", path("pebble.json").to_str().unwrap()])
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            // No random waits before validating, and no nonces refused
            // on purpose: the tests time what Skiff does.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .unwrap();
        let pebble = Pebble {
            processes: vec![pebble, dns_server],
            directory: format!("https://127.0.0.1:{listen}/dir"),
            management: format!("127.0.0.1:{management}"),
            ca_roots: path("ca.pem"),
            ca_pem: ca.pem(),
            _dir: dir,
        };
        super::wait_until(Duration::from_secs(30), "pebble to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", listen)).ok()
        });
        pebble
    }

    /// The roots of the certificates pebble issues (made anew each time
    /// it starts), PEM.
    pub fn issuing_roots(&self) -> String {
        let tls = super::tls::client_trusting(&self.ca_pem, &[]);
        let answer = super::tls::https_get(&self.management, "127.0.0.1", tls, "/roots/0").unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.body
    }

    /// Pebble's own log, for a failing test's message.
    pub fn log(&self) -> String {
        let read = |name| std::fs::read_to_string(self._dir.path().join(name)).unwrap_or_default();
        format!("{}{}", read("pebble.log"), read("pebble.err"))
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for process in &mut self.processes {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}
