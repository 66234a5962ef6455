//! `envoy.filters.http.fault` onto strait's per-route fault injection.
//! The HCM's filter config is the default of its routes; a
//! `typed_per_filter_config` entry on the route, else its virtual host,
//! else its route configuration replaces it (Envoy's most specific wins).
//! A fixed delay and an HTTP status abort, each with a share of requests,
//! are what strait's fault layer does; everything else the filter can do
//! (header-controlled faults, gRPC aborts, conditions on headers, nodes or
//! clusters, body rate limits, a cap on active faults) is refused.

use super::duration;
use envoy_types::pb::envoy::config::route::v3::FilterConfig;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::r#type::v3::{fractional_percent::DenominatorType, FractionalPercent};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use std::collections::HashMap;
use strait_config::file::{FileFault, FileFaultAbort, FileFaultDelay};

pub const FAULT: &str = "envoy.filters.http.fault";
pub const FAULT_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
const FILTER_CONFIG_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.FilterConfig";

type Fail = (String, String);

/// An `HTTPFault` in the file's shape; `None` when it injects nothing
/// (Istio installs the filter empty so that routes can configure it).
pub fn fault(any: &Any) -> Result<Option<FileFault>, Fail> {
    if any.type_url != FAULT_TYPE {
        return Err((
            "type_url".into(),
            format!("'{}' is not an HTTPFault", any.type_url),
        ));
    }
    let f = HttpFault::decode(any.value.as_slice())
        .map_err(|e| (String::new(), format!("not a valid HTTPFault: {e}")))?;
    let refused = [
        ("upstream_cluster", !f.upstream_cluster.is_empty()),
        ("headers", !f.headers.is_empty()),
        ("downstream_nodes", !f.downstream_nodes.is_empty()),
        ("max_active_faults", f.max_active_faults.is_some()),
        ("response_rate_limit", f.response_rate_limit.is_some()),
    ];
    if let Some((field, _)) = refused.iter().find(|(_, set)| *set) {
        return Err((
            field.to_string(),
            "not supported: strait injects a fixed delay and an HTTP status abort into a share of a route's requests".into(),
        ));
    }
    let mut out = FileFault::default();
    if let Some(d) = &f.delay {
        let fixed = match &d.fault_delay_secifier {
            Some(FaultDelaySecifier::FixedDelay(fixed)) => {
                duration(fixed).filter(|d| !d.is_zero()).ok_or((
                    "delay.fixed_delay".to_string(),
                    "must be positive".to_string(),
                ))?
            }
            _ => {
                return Err((
                    "delay".into(),
                    "only fixed_delay is supported (not header-controlled delays)".into(),
                ))
            }
        };
        let percent = percent(d.percentage.as_ref(), "delay.percentage")?;
        if percent > 0.0 {
            out.delay = Some(FileFaultDelay {
                fixed: super::humantime_like(fixed),
                percent,
            });
        }
    }
    if let Some(a) = &f.abort {
        let status =
            match &a.error_type {
                Some(ErrorType::HttpStatus(s)) => i64::from(*s),
                _ => return Err((
                    "abort".into(),
                    "only http_status aborts are supported (not gRPC or header-controlled ones)"
                        .into(),
                )),
            };
        if !a.response_body.is_empty() {
            return Err((
                "abort.response_body".into(),
                "not supported: strait's fault answers carry its own body".into(),
            ));
        }
        let percent = percent(a.percentage.as_ref(), "abort.percentage")?;
        if percent > 0.0 {
            out.abort = Some(FileFaultAbort { status, percent });
        }
    }
    Ok((out.delay.is_some() || out.abort.is_some()).then_some(out))
}

/// A fractional percent as a percentage (Envoy's absent percentage is 0;
/// a numerator over its denominator is all requests).
fn percent(p: Option<&FractionalPercent>, field: &str) -> Result<f64, Fail> {
    let Some(p) = p else { return Ok(0.0) };
    let denominator = match DenominatorType::try_from(p.denominator) {
        Ok(DenominatorType::Hundred) => 100.0,
        Ok(DenominatorType::TenThousand) => 10_000.0,
        Ok(DenominatorType::Million) => 1_000_000.0,
        Err(_) => {
            return Err((
                format!("{field}.denominator"),
                format!("{} is not a denominator", p.denominator),
            ))
        }
    };
    Ok((f64::from(p.numerator) / denominator * 100.0).min(100.0))
}

/// The most specific `typed_per_filter_config` entry for `filter`, in the
/// order given (route, virtual host, route configuration): the field it
/// is at, and its config (`None`: the entry disables the filter there).
/// `envoy.config.route.v3.FilterConfig` wrappers are unwrapped.
pub fn lookup(
    levels: [(&str, &HashMap<String, Any>); 3],
    filter: &str,
) -> Result<Option<(String, Option<Any>)>, Fail> {
    for (field, map) in levels {
        let Some(any) = map.get(filter) else { continue };
        let at = format!("{field}typed_per_filter_config[\"{filter}\"]");
        if any.type_url != FILTER_CONFIG_TYPE {
            return Ok(Some((at, Some(any.clone()))));
        }
        let wrapper = FilterConfig::decode(any.value.as_slice())
            .map_err(|e| (at.clone(), format!("not a valid FilterConfig: {e}")))?;
        let inner = wrapper.config.filter(|_| !wrapper.disabled);
        return Ok(Some((format!("{at}.config"), inner)));
    }
    Ok(None)
}

/// The fault config of the most specific level that configures the
/// filter: `Some(None)` when it injects nothing there.
pub fn per_filter(
    levels: [(&str, &HashMap<String, Any>); 3],
) -> Result<Option<Option<FileFault>>, Fail> {
    let Some((at, config)) = lookup(levels, FAULT)? else {
        return Ok(None);
    };
    let Some(any) = config else {
        return Ok(Some(None));
    };
    fault(&any)
        .map(Some)
        .map_err(|(sub, m)| (format!("{at}.{sub}"), m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::filters::common::fault::v3::FaultDelay;
    use envoy_types::pb::envoy::extensions::filters::http::fault::v3::FaultAbort;
    use envoy_types::pb::google::protobuf::Duration as PbDuration;

    fn any(f: &HttpFault) -> Any {
        Any {
            type_url: FAULT_TYPE.into(),
            value: f.encode_to_vec(),
        }
    }

    fn share(numerator: u32, denominator: DenominatorType) -> Option<FractionalPercent> {
        Some(FractionalPercent {
            numerator,
            denominator: denominator as i32,
        })
    }

    #[test]
    fn a_fixed_delay_and_a_status_abort_become_the_routes_fault() {
        let f = HttpFault {
            delay: Some(FaultDelay {
                percentage: share(2500, DenominatorType::TenThousand),
                fault_delay_secifier: Some(FaultDelaySecifier::FixedDelay(PbDuration {
                    seconds: 0,
                    nanos: 150_000_000,
                })),
            }),
            abort: Some(FaultAbort {
                percentage: share(100, DenominatorType::Hundred),
                error_type: Some(ErrorType::HttpStatus(503)),
                ..Default::default()
            }),
            ..Default::default()
        };
        let got = fault(&any(&f)).expect("valid").expect("injects");
        let delay = got.delay.expect("delay");
        assert_eq!((delay.fixed.as_str(), delay.percent), ("150ms", 25.0));
        let abort = got.abort.expect("abort");
        assert_eq!((abort.status, abort.percent), (503, 100.0));

        // Istio's empty filter (and absent shares) inject nothing.
        assert!(fault(&any(&HttpFault::default())).expect("valid").is_none());
    }

    #[test]
    fn the_most_specific_level_wins_and_what_strait_cannot_do_is_refused() {
        let abort = |status| HttpFault {
            abort: Some(FaultAbort {
                percentage: share(100, DenominatorType::Hundred),
                error_type: Some(ErrorType::HttpStatus(status)),
                ..Default::default()
            }),
            ..Default::default()
        };
        let route: HashMap<String, Any> = HashMap::new();
        let host: HashMap<String, Any> = [(FAULT.to_string(), any(&abort(418)))].into();
        let config: HashMap<String, Any> = [(FAULT.to_string(), any(&abort(500)))].into();
        let got = per_filter([("route.", &route), ("", &host), ("", &config)])
            .expect("valid")
            .expect("configured")
            .expect("injects");
        assert_eq!(got.abort.map(|a| a.status), Some(418));

        let grpc = HttpFault {
            abort: Some(FaultAbort {
                error_type: Some(ErrorType::GrpcStatus(14)),
                ..Default::default()
            }),
            ..Default::default()
        };
        let route: HashMap<String, Any> = [(FAULT.to_string(), any(&grpc))].into();
        let (field, message) =
            per_filter([("", &route), ("", &host), ("", &config)]).expect_err("refused");
        assert_eq!(
            field,
            "typed_per_filter_config[\"envoy.filters.http.fault\"].abort"
        );
        assert!(message.contains("http_status"), "{message}");
    }
}
