//! The config dump is a config file: every config, written back with
//! `dump_json`, reads as the same `Config`; and reading a dump again and
//! dumping it gives the same bytes.

use strait_config::Config;

#[track_caller]
fn round_trip(yaml: &str) {
    let config = Config::from_yaml(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let dump = config.dump_json().expect("dump");
    let text = String::from_utf8(dump.clone()).expect("UTF-8");
    let again = Config::from_yaml(&text).unwrap_or_else(|e| panic!("dump refused: {e}\n{text}"));
    assert_eq!(again, config, "the dump reads differently:\n{text}");
    assert_eq!(again.dump_json().expect("dump"), dump, "dump is not stable");
}

#[test]
fn the_default_and_the_readme_examples_survive_a_dump() {
    round_trip("");
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let blocks: Vec<&str> = readme
        .split("```yaml\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .collect();
    assert!(blocks.len() >= 3, "README lost its config examples");
    for block in blocks {
        round_trip(block);
    }
}

#[test]
fn every_kind_of_setting_survives_a_dump() {
    round_trip(
        r#"
log: {level: "strait_proxy=debug,info", format: json}
runtime: {worker_threads: 3}
listeners:
  outbound: {address: 127.0.0.1, port: 0, default_cluster: ring}
  inbound: {address: "::1", port: 0, forward_address: "::1", default_cluster: db}
  admin: {address: 127.0.0.1, port: 0}
  extra:
    - {name: side, direction: outbound, port: 5000, default_cluster: ring, protocol: http2}
    - {name: app2, direction: inbound, address: "::", port: 5001, forward_address: "::1"}
proxy:
  max_connections: 10
  opaque_ports: [5432]
  shutdown_grace: 1m 30s
  response_timeout: 1500ms
  pool: {idle_timeout: 10s, max_idle_per_endpoint: 0}
  http:
    max_request_body_bytes: 1048576
    max_pending_accept_reset_streams: 10
    max_local_error_reset_streams: 20
    http2_keep_alive_interval: 15s
    http2_keep_alive_timeout: 5s
    http2_flood_window: 2s
    http2_max_ping_frames: 7
    http2_max_settings_frames: 0
    http2_max_window_updates_per_data_frame: 3
identity:
  certificate: /id/tls.crt
  private_key: /id/tls.key
  trust_bundle: /id/ca.crt
  min_tls_version: "1.2"
policy:
  default: deny
  ports:
    - {port: 8080, allow: [spiffe://td/ns/a/sa/b, spiffe://td/ns/ops/*, "*.prod.svc", "spiffe://td/*/sa/batch"]}
    - {port: 9090, allow: authenticated}
  unauthenticated_paths: [/healthz]
dns: {servers: ["127.0.0.1:53"], min_refresh: 2s, max_refresh: 1m}
clusters:
  - name: ring
    protocol: http2
    tls: {identity: spiffe://td/ns/a/sa/ring}
    load_balancer: {policy: ring_hash, hash_header: X-User}
    outlier_detection: {consecutive_failures: 3}
    endpoints: [{address: "[::1]:8080", weight: 2}, {address: web.example.com:80}]
  - name: src
    load_balancer: {policy: ring_hash, hash_source_ip: true}
    endpoints: [{address: 10.0.0.1:80}]
  - name: db
    protocol: opaque
    load_balancer: {policy: least_request}
    endpoints: [{address: 10.0.0.9:5432}]
routes:
  - {authority: Web.Example:80, cluster: ring}
  - {port: 5432, cluster: db}
virtual_hosts:
  - name: api
    domains: [API.example.com, "*.api.example.com"]
    routes:
      - match: {path: {regex: "/v[0-9]+/.*"}, headers: [{name: X-A, present: true, invert: true}], query: [{name: q, prefix: x}]}
        split: [{cluster: ring, weight: 9}, {cluster: src, weight: 1}]
        fault: {delay: {fixed: 10ms, percent: 5.5}, abort: {status: 503, percent: 1}}
        rate_limit: {requests_per_second: 2.5}
        retry: {attempts: 3, on: [connect-failure, reset, 5xx, gateway-error, "503", grpc-unavailable, grpc-cancelled], per_try_timeout: 100ms}
        timeout: 2s
      - name: moved
        match: {path: {exact: /old}, method: post}
        redirect: {host: api.example.com, status: 308}
      - name: ok
        direct_response: {status: 200, body: ok}
        request_headers: {add: {x-b: "2", x-a: "1"}, remove: [X-Internal]}
      - name: rewrite
        match: {path: {prefix: /v1}}
        cluster: src
        rewrite: {prefix: /v2, host: other}
"#,
    );
}
