//! `envoy.filters.http.local_ratelimit` onto strait's per-route token
//! bucket. Configured per route (`typed_per_filter_config` on the route,
//! its virtual host or its route configuration), a bucket is the route's
//! own, as strait's is. A bucket on the HCM's filter would be one for
//! the whole listener, which strait does not have: refused. Envoy's
//! defaults are honoured: a filter not `filter_enabled` and
//! `filter_enforced` for every request limits nothing (a share of
//! requests, or descriptors, headers and other statuses than 429, is
//! refused).

use super::duration;
use super::fault::lookup;
use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use std::collections::HashMap;
use strait_config::file::FileRateLimit;

pub const LOCAL_RATE_LIMIT: &str = "envoy.filters.http.local_ratelimit";
pub const LOCAL_RATE_LIMIT_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";

type Fail = (String, String);

fn decode(any: &Any) -> Result<LocalRateLimit, Fail> {
    if any.type_url != LOCAL_RATE_LIMIT_TYPE {
        return Err((
            "type_url".into(),
            format!("'{}' is not a LocalRateLimit", any.type_url),
        ));
    }
    LocalRateLimit::decode(any.value.as_slice())
        .map_err(|e| (String::new(), format!("not a valid LocalRateLimit: {e}")))
}

/// The HCM's filter: accepted when it only enables the filter for routes
/// to configure (no bucket of its own).
pub fn listener_filter(any: Option<&Any>) -> Result<(), Fail> {
    let Some(any) = any else { return Ok(()) };
    if decode(any)?.token_bucket.is_some() {
        return Err((
            "token_bucket".into(),
            "a bucket for the whole listener is not supported: give routes their own (typed_per_filter_config)".into(),
        ));
    }
    Ok(())
}

/// 0 or 100 (percent of requests); anything between is refused.
fn all_or_none(p: Option<&RuntimeFractionalPercent>, field: &str) -> Result<bool, Fail> {
    let Some(share) = p.and_then(|p| p.default_value.as_ref()) else {
        return Ok(false);
    };
    let whole = match DenominatorType::try_from(share.denominator) {
        Ok(DenominatorType::Hundred) => 100,
        Ok(DenominatorType::TenThousand) => 10_000,
        Ok(DenominatorType::Million) => 1_000_000,
        Err(_) => {
            return Err((
                format!("{field}.default_value.denominator"),
                "unknown".into(),
            ))
        }
    };
    match share.numerator {
        0 => Ok(false),
        n if n >= whole => Ok(true),
        _ => Err((
            format!("{field}.default_value"),
            "a share of requests is not supported: 0% or 100%".into(),
        )),
    }
}

fn route_limit(any: &Any) -> Result<Option<FileRateLimit>, Fail> {
    let l = decode(any)?;
    let refused = [
        ("descriptors", !l.descriptors.is_empty()),
        ("rate_limits", !l.rate_limits.is_empty()),
        (
            "response_headers_to_add",
            !l.response_headers_to_add.is_empty(),
        ),
        (
            "request_headers_to_add_when_not_enforced",
            !l.request_headers_to_add_when_not_enforced.is_empty(),
        ),
        (
            "local_rate_limit_per_downstream_connection",
            l.local_rate_limit_per_downstream_connection,
        ),
        (
            "local_cluster_rate_limit",
            l.local_cluster_rate_limit.is_some(),
        ),
        (
            "status",
            l.status
                .as_ref()
                .is_some_and(|s| s.code != 0 && s.code != 429),
        ),
    ];
    if let Some((field, _)) = refused.iter().find(|(_, set)| *set) {
        return Err((
            field.to_string(),
            "not supported: strait's limit is one token bucket per route, answered with 429".into(),
        ));
    }
    let enabled = all_or_none(l.filter_enabled.as_ref(), "filter_enabled")?;
    let enforced = all_or_none(l.filter_enforced.as_ref(), "filter_enforced")?;
    if !(enabled && enforced) {
        return Ok(None);
    }
    let Some(bucket) = &l.token_bucket else {
        return Err(("token_bucket".into(), "required".into()));
    };
    let interval = bucket
        .fill_interval
        .as_ref()
        .and_then(duration)
        .filter(|d| !d.is_zero())
        .ok_or((
            "token_bucket.fill_interval".to_string(),
            "must be positive".to_string(),
        ))?;
    let per_fill = bucket.tokens_per_fill.as_ref().map_or(1, |t| t.value);
    if bucket.max_tokens == 0 || per_fill == 0 {
        return Err((
            "token_bucket".into(),
            "max_tokens and tokens_per_fill must be positive".into(),
        ));
    }
    Ok(Some(FileRateLimit {
        requests_per_second: f64::from(per_fill) / interval.as_secs_f64(),
        burst: Some(i64::from(bucket.max_tokens)),
    }))
}

/// The route's limit from the most specific level that configures one.
pub fn per_filter(
    levels: [(&str, &HashMap<String, Any>); 3],
) -> Result<Option<FileRateLimit>, Fail> {
    let Some((at, Some(any))) = lookup(levels, LOCAL_RATE_LIMIT)? else {
        return Ok(None);
    };
    route_limit(&any).map_err(|(sub, m)| (format!("{at}.{sub}"), m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, TokenBucket};
    use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};

    fn all() -> Option<RuntimeFractionalPercent> {
        Some(RuntimeFractionalPercent {
            default_value: Some(FractionalPercent {
                numerator: 100,
                denominator: DenominatorType::Hundred as i32,
            }),
            runtime_key: String::new(),
        })
    }

    fn limit(l: &LocalRateLimit) -> HashMap<String, Any> {
        [(
            LOCAL_RATE_LIMIT.to_string(),
            Any {
                type_url: LOCAL_RATE_LIMIT_TYPE.into(),
                value: l.encode_to_vec(),
            },
        )]
        .into()
    }

    #[test]
    fn an_enforced_bucket_becomes_the_routes_and_a_shadow_one_limits_nothing() {
        let mut l = LocalRateLimit {
            token_bucket: Some(TokenBucket {
                max_tokens: 20,
                tokens_per_fill: Some(UInt32Value { value: 5 }),
                fill_interval: Some(PbDuration {
                    seconds: 0,
                    nanos: 500_000_000,
                }),
            }),
            filter_enabled: all(),
            filter_enforced: all(),
            ..Default::default()
        };
        let none = HashMap::new();
        let got = per_filter([("", &limit(&l)), ("", &none), ("", &none)])
            .expect("valid")
            .expect("limits");
        assert_eq!((got.requests_per_second, got.burst), (10.0, Some(20)));

        l.filter_enforced = None;
        assert!(per_filter([("", &none), ("", &limit(&l)), ("", &none)])
            .expect("valid")
            .is_none());

        l.filter_enforced = all();
        l.local_rate_limit_per_downstream_connection = true;
        let (field, _) =
            per_filter([("r.", &limit(&l)), ("", &none), ("", &none)]).expect_err("refused");
        assert_eq!(
            field,
            "r.typed_per_filter_config[\"envoy.filters.http.local_ratelimit\"].local_rate_limit_per_downstream_connection"
        );
    }
}
