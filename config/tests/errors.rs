//! Every configuration rule, broken on purpose: the error must name the
//! field and the line an operator has to fix.

use strait_config::{Config, ConfigError, Protocol, RouteMatch};

fn refuse(yaml: &str) -> ConfigError {
    match Config::from_yaml(yaml) {
        Ok(config) => panic!("accepted a broken config: {config:?}"),
        Err(err) => err,
    }
}

#[track_caller]
fn assert_refused(yaml: &str, field: &str, line: usize, words: &str) {
    let err = refuse(yaml);
    let text = err.to_string();
    let at = err.at().expect("error names a field");
    assert_eq!(at.field, field, "{text}");
    assert_eq!(at.line, Some(line), "{text}");
    assert!(text.contains(words), "'{text}' does not say '{words}'");
    assert!(text.contains(&format!("(line {line})")), "{text}");
}

#[test]
fn port_out_of_range() {
    let yaml = "listeners:\n  outbound:\n    port: 4140\n  inbound:\n    port: 70000\n";
    assert_refused(yaml, "listeners.inbound.port", 5, "70000 is not a port");
}

#[test]
fn unknown_field_is_refused() {
    let yaml = "proxy:\n  max_conections: 10\n";
    assert_refused(
        yaml,
        "proxy.max_conections",
        2,
        "unknown field `max_conections`",
    );
}

#[test]
fn wrong_type() {
    let yaml = "proxy:\n  backlog: lots\n";
    assert_refused(yaml, "proxy.backlog", 2, "invalid type");
}

#[test]
fn bad_duration() {
    let yaml = "proxy:\n  detect_timeout: soon\n";
    assert_refused(yaml, "proxy.detect_timeout", 2, "'soon' is not a duration");
    let zero = "proxy:\n  connect_timeout: 0s\n";
    assert_refused(zero, "proxy.connect_timeout", 2, "greater than zero");
}

#[test]
fn http2_flood_limits_and_keep_alive_are_checked() {
    let yaml = "proxy:\n  http:\n    max_pending_accept_reset_streams: 0\n";
    assert_refused(
        yaml,
        "proxy.http.max_pending_accept_reset_streams",
        3,
        "1 to 100000",
    );
    let yaml = "proxy:\n  http:\n    http2_keep_alive_interval: 0s\n";
    assert_refused(
        yaml,
        "proxy.http.http2_keep_alive_interval",
        3,
        "greater than zero",
    );
    let http = Config::from_yaml("").expect("default").proxy.http;
    assert_eq!(http.max_pending_accept_reset_streams, 50);
    assert_eq!(http.max_local_error_reset_streams, 256);
    assert_eq!(http.http2_keep_alive_interval, None);
    assert_eq!(
        http.http2_keep_alive_timeout,
        std::time::Duration::from_secs(20)
    );
}

#[test]
fn http2_control_frame_flood_limits_are_checked() {
    let yaml = "proxy:\n  http:\n    http2_max_ping_frames: -1\n";
    assert_refused(
        yaml,
        "proxy.http.http2_max_ping_frames",
        3,
        "0 (no limit) to 10000000",
    );
    let yaml = "proxy:\n  http:\n    http2_max_settings_frames: 10000001\n";
    assert_refused(
        yaml,
        "proxy.http.http2_max_settings_frames",
        3,
        "0 (no limit) to 10000000",
    );
    let yaml = "proxy:\n  http:\n    http2_flood_window: 0s\n";
    assert_refused(
        yaml,
        "proxy.http.http2_flood_window",
        3,
        "greater than zero",
    );
    let http = Config::from_yaml("").expect("default").proxy.http;
    assert_eq!(http.http2_flood_window, std::time::Duration::from_secs(10));
    assert_eq!(http.http2_max_ping_frames, 1000);
    assert_eq!(http.http2_max_settings_frames, 100);
    assert_eq!(http.http2_max_empty_data_frames, 100);
    assert_eq!(http.http2_max_window_updates_per_data_frame, 10);
    let yaml = "proxy:\n  http:\n    http2_max_window_updates_per_data_frame: 10001\n";
    assert_refused(
        yaml,
        "proxy.http.http2_max_window_updates_per_data_frame",
        3,
        "0 (no limit) to 10000",
    );
    let off = "proxy:\n  http:\n    http2_max_empty_data_frames: 0\n";
    let http = Config::from_yaml(off).expect("0 is allowed").proxy.http;
    assert_eq!(http.http2_max_empty_data_frames, 0);
}

#[test]
fn route_to_unknown_cluster() {
    let yaml = "clusters:\n  - name: web\n    endpoints:\n      - address: 127.0.0.1:8080\nroutes:\n  - authority: web\n    cluster: web\n  - authority: api\n    cluster: apii\n";
    assert_refused(
        yaml,
        "routes[1].cluster",
        9,
        "cluster 'apii' is not defined",
    );
}

#[test]
fn bad_endpoint_address() {
    let yaml = "clusters:\n  - name: web\n    endpoints:\n      - address: 127.0.0.1:8080\n      - address: web-1\n";
    assert_refused(
        yaml,
        "clusters[0].endpoints[1].address",
        5,
        "'web-1' is not an IP:port",
    );
}

#[test]
fn duplicate_cluster_and_no_endpoints() {
    let yaml = "clusters:\n  - name: a\n    endpoints: [{address: '127.0.0.1:1'}]\n  - name: a\n    endpoints: [{address: '127.0.0.1:2'}]\n";
    assert_refused(yaml, "clusters[1].name", 4, "already used");
    let empty = "clusters:\n  - name: a\n    endpoints: []\n";
    assert_refused(empty, "clusters[0]", 2, "has no endpoints");
}

#[test]
fn route_needs_exactly_one_match() {
    let yaml = "clusters:\n  - name: a\n    endpoints: [{address: '127.0.0.1:1'}]\nroutes:\n  - authority: x\n    port: 80\n    cluster: a\n";
    assert_refused(yaml, "routes[0]", 5, "exactly one of");
}

#[test]
fn bad_weight_and_ip() {
    let yaml =
        "clusters:\n  - name: a\n    endpoints:\n      - address: 127.0.0.1:1\n        weight: 0\n";
    assert_refused(yaml, "clusters[0].endpoints[0].weight", 5, "out of range");
    let ip = "listeners:\n  admin:\n    address: localhost\n";
    assert_refused(
        ip,
        "listeners.admin.address",
        3,
        "'localhost' is not an IP address",
    );
}

#[test]
fn bad_yaml_syntax_has_a_line() {
    let err = refuse("listeners:\n  outbound:\n    port: [4140\n");
    assert!(err.at().and_then(|a| a.line).is_some(), "{err}");
}

#[test]
fn embedded_default_is_linkerd_ports() {
    let config = Config::embedded_default().expect("embedded default validates");
    assert_eq!(config.outbound.addr.to_string(), "127.0.0.1:4140");
    assert_eq!(config.inbound.addr.to_string(), "0.0.0.0:4143");
    assert_eq!(config.admin.to_string(), "127.0.0.1:4191");
    assert_eq!(config.inbound.forward_ip.to_string(), "127.0.0.1");
    assert!(config.routes.is_empty());
    // An empty file means the same defaults.
    assert_eq!(Config::from_yaml("").expect("empty is valid"), config);
}

#[test]
fn full_example_parses() {
    let yaml = "clusters:\n  - name: web\n    protocol: http2\n    connect_timeout: 250ms\n    endpoints:\n      - address: '[::1]:8080'\n        weight: 3\nroutes:\n  - authority: Web.NS.svc:80\n    cluster: web\n  - port: 5432\n    cluster: web\n";
    let config = Config::from_yaml(yaml).expect("valid");
    let web = config.cluster("web").expect("cluster");
    assert_eq!(web.protocol, Protocol::Http2);
    assert_eq!(web.connect_timeout.as_millis(), 250);
    assert_eq!(web.endpoints[0].weight, 3);
    assert_eq!(
        config.routes[0].matches,
        RouteMatch::Authority("web.ns.svc".into())
    );
    assert_eq!(config.routes[1].matches, RouteMatch::Port(5432));
}

#[test]
fn env_overrides_listeners() {
    let mut config = Config::embedded_default().expect("default");
    config
        .apply_env(|var| match var {
            "STRAIT_OUTBOUND_ADDR" => Some("127.0.0.1:0".into()),
            "STRAIT_LOG" => Some("debug".into()),
            _ => None,
        })
        .expect("valid overrides");
    assert_eq!(config.outbound.addr.port(), 0);
    assert_eq!(config.log.level, "debug");
    let err = config
        .apply_env(|var| (var == "STRAIT_ADMIN_ADDR").then(|| "nope".to_string()))
        .expect_err("bad address refused");
    assert!(err.to_string().contains("STRAIT_ADMIN_ADDR"), "{err}");
}

#[test]
fn virtual_host_rules() {
    let base = "clusters:\n  - name: a\n    endpoints: [{address: '127.0.0.1:1'}]\nvirtual_hosts:\n  - name: web\n    domains: [web]\n    routes:\n";
    assert_refused(
        &format!("{base}      - match: {{path: {{regex: '/users/(['}}}}\n        cluster: a\n"),
        "virtual_hosts[0].routes[0].match.path.regex",
        8,
        "is not a regular expression",
    );
    assert_refused(
        &format!("{base}      - cluster: a\n        direct_response: {{status: 200}}\n"),
        "virtual_hosts[0].routes[0]",
        8,
        "exactly one of cluster, split, direct_response, redirect or original_destination: true",
    );
    assert_refused(
        &format!("{base}      - split: [{{cluster: a, weight: 1}}, {{cluster: b, weight: 1}}]\n"),
        "virtual_hosts[0].routes[0].split[1].cluster",
        8,
        "cluster 'b' is not defined",
    );
    assert_refused(
        &format!("{base}      - redirect: {{status: 200}}\n"),
        "virtual_hosts[0].routes[0].redirect.status",
        8,
        "301, 302, 303, 307 or 308",
    );
    let bad_domain = "clusters:\n  - name: a\n    endpoints: [{address: '127.0.0.1:1'}]\nvirtual_hosts:\n  - name: web\n    domains: [\"we*b\"]\n";
    assert_refused(
        bad_domain,
        "virtual_hosts[0].domains[0]",
        6,
        "not a domain pattern",
    );
}

#[test]
fn wrong_type_says_whole_number() {
    let yaml = "proxy:\n  backlog: lots\n";
    let text = refuse(yaml).to_string();
    assert!(text.contains("expected a whole number"), "{text}");
    assert!(!text.contains("i64"), "{text}");
    let yaml = "listeners:\n  admin: 4191\n";
    let text = refuse(yaml).to_string();
    assert!(text.contains("expected a mapping"), "{text}");
    assert!(!text.contains("struct"), "{text}");
}

#[test]
fn tab_in_indentation_says_yaml_forbids_tabs() {
    let yaml = "proxy:\n\tbacklog: 10\n";
    let err = refuse(yaml);
    let text = err.to_string();
    assert!(text.contains("YAML forbids tabs"), "{text}");
    assert!(text.contains("(line 2)"), "{text}");
}

#[test]
fn listeners_on_one_address_are_refused() {
    let yaml = "listeners:\n  outbound: {address: 127.0.0.1, port: 4000}\n  inbound:\n    address: 127.0.0.1\n    port: 4000\n";
    assert_refused(
        yaml,
        "listeners.inbound.port",
        5,
        "127.0.0.1:4000 is also the listeners.outbound listener's address",
    );
    // The default inbound address is 0.0.0.0: every IPv4 address on its port.
    let yaml = "listeners:\n  admin:\n    port: 4143\n";
    assert_refused(
        yaml,
        "listeners.admin.port",
        3,
        "also the listeners.inbound listener's address",
    );
    // Port 0 (any free port) never clashes; other families never clash.
    let fine = "listeners:\n  outbound: {address: 127.0.0.1, port: 0}\n  inbound: {address: 127.0.0.1, port: 0}\n  admin: {address: '::1', port: 4140}\n";
    assert!(Config::from_yaml(fine).is_ok());
}

#[test]
fn extra_listeners_follow_the_listener_rules() {
    let base = "clusters:\n  - {name: web, endpoints: [{address: 127.0.0.1:80}]}\nlisteners:\n  outbound: {address: 127.0.0.1, port: 4000}\n  extra:\n";
    let one = |entry: &str| format!("{base}    - {entry}\n");
    let two = |a: &str, b: &str| format!("{base}    - {a}\n    - {b}\n");
    assert_refused(
        &two(
            "{name: side, direction: outbound, port: 5000}",
            "{name: side, direction: inbound, port: 5001}",
        ),
        "listeners.extra[1].name",
        7,
        "listener name 'side' is already used by listeners.extra[0].name",
    );
    assert_refused(
        &one("{name: admin, direction: outbound, port: 5000}"),
        "listeners.extra[0].name",
        6,
        "already used by the built-in admin listener",
    );
    assert_refused(
        &one("{name: ' ', direction: outbound, port: 5000}"),
        "listeners.extra[0].name",
        6,
        "must not be empty",
    );
    assert_refused(
        &one("{name: side, direction: outbound, port: 4000}"),
        "listeners.extra[0].port",
        6,
        "127.0.0.1:4000 is also the listeners.outbound listener's address",
    );
    assert_refused(
        &two(
            "{name: a, direction: outbound, port: 5000}",
            "{name: b, direction: inbound, address: 0.0.0.0, port: 5000}",
        ),
        "listeners.extra[1].port",
        7,
        "is also the listeners.extra[0] listener's address",
    );
    assert_refused(
        &one("{name: side, direction: outbound, port: 5000, default_cluster: nope}"),
        "listeners.extra[0].default_cluster",
        6,
        "cluster 'nope' is not defined",
    );
    assert_refused(
        &one("{name: side, direction: outbound, port: 5000, forward_address: 127.0.0.1}"),
        "listeners.extra[0].forward_address",
        6,
        "only an inbound listener",
    );
    assert_refused(
        &one("{name: side, direction: sideways, port: 5000}"),
        "listeners.extra[0].direction",
        6,
        "unknown variant `sideways`",
    );
    assert_refused(
        &one("{name: side, direction: outbound, port: 70000}"),
        "listeners.extra[0].port",
        6,
        "70000 is not a port",
    );
    assert_refused(
        &one("{name: side, direction: outbound, address: nowhere, port: 5000}"),
        "listeners.extra[0].address",
        6,
        "'nowhere' is not an IP address",
    );
    // Port 0 (any free port) never clashes.
    assert!(Config::from_yaml(&two(
        "{name: a, direction: outbound, port: 0}",
        "{name: b, direction: outbound, port: 0}"
    ))
    .is_ok());
}

#[test]
fn environment_cannot_put_two_listeners_on_one_address() {
    let mut config = Config::from_yaml("").expect("default");
    let err = config
        .apply_env(|k| (k == "STRAIT_ADMIN_ADDR").then(|| "127.0.0.1:4140".to_string()))
        .expect_err("admin on the outbound address");
    assert!(
        err.to_string()
            .contains("listeners.admin.port: 127.0.0.1:4140 is also the listeners.outbound"),
        "{err}"
    );
}

#[test]
fn duplicate_virtual_host_and_route_names_are_refused() {
    let base = "clusters:\n  - {name: a, endpoints: [{address: 127.0.0.1:80}]}\nvirtual_hosts:\n";
    let hosts = format!(
        "{base}  - name: api\n    domains: [a.example]\n    routes: [{{cluster: a}}]\n  - name: api\n    domains: [b.example]\n    routes: [{{cluster: a}}]\n"
    );
    assert_refused(
        &hosts,
        "virtual_hosts[1].name",
        7,
        "virtual host name 'api' is already used by virtual_hosts[0].name",
    );
    let routes = format!(
        "{base}  - name: api\n    domains: [a.example]\n    routes:\n      - name: r\n        cluster: a\n  - name: web\n    domains: [b.example]\n    routes:\n      - name: r\n        cluster: a\n"
    );
    assert_refused(
        &routes,
        "virtual_hosts[1].routes[0].name",
        12,
        "route name (the `route` metric label) 'r' is already used by virtual_hosts[0].routes[0].name",
    );
}

#[test]
fn unreadable_file_names_the_os_error_once() {
    let err = Config::from_path("/nonexistent/strait.yaml").expect_err("no such file");
    let text = anyhow_like(&err);
    assert_eq!(
        text.matches("No such file or directory").count(),
        1,
        "{text}"
    );
}

/// The message and every source below it, joined the way anyhow's `{:#}`
/// prints a chain.
fn anyhow_like(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

#[test]
fn a_route_to_the_original_destination_reads_and_survives_a_dump() {
    let yaml = "virtual_hosts:\n  - name: any\n    domains: ['*']\n    routes:\n      - original_destination: true\n";
    let config = strait_config::Config::from_yaml(yaml).expect("valid");
    assert_eq!(
        config.virtual_hosts[0].routes[0].action,
        strait_config::RouteAction::OriginalDestination
    );
    let dump = String::from_utf8(config.dump_json().expect("dump")).expect("utf-8");
    let again = strait_config::Config::from_yaml(&dump).unwrap_or_else(|e| panic!("{e}\n{dump}"));
    assert_eq!(again, config, "{dump}");
}
