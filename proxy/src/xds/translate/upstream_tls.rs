//! A cluster's `UpstreamTlsContext` onto strait's mTLS origination. strait
//! has one workload identity, so a cluster's certificate and trust must be
//! the identity's own SDS secrets (`identity.sds`), as istiod sends them
//! (`default` and `ROOTCA`); the SAN matcher becomes the identity the
//! cluster's endpoints must prove: exact, or a `prefix*` / `*suffix`
//! pattern; no matcher means any identity the trust bundle signs.

use super::Rejected;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, SdsSecretConfig, UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use prost::Message;
use strait_config::SdsIdentity;

const TLS_SOCKET: &str = "envoy.transport_sockets.tls";
const UPSTREAM_TLS: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

/// What a TLS cluster needs.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamTls {
    /// The identity (or pattern) its endpoints must prove.
    pub identity: String,
    /// The SDS secrets it waits for: certificate, then trust.
    pub secrets: [String; 2],
}

/// `None` for a plaintext cluster.
pub fn upstream_tls(
    c: &Cluster,
    sds: Option<&SdsIdentity>,
) -> Result<Option<UpstreamTls>, Rejected> {
    let reject = |field: &str, m: String| Rejected::new("Cluster", &c.name, field, m);
    let Some(ts) = &c.transport_socket else {
        return Ok(None);
    };
    if ts.name == "envoy.transport_sockets.raw_buffer" {
        return Ok(None);
    }
    let any = match &ts.config_type {
        Some(ConfigType::TypedConfig(any)) if any.type_url == UPSTREAM_TLS => any,
        _ if ts.name != TLS_SOCKET => {
            return Err(reject(
                "transport_socket",
                format!("'{}' is not supported: plaintext or {TLS_SOCKET}", ts.name),
            ))
        }
        _ => {
            return Err(reject(
                "transport_socket.typed_config",
                format!("needs an {UPSTREAM_TLS}"),
            ))
        }
    };
    let ctx = UpstreamTlsContext::decode(any.value.as_slice()).map_err(|e| {
        reject(
            "transport_socket.typed_config",
            format!("not a valid UpstreamTlsContext: {e}"),
        )
    })?;
    let Some(sds) = sds else {
        return Err(reject(
            "transport_socket",
            "TLS to a cluster needs the workload identity from xDS secrets (identity.sds in the config)".into(),
        ));
    };
    let field = "transport_socket.typed_config.common_tls_context";
    let common = ctx
        .common_tls_context
        .ok_or_else(|| reject(field, "missing".into()))?;
    if !common.tls_certificates.is_empty() {
        return Err(reject(
            &format!("{field}.tls_certificates"),
            "inline certificates are not supported: use tls_certificate_sds_secret_configs".into(),
        ));
    }
    let certificate = match common.tls_certificate_sds_secret_configs.as_slice() {
        [one] => one_secret(one, &sds.certificate, "identity.sds.certificate").map_err(|m| {
            reject(
                &format!("{field}.tls_certificate_sds_secret_configs[0].name"),
                m,
            )
        })?,
        _ => {
            return Err(reject(
                &format!("{field}.tls_certificate_sds_secret_configs"),
                "needs exactly one secret: the workload certificate".into(),
            ))
        }
    };
    let (trust, matchers) = match common.validation_context_type {
        Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => {
            let f = format!("{field}.validation_context_sds_secret_config.name");
            let trust = one_secret(&s, &sds.trust_bundle, "identity.sds.trust_bundle")
                .map_err(|m| reject(&f, m))?;
            (trust, None)
        }
        Some(ValidationContextType::CombinedValidationContext(combined)) => {
            let f = format!("{field}.combined_validation_context");
            let s = combined.validation_context_sds_secret_config.ok_or_else(|| {
                reject(
                    &format!("{f}.validation_context_sds_secret_config"),
                    "missing: the trust bundle comes from SDS".into(),
                )
            })?;
            let trust = one_secret(&s, &sds.trust_bundle, "identity.sds.trust_bundle").map_err(
                |m| reject(&format!("{f}.validation_context_sds_secret_config.name"), m),
            )?;
            let f = format!("{f}.default_validation_context");
            (trust, combined.default_validation_context.map(|d| (f, d)))
        }
        _ => {
            return Err(reject(
                &format!("{field}.validation_context_type"),
                "needs validation_context_sds_secret_config or combined_validation_context: the trust bundle comes from SDS".into(),
            ))
        }
    };
    let identity = match matchers {
        None => "*".to_string(),
        Some((f, d)) => san_pattern(&d).map_err(|(sub, m)| reject(&format!("{f}.{sub}"), m))?,
    };
    Ok(Some(UpstreamTls {
        identity,
        secrets: [certificate, trust],
    }))
}

/// The secret's name, if it is the identity's.
pub(super) fn one_secret(
    s: &SdsSecretConfig,
    wanted: &str,
    setting: &str,
) -> Result<String, String> {
    if s.name == wanted {
        Ok(s.name.clone())
    } else {
        Err(format!(
            "'{}' is not {setting} '{wanted}': strait has one workload identity",
            s.name
        ))
    }
}

/// The identity pattern of a validation context's SAN matchers; `*` when
/// there are none. Fields the pattern cannot carry are refused.
pub(super) fn san_pattern(d: &CertificateValidationContext) -> Result<String, (String, String)> {
    if d.trusted_ca.is_some() {
        return Err((
            "trusted_ca".into(),
            "the trust bundle comes from SDS, not inline".into(),
        ));
    }
    let typed: Vec<(String, &StringMatcher)> = d
        .match_typed_subject_alt_names
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let field = format!("match_typed_subject_alt_names[{i}]");
            match SanType::try_from(m.san_type) {
                Ok(SanType::Uri | SanType::Dns) => m
                    .matcher
                    .as_ref()
                    .map(|s| (format!("{field}.matcher"), s))
                    .ok_or((field, "needs a matcher".to_string())),
                _ => Err((
                    format!("{field}.san_type"),
                    "only URI and DNS SANs name a workload".to_string(),
                )),
            }
        })
        .collect::<Result<_, _>>()?;
    // Deprecated, but control planes still send it.
    #[allow(deprecated)]
    let legacy = d
        .match_subject_alt_names
        .iter()
        .enumerate()
        .map(|(i, m)| (format!("match_subject_alt_names[{i}]"), m));
    let all: Vec<(String, &StringMatcher)> = typed.into_iter().chain(legacy).collect();
    let (field, m) = match all.as_slice() {
        [] => return Ok("*".into()),
        [one] => one,
        _ => {
            return Err((
                "match_typed_subject_alt_names".into(),
                "one SAN matcher only: a cluster expects one identity or one pattern".into(),
            ))
        }
    };
    if m.ignore_case {
        return Err((
            format!("{field}.ignore_case"),
            "identities compare exactly".into(),
        ));
    }
    let bad = |what: &str| {
        Err((
            field.clone(),
            format!("{what} is not supported: exact, prefix or suffix"),
        ))
    };
    let (value, pattern) = match &m.match_pattern {
        Some(MatchPattern::Exact(v)) => (v, v.clone()),
        Some(MatchPattern::Prefix(v)) => (v, format!("{v}*")),
        Some(MatchPattern::Suffix(v)) => (v, format!("*{v}")),
        Some(MatchPattern::SafeRegex(_)) => return bad("safe_regex"),
        Some(MatchPattern::Contains(_)) => return bad("contains"),
        _ => return bad("this matcher"),
    };
    // `*` is the pattern's wildcard; inside a value it would widen the match.
    if value.is_empty() || value.contains('*') {
        return Err((
            field.clone(),
            format!("'{value}': an empty value or one with '*' is not a usable identity"),
        ));
    }
    Ok(pattern)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::TransportSocket;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::CombinedCertificateValidationContext;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        CommonTlsContext, SubjectAltNameMatcher,
    };
    use envoy_types::pb::google::protobuf::Any;

    fn identity() -> SdsIdentity {
        SdsIdentity {
            certificate: "default".into(),
            trust_bundle: "ROOTCA".into(),
        }
    }

    fn secret(name: &str) -> SdsSecretConfig {
        SdsSecretConfig {
            name: name.into(),
            sds_config: None,
        }
    }

    /// A cluster with certificate `cert`, trust `trust` and these SAN matchers.
    fn cluster(cert: &str, trust: &str, sans: Vec<(SanType, MatchPattern)>) -> Cluster {
        let validation = CertificateValidationContext {
            match_typed_subject_alt_names: sans
                .into_iter()
                .map(|(t, p)| SubjectAltNameMatcher {
                    san_type: t as i32,
                    matcher: Some(StringMatcher {
                        match_pattern: Some(p),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let context = UpstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_certificate_sds_secret_configs: vec![secret(cert)],
                validation_context_type: Some(ValidationContextType::CombinedValidationContext(
                    CombinedCertificateValidationContext {
                        default_validation_context: Some(validation),
                        validation_context_sds_secret_config: Some(secret(trust)),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }),
            ..Default::default()
        };
        Cluster {
            name: "web".into(),
            transport_socket: Some(TransportSocket {
                name: TLS_SOCKET.into(),
                config_type: Some(ConfigType::TypedConfig(Any {
                    type_url: UPSTREAM_TLS.into(),
                    value: context.encode_to_vec(),
                })),
            }),
            ..Default::default()
        }
    }

    fn pattern(sans: Vec<(SanType, MatchPattern)>) -> Result<String, Rejected> {
        upstream_tls(&cluster("default", "ROOTCA", sans), Some(&identity()))
            .map(|t| t.expect("a TLS cluster").identity)
    }

    #[test]
    fn san_matchers_become_the_expected_identity() {
        let id = "spiffe://td/ns/a/sa/b";
        assert_eq!(
            pattern(vec![(SanType::Uri, MatchPattern::Exact(id.into()))]),
            Ok(id.into())
        );
        assert_eq!(
            pattern(vec![(
                SanType::Uri,
                MatchPattern::Prefix("spiffe://td/".into())
            )]),
            Ok("spiffe://td/*".into())
        );
        assert_eq!(
            pattern(vec![(SanType::Dns, MatchPattern::Suffix(".svc".into()))]),
            Ok("*.svc".into())
        );
        assert_eq!(
            pattern(vec![]),
            Ok("*".into()),
            "no matcher: any identity the CA signs"
        );
        let t = upstream_tls(&cluster("default", "ROOTCA", vec![]), Some(&identity()))
            .expect("translates")
            .expect("TLS");
        assert_eq!(t.secrets, ["default".to_string(), "ROOTCA".to_string()]);
    }

    #[test]
    fn what_the_one_identity_cannot_carry_is_refused_with_its_field() {
        let field = |r: Result<String, Rejected>| r.expect_err("refused").field;
        let ctx = "transport_socket.typed_config.common_tls_context";
        let vc = format!("{ctx}.combined_validation_context.default_validation_context");
        assert_eq!(
            field(pattern(vec![(
                SanType::Uri,
                MatchPattern::Exact("spiffe://x/*".into())
            )])),
            format!("{vc}.match_typed_subject_alt_names[0].matcher")
        );
        assert_eq!(
            field(pattern(vec![(
                SanType::Email,
                MatchPattern::Exact("a@b".into())
            )])),
            format!("{vc}.match_typed_subject_alt_names[0].san_type")
        );
        assert_eq!(
            field(pattern(vec![
                (SanType::Uri, MatchPattern::Exact("a".into())),
                (SanType::Uri, MatchPattern::Exact("b".into())),
            ])),
            format!("{vc}.match_typed_subject_alt_names")
        );
        let other = upstream_tls(&cluster("other-cert", "ROOTCA", vec![]), Some(&identity()))
            .expect_err("another certificate");
        assert_eq!(
            other.field,
            format!("{ctx}.tls_certificate_sds_secret_configs[0].name")
        );
        assert!(other.message.contains("one workload identity"), "{other}");
        let other = upstream_tls(&cluster("default", "other-ca", vec![]), Some(&identity()))
            .expect_err("another trust bundle");
        assert_eq!(
            other.field,
            format!("{ctx}.combined_validation_context.validation_context_sds_secret_config.name")
        );
        let no_sds =
            upstream_tls(&cluster("default", "ROOTCA", vec![]), None).expect_err("no SDS identity");
        assert_eq!(no_sds.field, "transport_socket");
    }
}
