//! The `xds:` bootstrap: what an operator writes, what is refused (with
//! field and line), the environment overrides, and the dump round trip.

use std::time::Duration;
use strait_config::{Config, XdsMode};

const BOOTSTRAP: &str = r#"
xds:
  address: istiod.istio-system.svc:15010
  node:
    id: sidecar~10.1.2.3~web-0.prod~prod.svc.cluster.local
    cluster: web
    metadata: {NAMESPACE: prod, ISTIO_VERSION: "1.22"}
  mode: delta
  initial_fetch_timeout: 5s
"#;

#[test]
fn bootstrap_reads_and_survives_a_dump() {
    let config = Config::from_yaml(BOOTSTRAP).expect("valid bootstrap");
    let xds = config.xds.as_ref().expect("xds section");
    assert_eq!(xds.address, "istiod.istio-system.svc:15010");
    assert_eq!(xds.node.cluster, "web");
    assert_eq!(
        xds.node.metadata.get("NAMESPACE").map(String::as_str),
        Some("prod")
    );
    assert_eq!(xds.mode, XdsMode::Delta);
    assert_eq!(xds.initial_fetch_timeout, Duration::from_secs(5));

    let dump = String::from_utf8(config.dump_json().expect("dump")).expect("utf-8");
    let again = Config::from_yaml(&dump).unwrap_or_else(|e| panic!("{e}\n{dump}"));
    assert_eq!(again, config, "{dump}");
}

#[test]
fn defaults_are_sotw_and_fifteen_seconds() {
    let config =
        Config::from_yaml("xds: {address: 127.0.0.1:18000, node: {id: n}}\n").expect("valid");
    let xds = config.xds.expect("xds");
    assert_eq!(xds.mode, XdsMode::Sotw);
    assert_eq!(xds.initial_fetch_timeout, Duration::from_secs(15));
    assert!(Config::from_yaml("").expect("empty").xds.is_none());
}

#[test]
fn a_dump_with_resource_status_is_still_a_config() {
    let yaml = "xds: {address: 127.0.0.1:18000, node: {id: n}}\nxds_resources: [{type: Cluster, name: web, state: acked}]\n";
    let config = Config::from_yaml(yaml).expect("status is ignored when read");
    assert!(config.xds.is_some());
}

#[track_caller]
fn refused(yaml: &str, field: &str, line: usize, words: &str) {
    let err = Config::from_yaml(yaml).expect_err("refused");
    let text = err.to_string();
    let at = err.at().expect("names a field");
    assert_eq!(at.field, field, "{text}");
    assert_eq!(at.line, Some(line), "{text}");
    assert!(text.contains(words), "'{text}' does not say '{words}'");
}

#[test]
fn broken_bootstraps_name_field_and_line() {
    refused(
        "xds:\n  address: nope\n  node: {id: n}\n",
        "xds.address",
        2,
        "nope",
    );
    refused(
        "xds:\n  address: 127.0.0.1:0\n  node: {id: n}\n",
        "xds.address",
        2,
        "127.0.0.1:0",
    );
    refused(
        "xds:\n  address: cp:18000\n  node:\n    id: \"\"\n",
        "xds.node.id",
        4,
        "",
    );
    refused(
        "xds:\n  address: cp:18000\n  node: {id: n}\n  mode: rest\n",
        "xds.mode",
        4,
        "sotw or delta",
    );
    refused(
        "xds:\n  address: cp:18000\n  node: {id: n}\n  initial_fetch_timeout: soon\n",
        "xds.initial_fetch_timeout",
        4,
        "soon",
    );
    refused(
        "xds:\n  address: cp:18000\n  node: {id: n, zone: a}\n",
        "xds.node.zone",
        3,
        "zone",
    );
}

#[test]
fn environment_sets_address_and_node() {
    let mut config = Config::from_yaml("").expect("empty");
    config
        .apply_env(|var| match var {
            "STRAIT_XDS_ADDRESS" => Some("cp.mesh:18000".into()),
            "STRAIT_XDS_NODE_ID" => Some("web-0".into()),
            _ => None,
        })
        .expect("valid overrides");
    let xds = config.xds.as_ref().expect("xds from the environment");
    assert_eq!(
        (xds.address.as_str(), xds.node.id.as_str()),
        ("cp.mesh:18000", "web-0")
    );

    let mut config = Config::from_yaml(BOOTSTRAP).expect("valid");
    config
        .apply_env(|var| (var == "STRAIT_XDS_NODE_ID").then(|| "other".to_string()))
        .expect("valid override");
    let xds = config.xds.as_ref().expect("xds");
    assert_eq!(xds.node.id, "other");
    assert_eq!(
        xds.address, "istiod.istio-system.svc:15010",
        "the file's address stays"
    );

    let mut empty = Config::from_yaml("").expect("empty");
    let err = empty
        .apply_env(|var| (var == "STRAIT_XDS_ADDRESS").then(|| "cp:18000".to_string()))
        .expect_err("no node id");
    assert!(err.to_string().contains("STRAIT_XDS_NODE_ID"), "{err}");
    let err = empty
        .apply_env(|var| (var == "STRAIT_XDS_ADDRESS").then(|| "cp".to_string()))
        .expect_err("no port");
    assert!(err.to_string().contains("host:port"), "{err}");
}

#[test]
fn the_identity_can_come_from_sds_secrets_and_survives_a_dump() {
    let yaml =
        format!("{BOOTSTRAP}identity:\n  sds: {{certificate: default, trust_bundle: ROOTCA}}\n");
    let config = Config::from_yaml(&yaml).expect("valid");
    let identity = config.identity.as_ref().expect("identity");
    assert_eq!(
        identity.source,
        strait_config::IdentitySource::Sds(strait_config::SdsIdentity {
            certificate: "default".into(),
            trust_bundle: "ROOTCA".into(),
        })
    );
    let dump = String::from_utf8(config.dump_json().expect("dump")).expect("utf-8");
    let again = Config::from_yaml(&dump).unwrap_or_else(|e| panic!("{e}\n{dump}"));
    assert_eq!(again, config, "{dump}");
}

#[test]
fn an_sds_identity_needs_xds_and_is_never_mixed_with_files() {
    let refused = |yaml: &str, expected: &str| {
        let e = Config::from_yaml(yaml).expect_err("refused").to_string();
        assert!(e.contains(expected), "{e}");
    };
    refused(
        "identity:\n  sds: {certificate: default, trust_bundle: ROOTCA}\n",
        "identity.sds: secrets come from the control plane: needs the xds: section (line 2)",
    );
    refused(
        &format!("{BOOTSTRAP}identity:\n  certificate: /etc/tls.crt\n  sds: {{certificate: default, trust_bundle: ROOTCA}}\n"),
        "identity.certificate: give the identity as files or as identity.sds secrets, not both",
    );
    refused(
        &format!("{BOOTSTRAP}identity:\n  sds: {{certificate: default, trust_bundle: ' '}}\n"),
        "identity.sds.trust_bundle",
    );
}

#[test]
fn tls_to_the_control_plane_reads_and_half_a_client_certificate_is_refused() {
    let yaml = format!(
        "{BOOTSTRAP}  tls: {{trust_bundle: /etc/istio/root-cert.pem, certificate: /etc/certs/tls.crt, private_key: /etc/certs/tls.key, server_name: istiod.istio-system.svc}}\n"
    );
    let config = Config::from_yaml(&yaml).expect("valid");
    let tls = config
        .xds
        .as_ref()
        .and_then(|x| x.tls.clone())
        .expect("tls");
    assert_eq!(tls.server_name.as_deref(), Some("istiod.istio-system.svc"));
    assert_eq!(
        tls.client,
        Some(("/etc/certs/tls.crt".into(), "/etc/certs/tls.key".into()))
    );
    let dump = String::from_utf8(config.dump_json().expect("dump")).expect("utf-8");
    let again = Config::from_yaml(&dump).unwrap_or_else(|e| panic!("{e}\n{dump}"));
    assert_eq!(again, config, "{dump}");

    for (tls, expected) in [
        (
            "{trust_bundle: /ca.pem, certificate: /tls.crt}",
            "xds.tls.private_key",
        ),
        ("{trust_bundle: ' '}", "xds.tls.trust_bundle"),
        (
            "{trust_bundle: /ca.pem, server_name: 'a b'}",
            "xds.tls.server_name: 'a b' is not a DNS name or IP address",
        ),
    ] {
        let e = Config::from_yaml(&format!("{BOOTSTRAP}  tls: {tls}\n"))
            .expect_err("refused")
            .to_string();
        assert!(e.contains(expected), "{tls}: {e}");
    }
}
