//! A cluster's HTTP protocol options from the control plane decide the
//! version strait speaks upstream: an h2c client's requests reach an
//! explicit-HTTP/1.1 cluster as HTTP/1.1 and an explicit-HTTP/2 one as
//! HTTP/2, the real proxy between a real control plane and a real
//! upstream (which echoes the version it was asked in).

#[path = "support/control_plane.rs"]
mod control_plane;
mod support;
#[path = "support/xds_resources.rs"]
mod xds_resources;

use bytes::Bytes;
use control_plane::{ControlPlane, CLUSTER};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{Http1ProtocolOptions, Http2ProtocolOptions};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    explicit_http_config::ProtocolConfig, ExplicitHttpConfig, UpstreamProtocolOptions,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use http::Request;
use http_body_util::{BodyExt, Empty};
use prost::Message;
use std::time::{Duration, Instant};
use support::upstream::Upstream;
use support::{Proxy, EPHEMERAL_LISTENERS};
use xds_resources::*;

const OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// The `web` EDS cluster, pinned to `config`.
fn web_cluster(config: ProtocolConfig) -> envoy_types::pb::google::protobuf::Any {
    let mut cluster =
        Cluster::decode(eds_cluster("web").value.as_slice()).expect("the helper's cluster");
    let options = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(config),
            },
        )),
        ..Default::default()
    };
    cluster.typed_extension_protocol_options.insert(
        OPTIONS.into(),
        any(&format!("type.googleapis.com/{OPTIONS}"), &options),
    );
    any(CLUSTER, &cluster)
}

/// The version line the upstream saw for one h2c request through the proxy.
async fn upstream_version(proxy: &Proxy) -> String {
    let mut h2 = support::edge::h2_client::<Empty<Bytes>>(proxy.outbound).await;
    let request = Request::get("http://web/headers")
        .body(Empty::new())
        .expect("request");
    let response = h2.send_request(request).await.expect("response");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    String::from_utf8_lossy(&body)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Ask until the upstream sees `want`, for at most 10 s.
async fn until_version(proxy: &Proxy, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = upstream_version(proxy).await;
        if seen == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "upstream saw '{seen}', want '{want}'"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_options_pin_the_upstream_http_version() {
    let upstream = Upstream::start().await;
    let cp = ControlPlane::start().await;
    cp.update(|s| {
        web(s, &[upstream.addr]);
        let h1 = ProtocolConfig::HttpProtocolOptions(Http1ProtocolOptions::default());
        put(s, CLUSTER, "web", web_cluster(h1));
    });
    let bootstrap = format!(
        "{EPHEMERAL_LISTENERS}xds:\n  address: {}\n  node: {{id: test-node, cluster: test}}\n  initial_fetch_timeout: 5s\n",
        cp.addr
    );
    let proxy = Proxy::start(&bootstrap);
    until_version(&proxy, "version: HTTP/1.1").await;

    let version = cp.update(|s| {
        let h2 = ProtocolConfig::Http2ProtocolOptions(Http2ProtocolOptions::default());
        put(s, CLUSTER, "web", web_cluster(h2));
    });
    cp.acked(CLUSTER, version).await;
    until_version(&proxy, "version: HTTP/2.0").await;
}
