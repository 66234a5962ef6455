//! The live admin page in a real browser: headless Chromium, driven over
//! chromedriver's W3C WebDriver HTTP API by the small client below, loads
//! `/` from the real binary's admin port while real traffic flows to two
//! real upstreams, and the test reads what the page shows: a row per
//! endpoint and a non-zero request rate. It saves a screenshot
//! (`target/tmp/admin-page.png`; also `docs/admin-page.png`, the README's,
//! with `STRAIT_UPDATE_SCREENSHOT=1`).
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs
//! them); without them the test fails and says so.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::upstream::Upstream;
use support::{admin_request, free_addr, http_get, non_loopback_ip, Proxy, EPHEMERAL_LISTENERS};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// One blocking request to chromedriver: the response's `value`.
fn webdriver(driver: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> Value {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut stream = TcpStream::connect(driver).expect("connect chromedriver");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {driver}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write to chromedriver");
    // chromedriver keeps the connection open whatever we ask, so the
    // body is read by its Content-Length.
    let mut response = Vec::new();
    let mut buf = [0u8; 16384];
    let (head, body) = loop {
        let n = stream.read(&mut buf).expect("read from chromedriver");
        assert!(
            n > 0,
            "chromedriver closed before answering {method} {path}"
        );
        response.extend_from_slice(&buf[..n]);
        let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&response[..end]).to_string();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or_else(|| panic!("chromedriver's answer has no Content-Length: {head}"));
        if response.len() >= end + 4 + length {
            let body = String::from_utf8_lossy(&response[end + 4..end + 4 + length]).to_string();
            break (head, body);
        }
    };
    let value: Value = serde_json::from_str(&body).unwrap_or_else(|e| {
        panic!("chromedriver's answer to {method} {path}: {e}: {head}\n{body}")
    });
    if value["value"]["error"].is_string() {
        panic!("chromedriver {method} {path}: {}", value["value"]);
    }
    value["value"].clone()
}

/// chromedriver and a headless Chromium session, ended on drop.
struct Browser {
    driver: SocketAddr,
    session: String,
    process: Child,
}

impl Browser {
    fn start() -> Browser {
        for tool in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                std::path::Path::new(tool).exists(),
                "{tool} is missing: this test needs Debian's chromium and chromium-driver \
                 (apt-get install chromium chromium-driver; .ci/run installs them)"
            );
        }
        let driver = free_addr();
        let process = Command::new(CHROMEDRIVER)
            .arg(format!("--port={}", driver.port()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let mut browser = Browser {
            driver,
            session: String::new(),
            process,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(driver).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {driver}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let session = webdriver(
            driver,
            "POST",
            "/session",
            Some(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1280,1000"],
                },
            }}})),
        );
        browser.session = session["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        browser
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        webdriver(self.driver, method, &path, body)
    }

    fn script(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(&json!({"script": script, "args": []})),
        )
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ = std::panic::catch_unwind(|| webdriver(self.driver, "DELETE", &path, None));
        }
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Standard base64 (as WebDriver sends screenshots) to bytes.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let clean: Vec<u8> = text
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, c)| n | value(*c) << (18 - 6 * i));
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

/// The endpoint table as the page shows it: one row of cell texts each.
const ENDPOINT_ROWS: &str = "return [...document.querySelectorAll('#endpoints tbody tr')]\
    .map(tr => [...tr.cells].map(td => td.textContent));";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_page_shows_endpoints_and_live_rates_in_a_browser() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let yaml = format!(
        "{EPHEMERAL_LISTENERS}clusters:\n  - name: web\n    load_balancer: {{policy: round_robin}}\n    endpoints: [{{address: '{}'}}, {{address: '{}'}}]\nroutes:\n  - authority: web.test\n    cluster: web\n",
        a.addr, b.addr
    );
    let proxy = Proxy::start(&yaml);

    // Real traffic through the proxy while the page watches, bounded in
    // count and time.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let traffic = tokio::spawn({
        let (stop, sent, outbound) = (stop.clone(), sent.clone(), proxy.outbound);
        async move {
            let stream = tokio::net::TcpStream::connect(outbound)
                .await
                .expect("connect");
            let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
                .await
                .expect("handshake");
            tokio::spawn(conn);
            let deadline = Instant::now() + Duration::from_secs(90);
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                let req = Request::get("/")
                    .header("host", "web.test")
                    .body(Full::<Bytes>::default())
                    .expect("request");
                sender.ready().await.expect("ready");
                let response = sender.send_request(req).await.expect("response");
                assert_eq!(response.status(), 200);
                let _ = response.into_body().collect().await;
                sent.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await; // a steady rate, not a flood
            }
        }
    });

    let admin = proxy.admin;
    let (rows, title, screenshot) = tokio::task::spawn_blocking(move || {
        let browser = Browser::start();
        browser.call(
            "POST",
            "/url",
            Some(&json!({"url": format!("http://{admin}/")})),
        );
        let title = browser.call("GET", "/title", None);
        // Wait until the page shows both endpoints with a non-zero rate
        // (the rate needs two polls of /stats.json with traffic between).
        let deadline = Instant::now() + Duration::from_secs(45);
        let rows = loop {
            let rows = browser.script(ENDPOINT_ROWS);
            let rows: Vec<Vec<String>> = serde_json::from_value(rows).expect("rows of cells");
            let live = rows.len() == 2
                && rows.iter().all(|r| {
                    r.get(6)
                        .and_then(|rate| rate.parse::<f64>().ok())
                        .is_some_and(|rate| rate > 0.0)
                });
            if live {
                break rows;
            }
            assert!(
                Instant::now() < deadline,
                "the page never showed both endpoints with a rate: {rows:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        let listeners = browser.script(
            "return [...document.querySelectorAll('#listeners tbody tr')].map(tr => tr.cells[2].textContent);",
        );
        assert!(
            listeners.as_array().is_some_and(|l| l.iter().any(|a| a == &admin.to_string())),
            "the listeners table shows the admin address {admin}: {listeners}"
        );
        let png = base64_decode(
            browser
                .call("GET", "/screenshot", None)
                .as_str()
                .expect("a screenshot"),
        );
        (rows, title, png)
    })
    .await
    .expect("browser task");
    stop.store(true, Ordering::Relaxed);
    traffic.await.expect("traffic task");

    assert_eq!(title, "strait admin");
    let shown: Vec<&str> = rows.iter().map(|r| r[1].as_str()).collect();
    for upstream in [&a, &b] {
        assert!(
            shown.contains(&upstream.addr.to_string().as_str()),
            "endpoint {} not shown: {rows:?}",
            upstream.addr
        );
    }
    for row in &rows {
        assert_eq!(row[0], "web", "{row:?}");
        assert_eq!(row[3], "active", "{row:?}");
    }
    assert!(sent.load(Ordering::Relaxed) > 0);
    assert!(
        screenshot.starts_with(b"\x89PNG"),
        "the screenshot is a PNG"
    );
    let target = concat!(env!("CARGO_TARGET_TMPDIR"), "/admin-page.png");
    std::fs::write(target, &screenshot).expect("save the screenshot");
    if std::env::var("STRAIT_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") {
        let docs = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/admin-page.png");
        std::fs::write(docs, &screenshot).expect("save docs/admin-page.png");
    }
}

#[test]
fn admin_page_is_loopback_only_and_serves_its_stats() {
    let proxy = Proxy::start(EPHEMERAL_LISTENERS);
    let (status, body) = http_get(proxy.admin, "/");
    assert_eq!(status, 200);
    assert!(body.contains("<title>strait admin</title>"), "{body}");
    assert!(
        !body.contains("http://") && !body.contains("https://"),
        "the page loads no external assets"
    );
    let (status, body) = http_get(proxy.admin, "/stats.json");
    assert_eq!(status, 200);
    let stats: Value = serde_json::from_str(&body).expect("stats JSON");
    assert_eq!(stats["ready"], true);
    let listeners = stats["listeners"].as_array().expect("listeners");
    let address = |name: &str| {
        listeners
            .iter()
            .find(|l| l["name"] == name)
            .and_then(|l| l["address"].as_str())
            .map(str::to_string)
    };
    assert_eq!(
        address("admin"),
        Some(proxy.admin.to_string()),
        "the bound port, not 0"
    );
    assert_eq!(address("outbound"), Some(proxy.outbound.to_string()));

    // The config version changes when a reload changes the config.
    let version = stats["config"]["version"]
        .as_str()
        .expect("a config version")
        .to_string();
    proxy.rewrite_config(&format!(
        "{EPHEMERAL_LISTENERS}clusters:\n  - {{name: added, endpoints: [{{address: '127.0.0.1:1'}}]}}\n"
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats: Value =
            serde_json::from_str(&http_get(proxy.admin, "/stats.json").1).expect("stats JSON");
        if stats["config"]["version"].as_str() != Some(version.as_str()) {
            assert_eq!(stats["config"]["reloads"]["ok"], 1.0, "{stats:#}");
            assert!(stats["clusters"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["name"] == "added")));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the config version never changed after a reload"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // From a non-loopback address: 403, for the page and its data.
    let open = Proxy::start(&EPHEMERAL_LISTENERS.replace(
        "admin: {address: 127.0.0.1, port: 0}",
        "admin: {address: 0.0.0.0, port: 0}",
    ));
    let ip = non_loopback_ip();
    for path in ["/", "/stats.json"] {
        let (status, body) = admin_request(
            SocketAddr::new(ip, open.admin.port()),
            Some(ip),
            "GET",
            path,
            "",
        );
        assert_eq!(status, 403, "{path}: {body}");
        assert!(body.contains("loopback only"), "{body}");
    }
    let (status, _) = http_get(
        SocketAddr::new([127, 0, 0, 1].into(), open.admin.port()),
        "/",
    );
    assert_eq!(status, 200);

    // Unless the operator opens it up.
    let opened = Proxy::start_with(
        &EPHEMERAL_LISTENERS.replace(
            "admin: {address: 127.0.0.1, port: 0}",
            "admin: {address: 0.0.0.0, port: 0}",
        ),
        &[("STRAIT_ADMIN_PAGE_REMOTE", "true")],
    );
    for path in ["/", "/stats.json"] {
        let (status, body) = admin_request(
            SocketAddr::new(ip, opened.admin.port()),
            Some(ip),
            "GET",
            path,
            "",
        );
        assert_eq!(status, 200, "{path}: {body}");
    }
}
