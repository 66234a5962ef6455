//! Route explain, the runtime log level and `strait await`, against the
//! real binary.
//!
//! Explain is table-driven over the README's L7 routing example (its
//! block, read from README.md, with its endpoints pointed at three real
//! upstreams, plus the README's simple authority route): for each request,
//! `/debug/route` on the admin port and `strait explain CONFIG` give the
//! same answer, and it names the upstream that served the real request.

mod support;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::upstream::Upstream;
use support::{admin_request, http_get, non_loopback_ip, Proxy, EPHEMERAL_LISTENERS};
use tokio::net::TcpStream;

/// The fenced block after `<!-- marker -->` in the README.
fn readme_block(marker: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("read README.md");
    let after = readme
        .split_once(&format!("<!-- {marker} -->\n"))
        .unwrap_or_else(|| panic!("README lost its '{marker}' block"))
        .1;
    let body = after.split_once('\n').expect("a fence").1;
    body.split_once("```")
        .expect("a closing fence")
        .0
        .to_string()
}

/// The README's L7 example on real upstreams: `api` on `a`, `api-v2` on
/// `b`, and the README's `web.default.svc.cluster.local` route to `web`
/// on `c`.
fn config(a: &Upstream, b: &Upstream, c: &Upstream) -> String {
    let example = readme_block("l7-routing")
        .replace("10.0.1.1:8080", &a.addr.to_string())
        .replace("10.0.1.2:8080", &b.addr.to_string());
    assert!(
        example.contains(&a.addr.to_string()) && example.contains(&b.addr.to_string()),
        "the README's L7 example no longer names 10.0.1.1:8080 and 10.0.1.2:8080:\n{example}"
    );
    let example = example.replacen(
        "clusters:\n",
        &format!(
            "clusters:\n  - {{name: web, endpoints: [{{address: '{}'}}]}}\n",
            c.addr
        ),
        1,
    );
    format!(
        "{EPHEMERAL_LISTENERS}{example}routes:\n  - authority: web.default.svc.cluster.local\n    cluster: web\n"
    )
}

/// One case: the request, and what must serve it: `Ok(clusters)` for a
/// cluster among these (a split), `Err(status)` for the proxy's own answer.
struct Case {
    method: Method,
    authority: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    rule: &'static str,
    route: Option<&'static str>,
    served: Result<&'static [&'static str], u16>,
}

const CASES: &[Case] = &[
    Case {
        method: Method::GET,
        authority: "api.example.com",
        path: "/health",
        headers: &[],
        rule: "virtual_host",
        route: Some("health"),
        served: Err(200),
    },
    Case {
        method: Method::GET,
        authority: "api.example.com",
        path: "/v1/items?debug",
        headers: &[("x-version", "2")],
        rule: "virtual_host",
        route: Some("v2"),
        served: Ok(&["api-v2"]),
    },
    Case {
        method: Method::GET,
        authority: "eu.api.example.com:8080",
        path: "/v1/a/../items?debug=1",
        headers: &[("x-version", "2")],
        rule: "virtual_host",
        route: Some("v2"),
        served: Ok(&["api-v2"]),
    },
    // v2 needs GET, the header and the query parameter: each missing one
    // falls through to the canary split.
    Case {
        method: Method::POST,
        authority: "api.example.com",
        path: "/v1/items?debug",
        headers: &[("x-version", "2")],
        rule: "virtual_host",
        route: Some("canary"),
        served: Ok(&["api", "api-v2"]),
    },
    Case {
        method: Method::GET,
        authority: "api.example.com",
        path: "/v1/items?debug",
        headers: &[("x-version", "3")],
        rule: "virtual_host",
        route: Some("canary"),
        served: Ok(&["api", "api-v2"]),
    },
    Case {
        method: Method::GET,
        authority: "api.example.com",
        path: "/v1/items",
        headers: &[("x-version", "2")],
        rule: "virtual_host",
        route: Some("canary"),
        served: Ok(&["api", "api-v2"]),
    },
    Case {
        method: Method::GET,
        authority: "old.example.com",
        path: "/anything",
        headers: &[],
        rule: "virtual_host",
        route: None,
        served: Err(301),
    },
    Case {
        method: Method::GET,
        authority: "Web.Default.svc.cluster.local:80",
        path: "/",
        headers: &[],
        rule: "authority",
        route: None,
        served: Ok(&["web"]),
    },
    Case {
        method: Method::GET,
        authority: "unknown.example.org",
        path: "/",
        headers: &[],
        rule: "none",
        route: None,
        served: Err(404),
    },
];

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn admin_explain(proxy: &Proxy, case: &Case) -> Value {
    let mut query = format!(
        "direction=outbound&authority={}&path={}&method={}",
        encode(case.authority),
        encode(case.path),
        case.method
    );
    for (name, value) in case.headers {
        query.push_str(&format!("&header={}", encode(&format!("{name}:{value}"))));
    }
    let (status, body) = http_get(proxy.admin, &format!("/debug/route?{query}"));
    assert_eq!(status, 200, "/debug/route?{query}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/debug/route JSON: {e}: {body}"))
}

fn cli_explain(proxy: &Proxy, case: &Case) -> Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strait"));
    cmd.arg("explain")
        .arg(proxy.config_path())
        .args(["--direction", "outbound", "--authority", case.authority])
        .args(["--path", case.path, "--method", case.method.as_str()]);
    for (name, value) in case.headers {
        cmd.arg("--header").arg(format!("{name}:{value}"));
    }
    let out = cmd.output().expect("run strait explain");
    assert!(
        out.status.success(),
        "strait explain failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("strait explain prints JSON")
}

/// The clusters explain says the request may go to.
fn explained_clusters(answer: &Value) -> Vec<String> {
    let upstream = &answer["upstream"];
    match (&upstream["cluster"], &upstream["split"]) {
        (Value::String(c), _) => vec![c.clone()],
        (_, Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p["cluster"].as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

async fn send(proxy: &Proxy, case: &Case) -> (StatusCode, http::HeaderMap) {
    let stream = TcpStream::connect(proxy.outbound).await.expect("connect");
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(case.method.clone())
        .uri(case.path)
        .header("host", case.authority);
    for (k, v) in case.headers {
        req = req.header(*k, *v);
    }
    let response = sender
        .send_request(req.body(Full::<Bytes>::default()).expect("request"))
        .await
        .expect("response");
    let (parts, body) = response.into_parts();
    let _ = body.collect().await;
    (parts.status, parts.headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_agrees_with_where_traffic_goes() {
    let (a, b, c) = (
        Upstream::start().await,
        Upstream::start().await,
        Upstream::start().await,
    );
    let proxy = Proxy::start(&config(&a, &b, &c));
    let upstreams = [("api", &a), ("api-v2", &b), ("web", &c)];
    for case in CASES {
        let what = format!(
            "{} {}{} {:?}",
            case.method, case.authority, case.path, case.headers
        );
        let live = admin_explain(&proxy, case);
        let offline = cli_explain(&proxy, case);
        for field in [
            "rule",
            "reason",
            "route",
            "upstream",
            "virtual_host",
            "routed_path",
        ] {
            assert_eq!(
                live[field], offline[field],
                "{what}: /debug/route and strait explain differ on {field}"
            );
        }
        assert_eq!(live["rule"], case.rule, "{what}: {live:#}");
        if let Some(route) = case.route {
            assert_eq!(live["route"]["name"], route, "{what}: {live:#}");
        }
        let clusters = explained_clusters(&live);

        // The real request: a fault-injected abort (the README's canary
        // aborts 1%) is the proxy's, not a routing answer; send again.
        let before = upstreams.map(|(_, u)| u.requests.load(Ordering::SeqCst));
        let mut answer = send(&proxy, case).await;
        for _ in 0..5 {
            if answer
                .1
                .get("strait-proxy-error")
                .is_none_or(|v| v != "fault-injected")
            {
                break;
            }
            answer = send(&proxy, case).await;
        }
        let after = upstreams.map(|(_, u)| u.requests.load(Ordering::SeqCst));
        let served: Vec<&str> = upstreams
            .iter()
            .zip(before.iter().zip(after))
            .filter(|(_, (b, a))| a > *b)
            .map(|((name, _), _)| *name)
            .collect();
        match case.served {
            Ok(allowed) => {
                assert_eq!(
                    served.len(),
                    1,
                    "{what}: served by {served:?}, status {}",
                    answer.0
                );
                assert!(allowed.contains(&served[0]), "{what}: served by {served:?}");
                assert!(
                    clusters.iter().any(|c| c == served[0]),
                    "{what}: explain said {clusters:?} but {} served it:\n{live:#}",
                    served[0]
                );
                let names: Vec<&str> = allowed.to_vec();
                let mut explained: Vec<&str> = clusters.iter().map(String::as_str).collect();
                explained.sort_unstable();
                let mut expected = names.clone();
                expected.sort_unstable();
                assert_eq!(explained, expected, "{what}: explained clusters");
                // The endpoints explain lists are the cluster's real ones.
                let endpoints: Vec<&str> = live["clusters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|c| c["endpoints"].as_array().into_iter().flatten())
                    .filter_map(|e| e["address"].as_str())
                    .collect();
                let served_addr = upstreams
                    .iter()
                    .find(|(n, _)| *n == served[0])
                    .map(|(_, u)| u.addr.to_string());
                assert!(
                    endpoints.iter().any(|e| Some(e.to_string()) == served_addr),
                    "{what}: endpoints {endpoints:?}"
                );
            }
            Err(status) => {
                assert!(
                    served.is_empty(),
                    "{what}: expected the proxy's own {status}, served by {served:?}"
                );
                assert_eq!(answer.0.as_u16(), status, "{what}");
                assert!(
                    clusters.is_empty(),
                    "{what}: explain named clusters {clusters:?}"
                );
            }
        }
    }
}

#[test]
fn explain_shows_why_earlier_routes_did_not_match_and_the_policy() {
    let yaml = format!("{EPHEMERAL_LISTENERS}{}", readme_block("l7-routing"));
    let proxy = Proxy::start(&yaml);
    let (status, body) = http_get(
        proxy.admin,
        "/debug/route?authority=api.example.com&path=/v1/x&method=GET&header=x-version:3",
    );
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).expect("JSON");
    let trail = answer["virtual_host"]["routes"]
        .as_array()
        .expect("routes tried");
    assert_eq!(trail.len(), 3, "{answer:#}");
    assert_eq!(trail[0]["route"], "health");
    assert_eq!(trail[0]["reason"], "path is not exactly \"/health\"");
    assert_eq!(trail[1]["route"], "v2");
    assert_eq!(trail[1]["reason"], "header x-version is not exactly \"2\"");
    assert_eq!(trail[2]["matched"], true);
    assert_eq!(
        answer["virtual_host"]["matched_by"],
        "exact domain api.example.com"
    );
    assert_eq!(answer["route"]["timeout"], "2s");
    assert_eq!(answer["route"]["retry"]["attempts"], 2);
    assert_eq!(answer["route"]["fault"]["abort"]["status"], 503);
    assert_eq!(answer["timeouts"][0]["response"], "2s");
    let endpoint = &answer["clusters"][0]["endpoints"][0];
    assert_eq!(endpoint["ejected"], false);
    assert_eq!(endpoint["in_flight"], 0);

    let (status, body) = http_get(proxy.admin, "/debug/route?direction=sideways");
    assert_eq!(status, 400);
    assert!(body.contains("direction 'sideways'"), "{body}");
}

#[test]
fn log_level_get_put_invalid_and_loopback_only() {
    let yaml = EPHEMERAL_LISTENERS.replace(
        "admin: {address: 127.0.0.1, port: 0}",
        "admin: {address: 0.0.0.0, port: 0}",
    );
    let proxy = Proxy::start(&yaml);
    let admin = SocketAddr::new([127, 0, 0, 1].into(), proxy.admin.port());

    let (status, body) = admin_request(admin, None, "GET", "/log-level", "");
    assert_eq!(
        (status, body.trim()),
        (200, "debug"),
        "the harness starts strait with STRAIT_LOG=debug"
    );

    let (status, body) = admin_request(
        admin,
        None,
        "PUT",
        "/log-level",
        "info,strait_proxy::admin=trace",
    );
    assert_eq!(status, 200, "{body}");
    let (_, body) = admin_request(admin, None, "GET", "/log-level", "");
    assert_eq!(body.trim(), "info,strait_proxy::admin=trace");
    // The new filter is in force: debug lines stop, the change is logged.
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.log_lines(&["log level changed"]) == 0 {
        assert!(
            Instant::now() < deadline,
            "no 'log level changed' line:\n{}",
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // In force both ways: under `warn` a reload's info line is not
    // written; back under `info`, the next reload's is. The log is
    // written in order, so once the second line is there the first
    // would be too.
    let reloads = |proxy: &Proxy| {
        support::metric_sum(&proxy.metrics(), "config_reload_total", &["result=\"ok\""])
    };
    let reloaded = |proxy: &Proxy, count: f64| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while reloads(proxy) < count {
            assert!(Instant::now() < deadline, "reload {count} did not happen");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let (status, _) = admin_request(admin, None, "PUT", "/log-level", "warn");
    assert_eq!(status, 200);
    proxy.rewrite_config(&format!(
        "{yaml}clusters: [{{name: one, endpoints: [{{address: '127.0.0.1:1'}}]}}]\n"
    ));
    reloaded(&proxy, 1.0);
    let (status, _) = admin_request(
        admin,
        None,
        "PUT",
        "/log-level",
        "info,strait_proxy::admin=trace",
    );
    assert_eq!(status, 200);
    proxy.rewrite_config(&format!(
        "{yaml}clusters: [{{name: two, endpoints: [{{address: '127.0.0.1:1'}}]}}]\n"
    ));
    reloaded(&proxy, 2.0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.log_lines(&["config reloaded"]) == 0 {
        assert!(
            Instant::now() < deadline,
            "no 'config reloaded' line under info:\n{}",
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        proxy.log_lines(&["config reloaded"]),
        1,
        "the reload under warn logged at info:\n{}",
        proxy.log()
    );

    let (status, body) = admin_request(admin, None, "PUT", "/log-level", "strait_proxy=loudest");
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("strait_proxy=loudest"),
        "the error names the filter: {body}"
    );
    let (status, body) = admin_request(admin, None, "PUT", "/log-level", "  ");
    assert_eq!(status, 400, "{body}");
    let (_, body) = admin_request(admin, None, "GET", "/log-level", "");
    assert_eq!(
        body.trim(),
        "info,strait_proxy::admin=trace",
        "an invalid filter keeps the old one"
    );

    let (status, _) = admin_request(admin, None, "DELETE", "/log-level", "");
    assert_eq!(status, 405);

    let ip = non_loopback_ip();
    let remote = SocketAddr::new(ip, proxy.admin.port());
    let (status, body) = admin_request(remote, Some(ip), "GET", "/log-level", "");
    assert_eq!(status, 403, "{body}");
    let (status, body) = admin_request(remote, Some(ip), "PUT", "/log-level", "trace");
    assert_eq!(status, 403, "{body}");
    let (_, body) = admin_request(admin, None, "GET", "/log-level", "");
    assert_eq!(body.trim(), "info,strait_proxy::admin=trace");
}

fn strait_await(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strait"));
    cmd.arg("await")
        .args(args)
        .env_remove("STRAIT_ADMIN_ADDR")
        .env_remove("STRAIT_CONFIG");
    cmd
}

/// Wait for `child` to exit, at most `limit`.
fn wait_exit(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "process still running after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn await_runs_the_command_after_readiness_and_propagates_its_status() {
    let dir = support::TempDir::new("await");
    let marker = dir.0.join("ran");
    let admin = support::free_addr();
    // Started before the proxy exists, so it has to wait; the command
    // checks /ready itself, so running early would exit 99, not 7.
    let script = format!(
        "curl -sf http://{admin}/ready >/dev/null || exit 99; echo ran > {}; exit 7",
        marker.display()
    );
    let mut waiting = strait_await(&["--admin", &admin.to_string(), "--timeout", "30s", "--"])
        .args(["sh", "-c", &script])
        .spawn()
        .expect("spawn strait await");
    let yaml = EPHEMERAL_LISTENERS.replace(
        "admin: {address: 127.0.0.1, port: 0}",
        &format!("admin: {{address: 127.0.0.1, port: {}}}", admin.port()),
    );
    let mut proxy = Proxy::start(&yaml);
    let status = wait_exit(&mut waiting, Duration::from_secs(30));
    assert_eq!(status.code(), Some(7), "the command's exit status");
    assert!(marker.exists(), "the command ran");
    assert!(
        proxy.child.try_wait().expect("try_wait").is_none(),
        "without --shutdown the proxy keeps running"
    );

    // The admin address from STRAIT_ADMIN_ADDR, as the proxy reads it.
    let status = strait_await(&["--timeout", "10s", "--", "true"])
        .env("STRAIT_ADMIN_ADDR", admin.to_string())
        .status()
        .expect("run strait await");
    assert_eq!(status.code(), Some(0));

    // --shutdown: the proxy exits once the command has.
    let status = strait_await(&[
        "--admin",
        &admin.to_string(),
        "--shutdown",
        "--",
        "sh",
        "-c",
        "exit 3",
    ])
    .status()
    .expect("run strait await");
    assert_eq!(status.code(), Some(3));
    let exit = wait_exit(&mut proxy.child, Duration::from_secs(30));
    assert!(
        exit.success(),
        "the proxy shut down cleanly: {exit:?}\n{}",
        proxy.log()
    );
}

#[test]
fn await_gives_up_clearly_when_the_proxy_never_gets_ready() {
    let nobody = support::free_addr();
    let started = Instant::now();
    let out = strait_await(&[
        "--admin",
        &nobody.to_string(),
        "--timeout",
        "500ms",
        "--",
        "true",
    ])
    .output()
    .expect("run strait await");
    assert_eq!(out.status.code(), Some(69));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("was not ready within 500ms"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10));

    let out = strait_await(&["--admin", &nobody.to_string(), "--timeout", "1s"])
        .output()
        .expect("run strait await");
    assert!(!out.status.success(), "a command is required");
}

#[test]
fn await_passes_a_stop_signal_to_the_command_then_shuts_the_proxy_down() {
    let dir = support::TempDir::new("await-signal");
    let started = dir.0.join("started");
    let mut proxy = Proxy::start(EPHEMERAL_LISTENERS);
    let script = format!(
        "sleep 30 & pid=$!; trap 'kill $pid; exit 42' TERM; touch {}; wait",
        started.display()
    );
    let mut waiting = strait_await(&["--admin", &proxy.admin.to_string(), "--shutdown", "--"])
        .args(["sh", "-c", &script])
        .spawn()
        .expect("spawn strait await");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !started.exists() {
        assert!(Instant::now() < deadline, "the command never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill")
        .args(["-TERM", &waiting.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let status = wait_exit(&mut waiting, Duration::from_secs(20));
    assert_eq!(
        status.code(),
        Some(42),
        "the command got SIGTERM and its status came back"
    );
    let exit = wait_exit(&mut proxy.child, Duration::from_secs(30));
    assert!(
        exit.success(),
        "the proxy shut down after the command: {exit:?}"
    );
}
