//! Validation of `virtual_hosts`: domain patterns, route matchers
//! (regexes compile here, so a bad one is refused with its line rather
//! than failing a request), exactly one action per route, clusters that
//! exist, weights and status codes in range.

use crate::error::{At, ConfigError};
use crate::file::*;
use crate::lines::LineIndex;
use crate::model::*;
use std::collections::{HashMap, HashSet};

fn at(index: &LineIndex, field: &str) -> At {
    At {
        field: field.to_string(),
        line: index.line_of(field),
    }
}

fn invalid(index: &LineIndex, field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        at: at(index, field),
        message: message.into(),
    }
}

/// A domain is `*`, `*.suffix`, `prefix.*` or an exact name.
fn check_domain(index: &LineIndex, field: &str, domain: &str) -> Result<String, ConfigError> {
    let d = domain.trim().to_ascii_lowercase();
    let stars = d.matches('*').count();
    let ok = !d.is_empty()
        && (stars == 0
            || d == "*"
            || (stars == 1 && (d.starts_with("*.") || d.ends_with(".*")) && d.len() > 2));
    if ok {
        Ok(d)
    } else {
        Err(invalid(
            index,
            field,
            format!("'{domain}' is not a domain pattern (exact, *.suffix, prefix.* or *)"),
        ))
    }
}

fn duration(
    index: &LineIndex,
    field: &str,
    value: &str,
) -> Result<std::time::Duration, ConfigError> {
    match humantime::parse_duration(value.trim()) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(ConfigError::ZeroDuration {
            at: at(index, field),
            value: value.to_string(),
        }),
        Err(_) => Err(ConfigError::NotADuration {
            at: at(index, field),
            value: value.to_string(),
        }),
    }
}

fn check_regex(index: &LineIndex, field: &str, re: &str) -> Result<(), ConfigError> {
    regex::Regex::new(re).map(|_| ()).map_err(|e| {
        invalid(
            index,
            field,
            format!("'{re}' is not a regular expression: {e}"),
        )
    })
}

fn string_match(
    index: &LineIndex,
    field: &str,
    exact: &Option<String>,
    prefix: &Option<String>,
    regex: &Option<String>,
    present: Option<bool>,
) -> Result<StringMatch, ConfigError> {
    let chosen = [
        exact.is_some(),
        prefix.is_some(),
        regex.is_some(),
        present == Some(true),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if chosen != 1 {
        return Err(invalid(
            index,
            field,
            "give exactly one of exact, prefix, regex (or present: true)",
        ));
    }
    Ok(match (exact, prefix, regex) {
        (Some(e), _, _) => StringMatch::Exact(e.clone()),
        (_, Some(p), _) => StringMatch::Prefix(p.clone()),
        (_, _, Some(r)) => {
            check_regex(index, &format!("{field}.regex"), r)?;
            StringMatch::Regex(r.clone())
        }
        _ => StringMatch::Present,
    })
}

fn header_name(index: &LineIndex, field: &str, name: &str) -> Result<String, ConfigError> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(invalid(
            index,
            field,
            format!("'{name}' is not a header name"),
        ))
    }
}

fn header_ops(
    index: &LineIndex,
    field: &str,
    ops: Option<FileHeaderOps>,
) -> Result<HeaderOps, ConfigError> {
    let ops = ops.unwrap_or_default();
    let mut out = HeaderOps::default();
    for (name, value) in ops.add {
        let name = header_name(index, &format!("{field}.add"), &name)?;
        if value.bytes().any(|b| b == b'\r' || b == b'\n') {
            return Err(invalid(
                index,
                &format!("{field}.add.{name}"),
                "header values cannot hold line breaks",
            ));
        }
        out.add.push((name, value));
    }
    for (i, name) in ops.remove.iter().enumerate() {
        out.remove
            .push(header_name(index, &format!("{field}.remove[{i}]"), name)?);
    }
    Ok(out)
}

/// Validate every virtual host; `clusters` are the defined cluster names.
pub fn virtual_hosts(
    index: &LineIndex,
    hosts: Vec<FileVirtualHost>,
    clusters: &HashSet<String>,
) -> Result<Vec<VirtualHost>, ConfigError> {
    let mut seen_domains = HashSet::new();
    // Name -> the field that used it first. Route names are the `route`
    // metric label, which does not carry the host: unique across hosts.
    let mut host_names: HashMap<String, String> = HashMap::new();
    let mut route_names: HashMap<String, String> = HashMap::new();
    let mut out = Vec::with_capacity(hosts.len());
    for (h, host) in hosts.into_iter().enumerate() {
        let hf = format!("virtual_hosts[{h}]");
        if let Some(first) = host_names.insert(host.name.clone(), format!("{hf}.name")) {
            return Err(ConfigError::DuplicateName {
                at: at(index, &format!("{hf}.name")),
                what: "virtual host name",
                name: host.name,
                first,
            });
        }
        if host.domains.is_empty() {
            return Err(ConfigError::Empty {
                at: at(index, &format!("{hf}.domains")),
            });
        }
        let port = match host.port {
            None => None,
            Some(p) => match u16::try_from(p) {
                Ok(p) if p != 0 => Some(p),
                _ => {
                    return Err(invalid(
                        index,
                        &format!("{hf}.port"),
                        format!("{p} is not a port"),
                    ))
                }
            },
        };
        let mut domains = Vec::new();
        for (d, domain) in host.domains.iter().enumerate() {
            let field = format!("{hf}.domains[{d}]");
            let domain = check_domain(index, &field, domain)?;
            // Hosts of different ports never see the same traffic.
            if !seen_domains.insert((port, domain.clone())) {
                return Err(invalid(
                    index,
                    &field,
                    format!("domain '{domain}' is already claimed by an earlier virtual host"),
                ));
            }
            domains.push(domain);
        }
        let mut routes = Vec::with_capacity(host.routes.len());
        for (r, route) in host.routes.into_iter().enumerate() {
            let rf = format!("{hf}.routes[{r}]");
            let rule = rule(index, &rf, &host.name, r, route, clusters)?;
            if let Some(first) = route_names.insert(rule.name.clone(), format!("{rf}.name")) {
                return Err(ConfigError::DuplicateName {
                    at: at(index, &format!("{rf}.name")),
                    what: "route name (the `route` metric label)",
                    name: rule.name,
                    first,
                });
            }
            routes.push(rule);
        }
        out.push(VirtualHost {
            name: host.name,
            domains,
            port,
            routes,
        });
    }
    Ok(out)
}

fn rule(
    index: &LineIndex,
    rf: &str,
    host: &str,
    position: usize,
    route: FileRouteRule,
    clusters: &HashSet<String>,
) -> Result<RouteRule, ConfigError> {
    let known = |field: String, name: &str| -> Result<(), ConfigError> {
        if clusters.contains(name) {
            Ok(())
        } else {
            Err(ConfigError::UnknownCluster {
                at: at(index, &field),
                name: name.to_string(),
            })
        }
    };
    let m = route.matches;
    let path = match &m.path {
        Some(p) => {
            let matcher = string_match(
                index,
                &format!("{rf}.match.path"),
                &p.exact,
                &p.prefix,
                &p.regex,
                None,
            )?;
            Some(matcher)
        }
        None => None,
    };
    let named = |kind: &str,
                 list: &[FileNamedMatch],
                 lower: bool|
     -> Result<Vec<NamedMatch>, ConfigError> {
        list.iter()
            .enumerate()
            .map(|(i, n)| {
                let field = format!("{rf}.match.{kind}[{i}]");
                let name = if lower {
                    header_name(index, &format!("{field}.name"), &n.name)?
                } else {
                    n.name.clone()
                };
                Ok(NamedMatch {
                    name,
                    matcher: string_match(index, &field, &n.exact, &n.prefix, &n.regex, n.present)?,
                    invert: n.invert,
                })
            })
            .collect()
    };
    let matchers = RouteMatchers {
        path,
        method: m.method.map(|x| x.to_ascii_uppercase()),
        headers: named("headers", &m.headers, true)?,
        query: named("query", &m.query, false)?,
    };
    let actions = [
        route.cluster.is_some(),
        route.split.is_some(),
        route.direct_response.is_some(),
        route.redirect.is_some(),
        route.original_destination == Some(true),
    ];
    if actions.iter().filter(|a| **a).count() != 1 {
        return Err(invalid(
            index,
            rf,
            "a route takes exactly one of cluster, split, direct_response, redirect or original_destination: true",
        ));
    }
    let action = if let Some(c) = route.cluster {
        known(format!("{rf}.cluster"), &c)?;
        RouteAction::Cluster(c)
    } else if let Some(split) = route.split {
        if split.is_empty() {
            return Err(ConfigError::Empty {
                at: at(index, &format!("{rf}.split")),
            });
        }
        let mut parts = Vec::new();
        for (i, s) in split.into_iter().enumerate() {
            known(format!("{rf}.split[{i}].cluster"), &s.cluster)?;
            if !(1..=10_000).contains(&s.weight) {
                return Err(ConfigError::OutOfRange {
                    at: at(index, &format!("{rf}.split[{i}].weight")),
                    value: s.weight,
                    expected: "1 to 10000",
                });
            }
            parts.push((s.cluster, s.weight as u32));
        }
        RouteAction::Split(parts)
    } else if let Some(d) = route.direct_response {
        if !(100..=599).contains(&d.status) {
            return Err(ConfigError::OutOfRange {
                at: at(index, &format!("{rf}.direct_response.status")),
                value: d.status,
                expected: "an HTTP status, 100 to 599",
            });
        }
        RouteAction::DirectResponse {
            status: d.status as u16,
            body: d.body.unwrap_or_default(),
        }
    } else if let Some(r) = route.redirect {
        let status = r.status.unwrap_or(301);
        if ![301, 302, 303, 307, 308].contains(&status) {
            return Err(ConfigError::OutOfRange {
                at: at(index, &format!("{rf}.redirect.status")),
                value: status,
                expected: "301, 302, 303, 307 or 308",
            });
        }
        RouteAction::Redirect {
            host: r.host,
            path: r.path,
            status: status as u16,
        }
    } else if route.original_destination == Some(true) {
        RouteAction::OriginalDestination
    } else {
        unreachable!("exactly one action was checked above")
    };
    let rewrite = route.rewrite.unwrap_or_default();
    if rewrite.prefix.is_some() && !matches!(matchers.path, Some(StringMatch::Prefix(_))) {
        return Err(invalid(
            index,
            &format!("{rf}.rewrite.prefix"),
            "a prefix rewrite needs a `match.path.prefix` to replace",
        ));
    }
    let timeout = match &route.timeout {
        Some(t) => Some(duration(index, &format!("{rf}.timeout"), t)?),
        None => None,
    };
    let percent = |field: String, p: f64| -> Result<f64, ConfigError> {
        if (0.0..=100.0).contains(&p) {
            Ok(p)
        } else {
            Err(invalid(
                index,
                &field,
                format!("{p} is not a percentage (0 to 100)"),
            ))
        }
    };
    let mut fault = Fault::default();
    if let Some(f) = route.fault {
        if let Some(d) = f.delay {
            fault.delay_duration = Some(duration(
                index,
                &format!("{rf}.fault.delay.fixed"),
                &d.fixed,
            )?);
            fault.delay = Some((
                d.fixed,
                percent(format!("{rf}.fault.delay.percent"), d.percent)?,
            ));
        }
        if let Some(a) = f.abort {
            if !(200..=599).contains(&a.status) {
                return Err(ConfigError::OutOfRange {
                    at: at(index, &format!("{rf}.fault.abort.status")),
                    value: a.status,
                    expected: "an HTTP status, 200 to 599",
                });
            }
            fault.abort = Some((
                a.status as u16,
                percent(format!("{rf}.fault.abort.percent"), a.percent)?,
            ));
        }
    }
    let rate_limit = match route.rate_limit {
        Some(r) if !(r.requests_per_second > 0.0 && r.requests_per_second.is_finite()) => {
            return Err(invalid(
                index,
                &format!("{rf}.rate_limit.requests_per_second"),
                "must be a positive number",
            ))
        }
        Some(r) => {
            let burst = r.burst.unwrap_or(r.requests_per_second.ceil() as i64);
            if !(1..=1_000_000).contains(&burst) {
                return Err(ConfigError::OutOfRange {
                    at: at(index, &format!("{rf}.rate_limit.burst")),
                    value: burst,
                    expected: "1 to 1000000",
                });
            }
            Some(RateLimit {
                requests_per_second: r.requests_per_second,
                burst: burst as u32,
            })
        }
        None => None,
    };
    let retry = match route.retry {
        None => None,
        Some(r) => Some(retry_policy(index, &format!("{rf}.retry"), r)?),
    };
    Ok(RouteRule {
        retry,
        timeout,
        fault,
        rate_limit,
        name: route.name.unwrap_or_else(|| format!("{host}-{position}")),
        matches: matchers,
        action,
        request_headers: header_ops(
            index,
            &format!("{rf}.request_headers"),
            route.request_headers,
        )?,
        response_headers: header_ops(
            index,
            &format!("{rf}.response_headers"),
            route.response_headers,
        )?,
        rewrite: Rewrite {
            prefix: rewrite.prefix,
            host: rewrite.host,
        },
    })
}

fn retry_policy(index: &LineIndex, field: &str, r: FileRetry) -> Result<RetryPolicy, ConfigError> {
    let attempts = r.attempts.unwrap_or(2);
    if !(1..=10).contains(&attempts) {
        return Err(ConfigError::OutOfRange {
            at: at(index, &format!("{field}.attempts")),
            value: attempts,
            expected: "1 to 10",
        });
    }
    let mut on = Vec::new();
    for (i, cond) in r.on.iter().enumerate() {
        let f = format!("{field}.on[{i}]");
        let parsed = match cond.as_str() {
            "connect-failure" => RetryOn::ConnectFailure,
            "reset" | "refused-stream" => RetryOn::Reset,
            "5xx" => RetryOn::ServerError,
            "gateway-error" => RetryOn::GatewayError,
            other => {
                if let Some(code) = other.strip_prefix("grpc-") {
                    let code = match code {
                        "cancelled" => 1,
                        "deadline-exceeded" => 4,
                        "resource-exhausted" => 8,
                        "internal" => 13,
                        "unavailable" => 14,
                        _ => return Err(invalid(index, &f, format!("'{other}' is not a gRPC status this proxy retries on (grpc-cancelled, grpc-deadline-exceeded, grpc-resource-exhausted, grpc-internal, grpc-unavailable)"))),
                    };
                    RetryOn::Grpc(code)
                } else {
                    match other.parse::<u16>() {
                        Ok(code) if (500..=599).contains(&code) || code == 429 => RetryOn::Status(code),
                        _ => return Err(invalid(index, &f, format!("'{other}' is not a retry condition (connect-failure, reset, 5xx, gateway-error, a status like 503, grpc-unavailable)"))),
                    }
                }
            }
        };
        on.push(parsed);
    }
    if on.is_empty() {
        return Err(ConfigError::Empty {
            at: at(index, &format!("{field}.on")),
        });
    }
    let max_body = r.max_body.unwrap_or(64 * 1024);
    if !(0..=16 * 1024 * 1024).contains(&max_body) {
        return Err(ConfigError::OutOfRange {
            at: at(index, &format!("{field}.max_body")),
            value: max_body,
            expected: "0 to 16777216 bytes",
        });
    }
    Ok(RetryPolicy {
        attempts: attempts as u32,
        on,
        per_try_timeout: match &r.per_try_timeout {
            Some(t) => Some(duration(index, &format!("{field}.per_try_timeout"), t)?),
            None => None,
        },
        backoff_base: match &r.backoff_base {
            Some(t) => duration(index, &format!("{field}.backoff_base"), t)?,
            None => std::time::Duration::from_millis(25),
        },
        backoff_max: match &r.backoff_max {
            Some(t) => duration(index, &format!("{field}.backoff_max"), t)?,
            None => std::time::Duration::from_millis(250),
        },
        max_body: max_body as usize,
    })
}
