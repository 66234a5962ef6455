//! The `strait` command line: `check` explains broken files by field and
//! line and exits non-zero, accepts good ones and prints what would run;
//! `run` refuses a bad file or environment override before binding
//! anything; `iptables` prints the redirect rules; `version` answers.

mod support;

use std::process::{Command, Output};
use support::TempDir;

fn strait(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strait"))
        .args(args)
        .output()
        .expect("run strait")
}

fn check(yaml: &str) -> Output {
    let dir = TempDir::new("cli");
    let path = dir.0.join("config.yaml");
    std::fs::write(&path, yaml).expect("write config");
    strait(&["check", path.to_str().expect("utf-8 path")])
}

#[track_caller]
fn assert_check_fails(yaml: &str, expected: &[&str]) {
    let out = check(yaml);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted:\n{yaml}");
    for want in expected {
        assert!(stderr.contains(want), "stderr lacks '{want}':\n{stderr}");
    }
}

#[test]
fn check_names_field_and_line_of_each_error() {
    assert_check_fails(
        "listeners:\n  outbound:\n    port: 4140\n  inbound:\n    port: 70000\n",
        &["listeners.inbound.port: 70000 is not a port (line 5)"],
    );
    assert_check_fails(
        "proxy:\n  detect_timeot: 1s\n",
        &["proxy.detect_timeot", "unknown field", "(line 2)"],
    );
    assert_check_fails(
        "clusters:\n  - name: web\n    endpoints:\n      - address: web_1:80\n",
        &[
            "clusters[0].endpoints[0].address",
            "'web_1:80' is not an IP:port",
            "(line 4)",
        ],
    );
    assert_check_fails(
        "clusters:\n  - name: web\n    endpoints: [{address: '127.0.0.1:80'}]\nroutes:\n  - authority: web\n    cluster: api\n",
        &["routes[0].cluster", "cluster 'api' is not defined", "(line 6)"],
    );
    assert_check_fails(
        "proxy:\n  connect_timeout: fast\n",
        &[
            "proxy.connect_timeout",
            "'fast' is not a duration",
            "(line 2)",
        ],
    );
    assert_check_fails("log:\n  level: loud\n", &["log.level", "(line 2)"]);
    assert_check_fails("listeners: [\n", &["line"]);
}

/// What `run` would fail on, `check` fails on first: identity files that
/// are missing, listeners sharing an address, names that would share a
/// metric label. Each error names the field and line, and says the OS
/// error once.
#[test]
fn check_refuses_what_run_would_fail_on() {
    let out = check(
        "identity:\n  certificate: /nonexistent/tls.crt\n  private_key: /nonexistent/tls.key\n  trust_bundle: /nonexistent/ca.crt\n",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted missing identity files");
    assert!(
        stderr.contains("identity.certificate: cannot read /nonexistent/tls.crt: No such file or directory (os error 2) (line 2)"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("os error 2").count(), 1, "{stderr}");
    assert_check_fails(
        "xds:\n  address: 127.0.0.1:15012\n  node: {id: n}\n  tls: {trust_bundle: /nonexistent/root.pem}\n",
        &["xds.tls.trust_bundle: cannot read /nonexistent/root.pem"],
    );

    assert_check_fails(
        "listeners:\n  outbound: {address: 127.0.0.1, port: 4140}\n  admin:\n    address: 127.0.0.1\n    port: 4140\n",
        &["listeners.admin.port: 127.0.0.1:4140 is also the listeners.outbound listener's address", "(line 5)"],
    );
    let vhosts = "clusters:\n  - {name: a, endpoints: [{address: 127.0.0.1:80}]}\nvirtual_hosts:\n";
    assert_check_fails(
        &format!("{vhosts}  - {{name: api, domains: [a.example], routes: [{{cluster: a}}]}}\n  - {{name: api, domains: [b.example], routes: [{{cluster: a}}]}}\n"),
        &["virtual_hosts[1].name", "virtual host name 'api' is already used", "(line 5)"],
    );
    assert_check_fails(
        &format!("{vhosts}  - {{name: api, domains: [a.example], routes: [{{name: r, cluster: a}}]}}\n  - {{name: web, domains: [b.example], routes: [{{name: r, cluster: a}}]}}\n"),
        &["virtual_hosts[1].routes[0].name", "route name (the `route` metric label) 'r'", "(line 5)"],
    );
}

#[test]
fn check_messages_speak_yaml_not_rust() {
    assert_check_fails(
        "proxy:\n\tbacklog: 10\n",
        &["YAML forbids tabs", "(line 2)"],
    );
    assert_check_fails(
        "proxy:\n  backlog: lots\n",
        &["proxy.backlog", "expected a whole number", "(line 2)"],
    );
    let out = strait(&["check", "/nonexistent/strait.yaml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(
        stderr.trim(),
        "cannot read config file /nonexistent/strait.yaml: No such file or directory (os error 2)"
    );
}

#[test]
fn check_accepts_a_good_file_and_prints_the_plan() {
    let out = check(
        "clusters:\n  - name: web\n    protocol: http2\n    endpoints:\n      - address: 127.0.0.1:8080\n        weight: 2\nroutes:\n  - authority: web.default.svc\n    cluster: web\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("outbound  127.0.0.1:4140"), "{stdout}");
    assert!(stdout.contains("cluster   web [Http2"), "{stdout}");
    assert!(
        stdout.contains("route     authority web.default.svc -> web"),
        "{stdout}"
    );
}

#[test]
fn run_refuses_bad_config_and_bad_env_before_binding() {
    let dir = TempDir::new("cli-run");
    let path = dir.0.join("bad.yaml");
    std::fs::write(&path, "proxy:\n  backlog: 0\n").expect("write");
    let out = strait(&["run", "--config", path.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("proxy.backlog"));

    let out = Command::new(env!("CARGO_BIN_EXE_strait"))
        .arg("run")
        .env("STRAIT_OUTBOUND_ADDR", "not-an-address")
        .output()
        .expect("run strait");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("STRAIT_OUTBOUND_ADDR"));
}

#[test]
fn env_overrides_listener_addresses() {
    let proxy = support::Proxy::start_with(
        support::EPHEMERAL_LISTENERS,
        &[
            ("STRAIT_ADMIN_ADDR", "127.0.0.1:0"),
            ("STRAIT_OUTBOUND_ADDR", "127.0.0.2:0"),
        ],
    );
    assert_eq!(proxy.outbound.ip().to_string(), "127.0.0.2");
    assert_eq!(support::http_get(proxy.admin, "/ready").0, 200);
}

/// The `listening` line is the harness's (and scripts') signal to start:
/// by the time it is printed, `/ready` must already answer 200. Repeated
/// because the race it guards against lost one start in forty.
#[test]
fn ready_as_soon_as_the_listening_line_is_printed() {
    for _ in 0..10 {
        let proxy = support::Proxy::start(support::EPHEMERAL_LISTENERS);
        assert_eq!(support::http_get(proxy.admin, "/ready").0, 200);
    }
}

/// SIGHUP means "reload", and its default action kills a process: the
/// handler must be in place before the proxy says it is up, or a reload
/// right after start (a config management run, a test) kills the proxy.
#[test]
fn sighup_right_after_the_listening_line_does_not_kill_the_proxy() {
    for _ in 0..10 {
        let mut proxy = support::Proxy::start(support::EPHEMERAL_LISTENERS);
        proxy.signal("HUP");
        assert_eq!(support::http_get(proxy.admin, "/ready").0, 200);
        assert!(
            proxy.child.try_wait().expect("wait").is_none(),
            "SIGHUP killed the proxy:\n{}",
            proxy.log()
        );
    }
}

#[test]
fn iptables_prints_redirect_rules() {
    let out = strait(&[
        "iptables",
        "--proxy-uid",
        "1337",
        "--skip-outbound-ports",
        "25,443",
    ]);
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        script.contains(
            "iptables -t nat -A STRAIT_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 4143"
        ),
        "{script}"
    );
    assert!(
        script.contains("iptables -t nat -A STRAIT_OUTBOUND -m owner --uid-owner 1337 -j RETURN"),
        "{script}"
    );
    assert!(script.contains("--dport 443 -j RETURN"), "{script}");
    assert!(
        script.contains("-t nat -A OUTPUT -p tcp -j STRAIT_OUTBOUND"),
        "{script}"
    );
    let help = strait(&["iptables", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("inbound listener port"), "{help}");
    assert!(help.contains("outbound listener port"), "{help}");
    let v6 = strait(&["iptables", "--ipv6"]);
    assert!(String::from_utf8_lossy(&v6.stdout).contains("ip6tables -t nat"));
}

#[test]
fn version_answers() {
    let out = strait(&["version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("strait "));
}

#[test]
fn readme_config_examples_are_valid() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md next to the workspace");
    let blocks: Vec<&str> = readme
        .split("```yaml\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .collect();
    assert!(blocks.len() >= 3, "README lost its config examples");
    // The identity example names files a pod would mount; check loads
    // them, so stand real ones in for them.
    let identity = TempDir::new("cli-identity");
    let cert = rcgen::generate_simple_self_signed(vec!["web.default.svc".to_string()])
        .expect("self-signed certificate");
    std::fs::write(identity.0.join("tls.crt"), cert.cert.pem()).expect("write cert");
    std::fs::write(identity.0.join("ca.crt"), cert.cert.pem()).expect("write bundle");
    std::fs::write(identity.0.join("tls.key"), cert.signing_key.serialize_pem())
        .expect("write key");
    let mounted = format!("{}/", identity.0.display());
    for block in blocks {
        let block = &block.replace("/var/run/strait/identity/", &mounted);
        let out = check(block);
        assert!(
            out.status.success(),
            "README example does not validate: {}\n{block}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
