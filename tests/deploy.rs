//! The Kubernetes example is a contract with the operator who copies it:
//! its ConfigMap passes `strait check`, the proxy is a native sidecar that
//! gates the app on `/ready`, the pod's grace period outlasts the proxy's
//! drain, and the init step installs the rules with an image that carries
//! iptables. (The schema itself is checked by kubernetes-validate in
//! `.ci/run`; the init image is proven in a namespace by
//! `deploy/build-image.sh`.)

mod support;

use serde_yaml::Value;
use std::process::Command;
use support::TempDir;

fn documents() -> Vec<Value> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/kubernetes.yaml"
    ))
    .expect("deploy/kubernetes.yaml");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_yaml::with::singleton_map_recursive::deserialize(doc).expect("YAML"))
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} in the manifest"))
}

fn seconds(duration: &str) -> u64 {
    duration
        .strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("'{duration}' is not whole seconds"))
}

#[test]
fn the_manifest_is_a_native_sidecar_that_outlives_its_drain() {
    let docs = documents();
    let config = kind(&docs, "ConfigMap")["data"]["strait.yaml"]
        .as_str()
        .expect("ConfigMap data strait.yaml");
    let dir = TempDir::new("deploy");
    let path = dir.0.join("strait.yaml");
    std::fs::write(&path, config).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_strait"))
        .arg("check")
        .arg(&path)
        .output()
        .expect("run strait check");
    assert!(
        out.status.success(),
        "the ConfigMap's config does not pass check: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let spec = &kind(&docs, "Pod")["spec"];
    let init = spec["initContainers"]
        .as_sequence()
        .expect("initContainers");
    let names: Vec<&str> = init.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(
        names,
        ["strait-init", "strait"],
        "init first, then the sidecar"
    );
    let (iptables, sidecar) = (&init[0], &init[1]);
    assert_eq!(iptables["image"].as_str(), Some("strait-init:dev"));
    let args: Vec<&str> = iptables["args"]
        .as_sequence()
        .expect("init args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(args.starts_with(&["iptables", "--apply"]), "{args:?}");
    assert_eq!(sidecar["restartPolicy"].as_str(), Some("Always"));
    assert_eq!(
        sidecar["startupProbe"]["httpGet"]["path"].as_str(),
        Some("/ready")
    );
    assert_eq!(sidecar["securityContext"]["runAsUser"].as_u64(), Some(2102));

    let grace = spec["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    let drain = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("shutdown_grace:"))
        .map(|v| seconds(v.split('#').next().unwrap_or("").trim()))
        .unwrap_or(30);
    assert!(
        grace > drain,
        "terminationGracePeriodSeconds {grace} must exceed shutdown_grace {drain}s"
    );
}
