//! A cluster's upstream HTTP protocol, from its
//! `envoy.extensions.upstreams.http.v3.HttpProtocolOptions` (or the
//! deprecated `http2_protocol_options` and `protocol_selection` fields
//! older control planes still send). Istio gives gRPC and HTTP/2 ports an
//! explicit HTTP/2 config, `useClientProtocol` destinations the
//! downstream's protocol.
//!
//! With no options strait keeps `auto` where Envoy would speak HTTP/1.1:
//! in strait a cluster's protocol also declares what the connections of
//! a port routed to it carry (`http1`/`http2` skip detection), and a
//! `TcpProxy` cluster without options must stay opaque to detection. So
//! an option-less cluster follows the client's HTTP version (as the
//! README says). A meshed endpoint (mTLS with a workload identity) is
//! spoken to over HTTP/2 whatever this says, as every mesh hop is.

use envoy_types::pb::envoy::config::cluster::v3::cluster::ClusterProtocolSelection;
use envoy_types::pb::envoy::config::cluster::v3::Cluster as XdsCluster;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    explicit_http_config::ProtocolConfig, UpstreamProtocolOptions,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use prost::Message;
use strait_config::Protocol;

/// The key and type of the protocol options in
/// `typed_extension_protocol_options`.
const HTTP_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
const HTTP_OPTIONS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// `c`'s upstream protocol, or the field that cannot be honoured.
pub fn protocol(c: &XdsCluster) -> Result<Protocol, (String, String)> {
    let field = format!("typed_extension_protocol_options['{HTTP_OPTIONS}']");
    if let Some(any) = c.typed_extension_protocol_options.get(HTTP_OPTIONS) {
        if any.type_url != HTTP_OPTIONS_TYPE {
            return Err((
                format!("{field}.type_url"),
                format!("expected {HTTP_OPTIONS_TYPE}, got {}", any.type_url),
            ));
        }
        let options = HttpProtocolOptions::decode(any.value.as_slice())
            .map_err(|e| (field.clone(), format!("does not decode: {e}")))?;
        return match options.upstream_protocol_options {
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(explicit)) => {
                match explicit.protocol_config {
                    Some(ProtocolConfig::HttpProtocolOptions(_)) | None => Ok(Protocol::Http1),
                    Some(ProtocolConfig::Http2ProtocolOptions(_)) => Ok(Protocol::Http2),
                    Some(ProtocolConfig::Http3ProtocolOptions(_)) => Err((
                        format!("{field}.explicit_http_config.http3_protocol_options"),
                        "HTTP/3 upstreams are not supported".into(),
                    )),
                }
            }
            Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(_)) => Ok(Protocol::Auto),
            // ALPN picks h2 where the upstream offers it; strait does not
            // negotiate it for plaintext or non-mesh TLS, and HTTP/1.1 is
            // what Envoy falls back to without ALPN.
            Some(UpstreamProtocolOptions::AutoConfig(_)) => Ok(Protocol::Http1),
            None => Ok(Protocol::Auto),
        };
    }
    #[allow(deprecated)]
    let (http2, selection) = (c.http2_protocol_options.is_some(), c.protocol_selection);
    if selection == ClusterProtocolSelection::UseDownstreamProtocol as i32 {
        return Ok(Protocol::Auto);
    }
    Ok(if http2 {
        Protocol::Http2
    } else {
        Protocol::Auto
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{Http1ProtocolOptions, Http2ProtocolOptions};
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
        AutoHttpConfig, ExplicitHttpConfig, UseDownstreamHttpConfig,
    };
    use envoy_types::pb::google::protobuf::Any;

    fn with_options(options: UpstreamProtocolOptions) -> XdsCluster {
        let value = HttpProtocolOptions {
            upstream_protocol_options: Some(options),
            ..Default::default()
        }
        .encode_to_vec();
        let mut c = XdsCluster::default();
        c.typed_extension_protocol_options.insert(
            HTTP_OPTIONS.into(),
            Any {
                type_url: HTTP_OPTIONS_TYPE.into(),
                value,
            },
        );
        c
    }

    fn explicit(config: ProtocolConfig) -> UpstreamProtocolOptions {
        UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(config),
        })
    }

    #[test]
    fn explicit_options_pin_the_protocol() {
        assert_eq!(protocol(&XdsCluster::default()), Ok(Protocol::Auto));
        let h2 = explicit(ProtocolConfig::Http2ProtocolOptions(
            Http2ProtocolOptions::default(),
        ));
        assert_eq!(protocol(&with_options(h2)), Ok(Protocol::Http2));
        let h1 = explicit(ProtocolConfig::HttpProtocolOptions(
            Http1ProtocolOptions::default(),
        ));
        assert_eq!(protocol(&with_options(h1)), Ok(Protocol::Http1));
        let downstream = UpstreamProtocolOptions::UseDownstreamProtocolConfig(
            UseDownstreamHttpConfig::default(),
        );
        assert_eq!(protocol(&with_options(downstream)), Ok(Protocol::Auto));
        let auto = UpstreamProtocolOptions::AutoConfig(AutoHttpConfig::default());
        assert_eq!(protocol(&with_options(auto)), Ok(Protocol::Http1));
    }

    #[test]
    #[allow(deprecated)]
    fn the_deprecated_fields_still_count() {
        let c = XdsCluster {
            http2_protocol_options: Some(Http2ProtocolOptions::default()),
            ..Default::default()
        };
        assert_eq!(protocol(&c), Ok(Protocol::Http2));
        let c = XdsCluster {
            protocol_selection: ClusterProtocolSelection::UseDownstreamProtocol as i32,
            ..Default::default()
        };
        assert_eq!(protocol(&c), Ok(Protocol::Auto));
    }

    #[test]
    fn http3_and_garbage_are_refused_by_field() {
        let h3 = explicit(ProtocolConfig::Http3ProtocolOptions(Default::default()));
        let (field, _) = protocol(&with_options(h3)).expect_err("h3");
        assert!(
            field.ends_with(".explicit_http_config.http3_protocol_options"),
            "{field}"
        );
        let mut c = XdsCluster::default();
        c.typed_extension_protocol_options.insert(
            HTTP_OPTIONS.into(),
            Any {
                type_url: HTTP_OPTIONS_TYPE.into(),
                value: vec![0xff, 0xff, 0xff],
            },
        );
        let (field, message) = protocol(&c).expect_err("garbage");
        assert!(
            field.starts_with("typed_extension_protocol_options["),
            "{field}"
        );
        assert!(message.contains("does not decode"), "{message}");
    }
}
