//! The admin port as an operator uses it: `/config_dump` is a config file
//! (saved, it passes `strait check` and runs the same proxy), and metrics
//! that only mean something with an identity are absent without one.

mod support;

use std::process::Command;
use support::{http_get, Proxy, TempDir, EPHEMERAL_LISTENERS};

#[test]
fn config_dump_is_a_config_file_check_and_run_accept() {
    let yaml = format!(
        "{EPHEMERAL_LISTENERS}clusters:\n  - name: web\n    endpoints: [{{address: '127.0.0.1:8080'}}, {{address: 'web.example.com:80'}}]\nroutes:\n  - {{authority: web, cluster: web}}\nvirtual_hosts:\n  - name: api\n    domains: [api.example]\n    routes:\n      - {{name: health, match: {{path: {{exact: /health}}}}, direct_response: {{status: 200, body: ok}}}}\n"
    );
    let proxy = Proxy::start(&yaml);
    let (status, dump) = http_get(proxy.admin, "/config_dump");
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&dump).expect("config_dump is JSON");
    // The file's shape, not the model's.
    assert_eq!(json["listeners"]["outbound"]["address"], "127.0.0.1");
    assert_eq!(json["listeners"]["outbound"]["port"], 0);
    assert_eq!(json["listeners"]["inbound"]["forward_address"], "127.0.0.1");
    assert_eq!(json["proxy"]["shutdown_grace"], "30s");
    assert_eq!(
        json["clusters"][0]["endpoints"][1]["address"],
        "web.example.com:80"
    );
    assert_eq!(json["routes"][0]["authority"], "web");
    assert!(json.get("outbound").is_none(), "{dump}");

    let dir = TempDir::new("dump");
    let saved = dir.0.join("dump.yaml");
    std::fs::write(&saved, &dump).expect("save dump");
    let out = Command::new(env!("CARGO_BIN_EXE_strait"))
        .arg("check")
        .arg(&saved)
        .output()
        .expect("run strait check");
    assert!(
        out.status.success(),
        "check refuses the dump: {}\n{dump}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("vhost     api [api.example]"));

    // And it runs a proxy that dumps the same config.
    let again = Proxy::start(&dump);
    assert_eq!(http_get(again.admin, "/config_dump").1, dump);
}

#[test]
fn no_identity_no_identity_metrics() {
    let proxy = Proxy::start(EPHEMERAL_LISTENERS);
    let metrics = proxy.metrics();
    assert!(metrics.contains("process_cpu_seconds_total"), "{metrics}");
    assert!(
        !metrics.contains("identity_cert_expiration_timestamp_seconds"),
        "an expiry of 0 would fire every expiry alert:\n{metrics}"
    );
    assert!(
        !metrics.contains("identity_cert_refresh_total"),
        "{metrics}"
    );
}
