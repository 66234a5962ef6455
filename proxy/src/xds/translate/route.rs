//! `RouteConfiguration` into the config file's `virtual_hosts` shape, so
//! the file's own rules (domains, regexes, header names, one action per
//! route, status codes) validate what the control plane sent. A route to
//! a cluster that is not live (unknown, or warming) answers 503 until it
//! is, as Envoy's "cluster not found" does.

use super::{duration_text, Rejected};
use envoy_types::pb::envoy::config::core::v3::{data_source, HeaderValueOption};
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::redirect_action::{
    PathRewriteSpecifier, RedirectResponseCode,
};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::PolicySpecifier;
use envoy_types::pb::envoy::config::route::v3::route_action::{
    ClusterSpecifier, HostRewriteSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    RetryPolicy, Route, RouteAction, RouteConfiguration,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use strait_config::file::*;
use strait_config::HashKey;

/// Where a translated virtual host came from, to name it in an error.
pub struct Origin {
    pub route_config: String,
    pub index: usize,
}

/// How one listener (filter chain) uses a route config.
#[derive(Debug, Default, Clone)]
pub struct Use {
    /// The destination port its traffic comes to; `None`: every port.
    pub port: Option<u16>,
    /// Names its virtual hosts and routes (`{prefix}/{host}/{route}`):
    /// the config's name, told apart when one config serves several ports.
    pub prefix: Option<String>,
    /// The HCM's fault filter config, for routes that set none.
    pub fault: Option<FileFault>,
}

/// One route config's virtual hosts in the file's shape, for every port.
#[cfg(test)]
pub fn route_config(
    rc: &RouteConfiguration,
    live: &BTreeSet<String>,
    hash: &mut HashMap<String, HashKey>,
    out: &mut Vec<(FileVirtualHost, Origin)>,
) -> Result<(), Rejected> {
    route_config_for(rc, &Use::default(), live, hash, out)
}

/// One route config's virtual hosts in the file's shape, as one listener
/// uses it. `live` are the clusters that can take traffic now; `hash`
/// collects ring-hash keys routes ask of their clusters.
pub fn route_config_for(
    rc: &RouteConfiguration,
    usage: &Use,
    live: &BTreeSet<String>,
    hash: &mut HashMap<String, HashKey>,
    out: &mut Vec<(FileVirtualHost, Origin)>,
) -> Result<(), Rejected> {
    let prefix = usage.prefix.as_deref().unwrap_or(&rc.name);
    for (v, vh) in rc.virtual_hosts.iter().enumerate() {
        let reject = |field: String, message: String| {
            Rejected::new(
                "RouteConfiguration",
                &rc.name,
                &format!("virtual_hosts[{v}].{field}"),
                message,
            )
        };
        // strait matches the authority without its port: "a:80" and "a"
        // are one domain.
        let mut domains: Vec<String> = Vec::new();
        for d in &vh.domains {
            let d = strip_port(d).to_ascii_lowercase();
            if !domains.contains(&d) {
                domains.push(d);
            }
        }
        let mut routes = Vec::with_capacity(vh.routes.len());
        let mut names = BTreeSet::new();
        for (r, route) in vh.routes.iter().enumerate() {
            let mut rule =
                rule(route, live, hash).map_err(|(f, m)| reject(format!("routes[{r}].{f}"), m))?;
            let route_field = format!("virtual_hosts[{v}].routes[{r}].");
            let host_field = format!("virtual_hosts[{v}].");
            let levels = [
                (route_field.as_str(), &route.typed_per_filter_config),
                (host_field.as_str(), &vh.typed_per_filter_config),
                ("", &rc.typed_per_filter_config),
            ];
            let refuse = |(field, message): (String, String)| {
                Rejected::new("RouteConfiguration", &rc.name, &field, message)
            };
            rule.fault = super::fault::per_filter(levels)
                .map_err(refuse)?
                .unwrap_or_else(|| usage.fault.clone());
            rule.rate_limit = super::rate_limit::per_filter(levels).map_err(refuse)?;
            // The `route` metric label: unique across every host.
            let local = if route.name.is_empty() || !names.insert(route.name.clone()) {
                r.to_string()
            } else {
                route.name.clone()
            };
            rule.name = Some(format!("{prefix}/{}/{local}", vh.name));
            add_headers(
                &mut rule.request_headers,
                &vh.request_headers_to_add,
                &vh.request_headers_to_remove,
            );
            add_headers(
                &mut rule.request_headers,
                &rc.request_headers_to_add,
                &rc.request_headers_to_remove,
            );
            add_headers(
                &mut rule.response_headers,
                &vh.response_headers_to_add,
                &vh.response_headers_to_remove,
            );
            add_headers(
                &mut rule.response_headers,
                &rc.response_headers_to_add,
                &rc.response_headers_to_remove,
            );
            routes.push(rule);
        }
        out.push((
            FileVirtualHost {
                name: format!("{prefix}/{}", vh.name),
                domains,
                port: usage.port.map(i64::from),
                routes,
            },
            Origin {
                route_config: rc.name.clone(),
                index: v,
            },
        ));
    }
    Ok(())
}

fn strip_port(domain: &str) -> &str {
    match domain.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => domain,
    }
}

type Fail = (String, String);

fn rule(
    route: &Route,
    live: &BTreeSet<String>,
    hash: &mut HashMap<String, HashKey>,
) -> Result<FileRouteRule, Fail> {
    let mut rule = FileRouteRule {
        name: None,
        matches: matches(route)?,
        cluster: None,
        split: None,
        direct_response: None,
        redirect: None,
        original_destination: None,
        request_headers: None,
        response_headers: None,
        rewrite: None,
        timeout: None,
        fault: None,
        rate_limit: None,
        retry: None,
    };
    add_headers(
        &mut rule.request_headers,
        &route.request_headers_to_add,
        &route.request_headers_to_remove,
    );
    add_headers(
        &mut rule.response_headers,
        &route.response_headers_to_add,
        &route.response_headers_to_remove,
    );
    match &route.action {
        Some(Action::Route(a)) => route_action(a, live, hash, &mut rule)?,
        Some(Action::Redirect(r)) => {
            let path = match &r.path_rewrite_specifier {
                None => None,
                Some(PathRewriteSpecifier::PathRedirect(p)) => Some(p.clone()),
                Some(_) => {
                    return Err((
                        "redirect".into(),
                        "only path_redirect rewrites a redirect's path".into(),
                    ))
                }
            };
            if r.port_redirect != 0 || r.scheme_rewrite_specifier.is_some() || r.strip_query {
                return Err((
                    "redirect".into(),
                    "port, scheme and strip_query redirects are not supported".into(),
                ));
            }
            let status = match RedirectResponseCode::try_from(r.response_code) {
                Ok(RedirectResponseCode::MovedPermanently) => 301,
                Ok(RedirectResponseCode::Found) => 302,
                Ok(RedirectResponseCode::SeeOther) => 303,
                Ok(RedirectResponseCode::TemporaryRedirect) => 307,
                Ok(RedirectResponseCode::PermanentRedirect) => 308,
                Err(_) => {
                    return Err((
                        "redirect.response_code".into(),
                        format!("{} is not a redirect code", r.response_code),
                    ))
                }
            };
            rule.redirect = Some(FileRedirect {
                host: (!r.host_redirect.is_empty()).then(|| r.host_redirect.clone()),
                path,
                status: Some(status),
            });
        }
        Some(Action::DirectResponse(d)) => {
            let body = match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
                None => None,
                Some(data_source::Specifier::InlineString(s)) => Some(s.clone()),
                Some(data_source::Specifier::InlineBytes(b)) => {
                    Some(String::from_utf8_lossy(b).into_owned())
                }
                Some(_) => {
                    return Err((
                        "direct_response.body".into(),
                        "only inline bodies are supported".into(),
                    ))
                }
            };
            rule.direct_response = Some(FileDirectResponse {
                status: i64::from(d.status),
                body,
            });
        }
        Some(_) => {
            return Err((
                "action".into(),
                "only route, redirect and direct_response actions are supported".into(),
            ))
        }
        None => return Err(("action".into(), "a route needs an action".into())),
    }
    Ok(rule)
}

fn not_live(name: &str) -> FileDirectResponse {
    FileDirectResponse {
        status: 503,
        body: Some(format!(
            "cluster '{name}' is not available (unknown to the control plane, or still warming)\n"
        )),
    }
}

fn route_action(
    a: &RouteAction,
    live: &BTreeSet<String>,
    hash: &mut HashMap<String, HashKey>,
    rule: &mut FileRouteRule,
) -> Result<(), Fail> {
    let mut targets = Vec::new();
    match &a.cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) => {
            targets.push(c.clone());
            if live.contains(c) {
                rule.cluster = Some(c.clone());
            } else {
                rule.direct_response = Some(not_live(c));
            }
        }
        Some(ClusterSpecifier::WeightedClusters(w)) => {
            let mut split = Vec::new();
            for c in &w.clusters {
                targets.push(c.name.clone());
                let weight = c.weight.map_or(0, |w| w.value);
                // A zero weight takes no traffic; a cluster not live takes
                // none either (Envoy would answer 503 for its share).
                if weight > 0 && live.contains(&c.name) {
                    split.push(FileSplit {
                        cluster: c.name.clone(),
                        weight: i64::from(weight),
                    });
                }
            }
            match split.len() {
                0 => rule.direct_response = Some(not_live(&targets.join(", "))),
                _ => rule.split = Some(split),
            }
        }
        _ => {
            return Err((
                "route.cluster_specifier".into(),
                "only cluster and weighted_clusters are supported".into(),
            ))
        }
    }
    if let Some(t) = &a.timeout {
        // Zero disables the timeout in Envoy; strait then uses the
        // cluster's response timeout.
        rule.timeout = duration_text(t);
    }
    if !a.prefix_rewrite.is_empty() {
        rule.rewrite.get_or_insert_with(Default::default).prefix = Some(a.prefix_rewrite.clone());
    }
    match &a.host_rewrite_specifier {
        None => {}
        Some(HostRewriteSpecifier::HostRewriteLiteral(h)) => {
            rule.rewrite.get_or_insert_with(Default::default).host = Some(h.clone());
        }
        Some(_) => {
            return Err((
                "route.host_rewrite_specifier".into(),
                "only host_rewrite_literal is supported".into(),
            ))
        }
    }
    if let Some(p) = &a.retry_policy {
        rule.retry = Some(retry(p).map_err(|(f, m)| (format!("route.retry_policy.{f}"), m))?);
    }
    if let Some(key) = a
        .hash_policy
        .iter()
        .find_map(|h| match &h.policy_specifier {
            Some(PolicySpecifier::Header(h)) => {
                Some(HashKey::Header(h.header_name.to_ascii_lowercase()))
            }
            Some(PolicySpecifier::ConnectionProperties(c)) if c.source_ip => {
                Some(HashKey::SourceIp)
            }
            _ => None,
        })
    {
        for t in targets {
            hash.entry(t).or_insert_with(|| key.clone());
        }
    }
    Ok(())
}

fn retry(p: &RetryPolicy) -> Result<FileRetry, Fail> {
    let mut on = Vec::new();
    for cond in p
        .retry_on
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        match cond {
            "5xx" | "gateway-error" | "connect-failure" | "reset" | "refused-stream" => {
                on.push(cond.to_string())
            }
            "retriable-status-codes" => {
                on.extend(p.retriable_status_codes.iter().map(|c| c.to_string()))
            }
            "cancelled" | "deadline-exceeded" | "resource-exhausted" | "internal"
            | "unavailable" => on.push(format!("grpc-{cond}")),
            other => {
                return Err((
                    "retry_on".into(),
                    format!("'{other}' is not a retry condition strait supports"),
                ))
            }
        }
    }
    let backoff = p.retry_back_off.as_ref();
    Ok(FileRetry {
        attempts: Some(p.num_retries.map_or(1, |n| i64::from(n.value))),
        on,
        per_try_timeout: p.per_try_timeout.as_ref().and_then(duration_text),
        backoff_base: backoff
            .and_then(|b| b.base_interval.as_ref())
            .and_then(duration_text),
        backoff_max: backoff
            .and_then(|b| b.max_interval.as_ref())
            .and_then(duration_text),
        max_body: None,
    })
}

// The deprecated header matchers (exact_match, ...) are what many control
// planes still send: they must keep working.
#[allow(deprecated)]
fn matches(route: &Route) -> Result<FileRouteMatch, Fail> {
    let Some(m) = &route.r#match else {
        return Ok(FileRouteMatch::default());
    };
    if m.runtime_fraction.is_some() {
        return Err((
            "match.runtime_fraction".into(),
            "runtime fractions are not supported".into(),
        ));
    }
    let ignore_case = m.case_sensitive.is_some_and(|c| !c.value);
    let ci = |re: String| if ignore_case { format!("(?i){re}") } else { re };
    let path = match &m.path_specifier {
        None => None,
        Some(PathSpecifier::Prefix(p)) if !ignore_case => Some(FileStringMatch {
            prefix: Some(p.clone()),
            ..Default::default()
        }),
        Some(PathSpecifier::Prefix(p)) => Some(FileStringMatch {
            regex: Some(ci(format!("{}.*", regex::escape(p)))),
            ..Default::default()
        }),
        Some(PathSpecifier::Path(p)) if !ignore_case => Some(FileStringMatch {
            exact: Some(p.clone()),
            ..Default::default()
        }),
        Some(PathSpecifier::Path(p)) => Some(FileStringMatch {
            regex: Some(ci(regex::escape(p))),
            ..Default::default()
        }),
        Some(PathSpecifier::SafeRegex(r)) => Some(FileStringMatch {
            regex: Some(ci(r.regex.clone())),
            ..Default::default()
        }),
        Some(_) => {
            return Err((
                "match.path_specifier".into(),
                "only prefix, path and safe_regex are supported".into(),
            ))
        }
    };
    let mut out = FileRouteMatch {
        path,
        ..Default::default()
    };
    // A gRPC match is a content-type match.
    if m.grpc.is_some() {
        out.headers.push(named(
            "content-type",
            None,
            Some("application/grpc".into()),
            None,
            None,
            false,
        ));
    }
    for (i, h) in m.headers.iter().enumerate() {
        let fail = |m: &str| (format!("match.headers[{i}]"), m.to_string());
        if h.name == ":method" {
            if let Some(HeaderMatchSpecifier::ExactMatch(v)) = &h.header_match_specifier {
                if !h.invert_match {
                    out.method = Some(v.clone());
                    continue;
                }
            }
            return Err(fail(":method matches only exactly, without invert_match"));
        }
        let (exact, prefix, regex, present) = match &h.header_match_specifier {
            Some(HeaderMatchSpecifier::ExactMatch(v)) => (Some(v.clone()), None, None, None),
            Some(HeaderMatchSpecifier::PrefixMatch(v)) => (None, Some(v.clone()), None, None),
            Some(HeaderMatchSpecifier::SuffixMatch(v)) => {
                (None, None, Some(format!(".*{}", regex::escape(v))), None)
            }
            Some(HeaderMatchSpecifier::ContainsMatch(v)) => {
                (None, None, Some(format!(".*{}.*", regex::escape(v))), None)
            }
            Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => {
                (None, None, Some(r.regex.clone()), None)
            }
            Some(HeaderMatchSpecifier::PresentMatch(p)) => {
                out.headers.push(named(
                    &h.name,
                    None,
                    None,
                    None,
                    Some(true),
                    h.invert_match != *p,
                ));
                continue;
            }
            Some(HeaderMatchSpecifier::StringMatch(s)) => {
                string_matcher(s).map_err(|m| fail(&m))?
            }
            Some(HeaderMatchSpecifier::RangeMatch(_)) => {
                return Err(fail("range matches are not supported"))
            }
            // No specifier: the header is present.
            None => (None, None, None, Some(true)),
        };
        out.headers.push(named(
            &h.name,
            exact,
            prefix,
            regex,
            present,
            h.invert_match,
        ));
    }
    for (i, q) in m.query_parameters.iter().enumerate() {
        let (exact, prefix, regex, present) = match &q.query_parameter_match_specifier {
            Some(QueryParameterMatchSpecifier::StringMatch(s)) => {
                string_matcher(s).map_err(|m| (format!("match.query_parameters[{i}]"), m))?
            }
            Some(QueryParameterMatchSpecifier::PresentMatch(_)) | None => {
                (None, None, None, Some(true))
            }
        };
        out.query
            .push(named(&q.name, exact, prefix, regex, present, false));
    }
    Ok(out)
}

type Parts = (Option<String>, Option<String>, Option<String>, Option<bool>);

fn string_matcher(s: &StringMatcher) -> Result<Parts, String> {
    let ci = |re: String| {
        if s.ignore_case {
            format!("(?i){re}")
        } else {
            re
        }
    };
    Ok(match &s.match_pattern {
        Some(MatchPattern::Exact(v)) if !s.ignore_case => (Some(v.clone()), None, None, None),
        Some(MatchPattern::Exact(v)) => (None, None, Some(ci(regex::escape(v))), None),
        Some(MatchPattern::Prefix(v)) if !s.ignore_case => (None, Some(v.clone()), None, None),
        Some(MatchPattern::Prefix(v)) => (
            None,
            None,
            Some(ci(format!("{}.*", regex::escape(v)))),
            None,
        ),
        Some(MatchPattern::Suffix(v)) => (
            None,
            None,
            Some(ci(format!(".*{}", regex::escape(v)))),
            None,
        ),
        Some(MatchPattern::Contains(v)) => (
            None,
            None,
            Some(ci(format!(".*{}.*", regex::escape(v)))),
            None,
        ),
        Some(MatchPattern::SafeRegex(r)) => (None, None, Some(ci(r.regex.clone())), None),
        _ => {
            return Err(
                "only exact, prefix, suffix, contains and safe_regex string matches are supported"
                    .into(),
            )
        }
    })
}

fn named(
    name: &str,
    exact: Option<String>,
    prefix: Option<String>,
    regex: Option<String>,
    present: Option<bool>,
    invert: bool,
) -> FileNamedMatch {
    FileNamedMatch {
        name: name.to_string(),
        exact,
        prefix,
        regex,
        present,
        invert,
    }
}

/// Append Envoy's header mutations to a file `HeaderOps` (strait sets a
/// header, replacing any value; Envoy's append flags are not kept).
fn add_headers(ops: &mut Option<FileHeaderOps>, add: &[HeaderValueOption], remove: &[String]) {
    if add.is_empty() && remove.is_empty() {
        return;
    }
    let ops = ops.get_or_insert_with(Default::default);
    let adds: BTreeMap<String, String> = add
        .iter()
        .filter_map(|o| o.header.as_ref())
        .map(|h| {
            let value = if h.value.is_empty() {
                String::from_utf8_lossy(&h.raw_value).into_owned()
            } else {
                h.value.clone()
            };
            (h.key.clone(), value)
        })
        .collect();
    for (k, v) in adds {
        ops.add.entry(k).or_insert(v);
    }
    for r in remove {
        if !ops.remove.contains(r) {
            ops.remove.push(r.clone());
        }
    }
}
