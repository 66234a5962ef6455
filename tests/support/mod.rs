//! Test harness: starts the real `strait` binary on 127.0.0.1:0 with a YAML
//! config, learns the bound addresses from the line it prints on stdout,
//! and kills it when dropped. Shared by every black-box test.
#![allow(dead_code)]

pub mod dns;
pub mod edge;
pub mod pki;
pub mod upstream;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running proxy process.
pub struct Proxy {
    pub child: Child,
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
    pub stderr_path: std::path::PathBuf,
    config_path: std::path::PathBuf,
    _dir: TempDir,
}

/// A directory removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// A fresh directory, unique across the tests of this process (a
    /// counter, not the clock: tests start in parallel).
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("strait-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Listener block binding all three listeners to ephemeral loopback ports;
/// tests append their clusters and routes.
pub const EPHEMERAL_LISTENERS: &str = "listeners:\n  outbound: {address: 127.0.0.1, port: 0}\n  inbound: {address: 127.0.0.1, port: 0}\n  admin: {address: 127.0.0.1, port: 0}\n";

impl Proxy {
    /// Start `strait run --config <yaml>` and wait until it reports its listeners.
    pub fn start(yaml: &str) -> Proxy {
        Proxy::start_with(yaml, &[])
    }

    /// Like [`Proxy::start`], with extra environment variables.
    pub fn start_with(yaml: &str, env: &[(&str, &str)]) -> Proxy {
        let dir = TempDir::new("proxy");
        let config = dir.0.join("strait.yaml");
        std::fs::write(&config, yaml).expect("write config");
        let stderr_path = dir.0.join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_strait"));
        cmd.arg("run")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .env("STRAIT_LOG", "debug");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn strait");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                    panic!("strait did not report its listeners; stderr:\n{log}");
                }
            };
            if let Some(rest) = line.strip_prefix("strait listening ") {
                let addr = |name: &str| -> SocketAddr {
                    rest.split_whitespace()
                        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                        .and_then(|a| a.parse().ok())
                        .unwrap_or_else(|| panic!("no {name}= in '{line}'"))
                };
                return Proxy {
                    outbound: addr("outbound"),
                    inbound: addr("inbound"),
                    admin: addr("admin"),
                    child,
                    stderr_path,
                    config_path: config.clone(),
                    _dir: dir,
                };
            }
        }
    }

    /// The config file the proxy watches.
    pub fn config_path(&self) -> std::path::PathBuf {
        self.config_path.clone()
    }

    /// Replace the config file with `yaml` in one rename (so the proxy's
    /// own poll never reads half of it) and send SIGHUP.
    pub fn rewrite_config(&self, yaml: &str) {
        let staged = self.config_path.with_extension("staged");
        std::fs::write(&staged, yaml).expect("write the new config");
        std::fs::rename(&staged, &self.config_path).expect("swap the config file");
        self.signal("HUP");
    }

    /// Log lines so far containing every one of `needles`.
    pub fn log_lines(&self, needles: &[&str]) -> usize {
        self.log()
            .lines()
            .filter(|line| needles.iter().all(|n| line.contains(n)))
            .count()
    }

    /// The proxy's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Send a signal to the proxy process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Fetch `/metrics` from the admin port with a plain HTTP/1.0 request.
    pub fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").1
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Minimal blocking GET used for admin endpoints: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    admin_request(addr, None, "GET", path, "")
}

/// A raw HTTP/1.1 request from `from` (None: any local address) to the
/// admin port: (status, body).
pub fn admin_request(
    admin: SocketAddr,
    from: Option<std::net::IpAddr>,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    use std::io::{Read, Write};
    let stream = match from {
        Some(ip) => {
            let s = socket2::Socket::new(
                socket2::Domain::for_address(admin),
                socket2::Type::STREAM,
                None,
            )
            .expect("socket");
            s.bind(&SocketAddr::new(ip, 0).into())
                .expect("bind the client address");
            s.connect_timeout(&admin.into(), Duration::from_secs(5))
                .expect("connect admin");
            std::net::TcpStream::from(s)
        }
        None => std::net::TcpStream::connect(admin).expect("connect admin"),
    };
    let mut stream = stream;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A non-loopback address of this machine (the one its default route uses).
pub fn non_loopback_ip() -> std::net::IpAddr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp socket");
    // A UDP connect only looks up the route; nothing is sent.
    socket
        .connect("192.0.2.1:9")
        .and_then(|()| socket.local_addr())
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .expect("this test needs a non-loopback IPv4 address with a route (none found)")
}

/// Sum of every sample of `family` whose labels contain all `labels`
/// (`key="value"` strings), from Prometheus text.
pub fn metric_sum(text: &str, family: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name_labels, value) = l.rsplit_once(' ')?;
            let (name, label_str) = match name_labels.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (name_labels, ""),
            };
            if name != family || !labels.iter().all(|want| label_str.contains(want)) {
                return None;
            }
            value.parse::<f64>().ok()
        })
        .sum()
}

/// A loopback address with a port free right now (bound, then released),
/// for configs that must name a port before the proxy binds it.
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}
