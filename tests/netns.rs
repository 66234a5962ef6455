//! Transparent proxying for real: two network namespaces joined by a veth
//! pair (198.18.0.0/30, the RFC 2544 benchmarking range, never routed off
//! this machine). Each namespace runs strait as uid 2102 behind the rules
//! `strait iptables --apply` installs. An app in the client namespace
//! curls the server namespace's app: its connection is REDIRECTed to the
//! client proxy's outbound port, which finds the original destination with
//! SO_ORIGINAL_DST and connects there; on arrival the server namespace's
//! PREROUTING rule REDIRECTs it to that proxy's inbound port, which
//! forwards to the app on 127.0.0.1 at the original port.
//!
//! Needs root, `ip netns`, iptables and setpriv; where `ip netns add` is
//! refused the test says SKIPPED and why.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::metric_sum;

const PROXY_UID: &str = "2102";
const APP_PORT: u16 = 8080;

fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[track_caller]
fn must(args: &[&str]) -> String {
    run(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Two namespaces and a veth pair, removed on drop with everything in them.
struct Hosts {
    client: String,
    server: String,
    children: Vec<Child>,
    dir: std::path::PathBuf,
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in [&self.client, &self.server] {
            let _ = run(&["ip", "netns", "del", ns]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Hosts {
    fn exec(&self, ns: &str, args: &[&str]) -> Result<String, String> {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(args);
        run(&full)
    }

    fn spawn(&mut self, ns: &str, args: &[&str], log: &str) {
        let log = std::fs::File::create(self.dir.join(log)).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn in namespace");
        self.children.push(child);
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    /// Start strait as the proxy uid in `ns`, with its redirect rules.
    fn start_proxy(&mut self, ns: &str, inbound_ip: &str) {
        let config = self.dir.join(format!("{ns}.yaml"));
        std::fs::write(
            &config,
            format!(
                "log: {{level: debug}}\nlisteners:\n  outbound: {{address: 127.0.0.1, port: 4140}}\n  inbound: {{address: {inbound_ip}, port: 4143}}\n  admin: {{address: 127.0.0.1, port: 4191}}\n"
            ),
        )
        .expect("write config");
        let strait = env!("CARGO_BIN_EXE_strait");
        let config = config.to_str().expect("utf-8 path").to_string();
        let reuid = format!("--reuid={PROXY_UID}");
        let regid = format!("--regid={PROXY_UID}");
        self.spawn(
            ns,
            &[
                "setpriv",
                &reuid,
                &regid,
                "--clear-groups",
                strait,
                "run",
                "--config",
                &config,
            ],
            &format!("{ns}.log"),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while self
            .exec(ns, &["curl", "-sf", "http://127.0.0.1:4191/ready"])
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "strait in {ns} not ready:\n{}",
                self.log(&format!("{ns}.log"))
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.exec(
            ns,
            &[strait, "iptables", "--apply", "--proxy-uid", PROXY_UID],
        )
        .unwrap_or_else(|e| panic!("iptables rules in {ns}: {e}"));
    }

    fn metrics(&self, ns: &str) -> String {
        self.exec(ns, &["curl", "-s", "http://127.0.0.1:4191/metrics"])
            .unwrap_or_default()
    }
}

fn setup() -> Result<Hosts, String> {
    let id = std::process::id();
    let (client, server) = (format!("stc{id}"), format!("sts{id}"));
    run(&["ip", "netns", "add", &client])?;
    let dir = std::env::temp_dir().join(format!("strait-netns-{id}"));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let hosts = Hosts {
        client,
        server,
        children: Vec::new(),
        dir,
    };
    run(&["ip", "netns", "add", &hosts.server])?;
    let (vc, vs) = (format!("vc{id}"), format!("vs{id}"));
    run(&[
        "ip", "link", "add", &vc, "type", "veth", "peer", "name", &vs,
    ])?;
    run(&["ip", "link", "set", &vc, "netns", &hosts.client])?;
    run(&["ip", "link", "set", &vs, "netns", &hosts.server])?;
    for (ns, dev, addr) in [
        (&hosts.client, &vc, "198.18.0.1/30"),
        (&hosts.server, &vs, "198.18.0.2/30"),
    ] {
        hosts.exec(ns, &["ip", "addr", "add", addr, "dev", dev])?;
        hosts.exec(ns, &["ip", "link", "set", dev, "up"])?;
        hosts.exec(ns, &["ip", "link", "set", "lo", "up"])?;
    }
    Ok(hosts)
}

#[test]
fn iptables_redirect_and_original_destination_in_network_namespaces() {
    if let Err(e) = run(&["ip", "netns", "list"]) {
        eprintln!("SKIPPED: `ip netns` is unavailable here: {e}");
        return;
    }
    for tool in ["iptables", "setpriv", "curl", "python3"] {
        assert!(
            run(&["sh", "-c", &format!("command -v {tool}")]).is_ok(),
            "{tool} is required (bash .ci/run installs it)"
        );
    }
    let mut hosts = match setup() {
        Ok(hosts) => hosts,
        Err(e) => {
            eprintln!("SKIPPED: cannot create network namespaces (needs root): {e}");
            let _ = run(&["ip", "netns", "del", &format!("stc{}", std::process::id())]);
            return;
        }
    };
    // The server namespace's app: a static file on 0.0.0.0:8080.
    let site = hosts.dir.join("site");
    std::fs::create_dir_all(&site).expect("site dir");
    std::fs::write(site.join("hello.txt"), "netns-app").expect("site file");
    let (client, server) = (hosts.client.clone(), hosts.server.clone());
    let port = APP_PORT.to_string();
    hosts.spawn(
        &server,
        &[
            "python3",
            "-m",
            "http.server",
            &port,
            "--bind",
            "0.0.0.0",
            "--directory",
            site.to_str().expect("utf-8"),
        ],
        "app.log",
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while hosts
        .exec(
            &server,
            &[
                "curl",
                "-sf",
                &format!("http://127.0.0.1:{APP_PORT}/hello.txt"),
            ],
        )
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "app did not start:\n{}",
            hosts.log("app.log")
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    hosts.start_proxy(&server, "0.0.0.0");
    hosts.start_proxy(&client, "127.0.0.1");

    let url = format!("http://198.18.0.2:{APP_PORT}/hello.txt");
    let body = hosts
        .exec(&client, &["curl", "-s", "--max-time", "10", &url])
        .unwrap_or_else(|e| {
            panic!(
                "{e}\nclient proxy:\n{}\nserver proxy:\n{}",
                hosts.log(&format!("{client}.log")),
                hosts.log(&format!("{server}.log"))
            )
        });
    assert_eq!(body, "netns-app");

    let target = format!("target_addr=\"198.18.0.2:{APP_PORT}\"");
    let c = hosts.metrics(&client);
    assert!(
        metric_sum(&c, "request_total", &["direction=\"outbound\"", &target]) >= 1.0,
        "the client proxy did not carry the request to its original destination:\n{c}"
    );
    let s = hosts.metrics(&server);
    let app = format!("target_addr=\"127.0.0.1:{APP_PORT}\"");
    assert!(
        metric_sum(&s, "request_total", &["direction=\"inbound\"", &app]) >= 1.0,
        "the server proxy did not receive the redirected connection:\n{s}"
    );
    // The rules the test used are the ones `strait iptables` prints.
    let rules = must(&[
        "ip",
        "netns",
        "exec",
        &server,
        "iptables",
        "-t",
        "nat",
        "-S",
        "STRAIT_INBOUND_REDIRECT",
    ]);
    assert!(rules.contains("--to-ports 4143"), "{rules}");
}
