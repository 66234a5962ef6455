//! L7 routing for outbound HTTP: virtual hosts chosen by authority (exact,
//! then the longest `*.suffix`, then the longest `prefix.*`, then `*`;
//! port ignored), and within one, the first route whose path, method,
//! header and query conditions all hold. Compiled once per config
//! snapshot (regexes included), so matching allocates nothing.

use crate::balance::WeightedRoundRobin;
use crate::route::{Clusters, RouteTarget};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request};
use regex::Regex;
use std::collections::HashMap;
use std::sync::Arc;
use strait_config::{HeaderOps, NamedMatch, RouteAction, StringMatch, VirtualHost};

/// Every virtual host of a snapshot, indexed for lookup.
#[derive(Debug, Default)]
pub struct VirtualHosts {
    exact: HashMap<String, usize>,
    /// `*.example.com` as `.example.com`, longest first.
    suffixes: Vec<(String, usize)>,
    /// `example.*` as `example.`, longest first.
    prefixes: Vec<(String, usize)>,
    any: Option<usize>,
    hosts: Vec<Vec<Arc<Route>>>,
    /// Each host's name, for route explain.
    names: Vec<Arc<str>>,
}

/// How an authority picked its virtual host (for route explain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainMatch<'a> {
    Exact,
    /// `*.suffix`; holds the suffix with its leading dot.
    Suffix(&'a str),
    /// `prefix.*`; holds the prefix with its trailing dot.
    Prefix(&'a str),
    Any,
}

/// The first condition of a route that a request fails (for route
/// explain; the data path only asks whether there is one).
#[derive(Debug, Clone, Copy)]
pub enum Mismatch<'a> {
    Path(&'a Matcher),
    Method(&'a http::Method),
    /// (name, condition, inverted)
    Header(&'a HeaderName, &'a Matcher, bool),
    Query(&'a str, &'a Matcher, bool),
}

impl std::fmt::Display for Mismatch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // An inverted condition fails when the value does match.
        let condition = |invert: bool, m: &Matcher| {
            if invert {
                format!("is {m} (the route requires it not to be)")
            } else {
                format!("is not {m}")
            }
        };
        match self {
            Mismatch::Path(m) => write!(f, "path is not {m}"),
            Mismatch::Method(m) => write!(f, "method is not {m}"),
            Mismatch::Header(name, m, invert) => {
                write!(f, "header {name} {}", condition(*invert, m))
            }
            Mismatch::Query(name, m, invert) => {
                write!(f, "query parameter {name} {}", condition(*invert, m))
            }
        }
    }
}

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    /// The `route` metric label.
    pub name: Arc<str>,
    path: Option<Matcher>,
    method: Option<http::Method>,
    headers: Vec<(HeaderName, Matcher, bool)>,
    query: Vec<(String, Matcher, bool)>,
    pub action: Action,
    request_headers: Ops,
    response_headers: Ops,
    /// (matched prefix, replacement).
    rewrite_prefix: Option<(String, String)>,
    rewrite_host: Option<String>,
    /// Time to response headers, overriding the cluster's.
    pub timeout: Option<std::time::Duration>,
    pub retry: Option<Arc<strait_config::RetryPolicy>>,
    /// (delay, fraction of requests).
    fault_delay: Option<(std::time::Duration, f64)>,
    /// (status, fraction of requests).
    fault_abort: Option<(http::StatusCode, f64)>,
    rate_limit: Option<TokenBucket>,
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    burst: f64,
    state: std::sync::Mutex<(f64, std::time::Instant)>,
}

impl TokenBucket {
    fn new(rate: f64, burst: u32) -> TokenBucket {
        TokenBucket {
            rate,
            burst: f64::from(burst),
            state: std::sync::Mutex::new((f64::from(burst), std::time::Instant::now())),
        }
    }

    fn try_take(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let refill = now.duration_since(state.1).as_secs_f64() * self.rate;
        state.0 = (state.0 + refill).min(self.burst);
        state.1 = now;
        if state.0 >= 1.0 {
            state.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
pub enum Action {
    /// One cluster, or a weighted split across several.
    Forward(WeightedRoundRobin<RouteTarget>),
    Direct {
        status: http::StatusCode,
        body: Bytes,
    },
    Redirect {
        host: Option<String>,
        path: Option<String>,
        status: http::StatusCode,
    },
    /// To the connection's original destination (ORIGINAL_DST).
    OriginalDestination,
}

/// One compiled string condition.
#[derive(Debug)]
pub enum Matcher {
    Exact(String),
    Prefix(String),
    Regex(Regex),
    Present,
}

impl std::fmt::Display for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Matcher::Exact(s) => write!(f, "exactly {s:?}"),
            Matcher::Prefix(s) => write!(f, "prefixed {s:?}"),
            Matcher::Regex(re) => write!(f, "matching /{}/", re.as_str()),
            Matcher::Present => write!(f, "present"),
        }
    }
}

impl Matcher {
    fn compile(m: &StringMatch) -> Matcher {
        match m {
            StringMatch::Exact(s) => Matcher::Exact(s.clone()),
            StringMatch::Prefix(s) => Matcher::Prefix(s.clone()),
            // Validated by the config crate; anchored to match whole values.
            StringMatch::Regex(r) => match Regex::new(&format!("^(?:{r})$")) {
                Ok(re) => Matcher::Regex(re),
                Err(_) => Matcher::Exact(r.clone()),
            },
            StringMatch::Present => Matcher::Present,
        }
    }

    fn matches(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (_, None) => false,
            (Matcher::Present, Some(_)) => true,
            (Matcher::Exact(e), Some(v)) => e == v,
            (Matcher::Prefix(p), Some(v)) => v.starts_with(p.as_str()),
            (Matcher::Regex(re), Some(v)) => re.is_match(v),
        }
    }
}

#[derive(Debug, Default)]
struct Ops {
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl Ops {
    fn compile(ops: &HeaderOps) -> Ops {
        Ops {
            add: ops
                .add
                .iter()
                .filter_map(|(n, v)| {
                    Some((
                        HeaderName::try_from(n).ok()?,
                        HeaderValue::try_from(v).ok()?,
                    ))
                })
                .collect(),
            remove: ops
                .remove
                .iter()
                .filter_map(|n| HeaderName::try_from(n).ok())
                .collect(),
        }
    }

    fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.add {
            headers.insert(name.clone(), value.clone());
        }
    }
}

impl VirtualHosts {
    /// Compile the `hosts` without a port; `clusters` holds every
    /// cluster of the snapshot.
    pub fn compile(hosts: &[VirtualHost], clusters: &Clusters) -> VirtualHosts {
        Self::compile_port(hosts, clusters, None)
    }

    /// Every port some host is scoped to, with that port's hosts compiled.
    pub fn compile_by_port(
        hosts: &[VirtualHost],
        clusters: &Clusters,
    ) -> HashMap<u16, VirtualHosts> {
        let ports: std::collections::BTreeSet<u16> = hosts.iter().filter_map(|h| h.port).collect();
        ports
            .into_iter()
            .map(|p| (p, Self::compile_port(hosts, clusters, Some(p))))
            .collect()
    }

    /// Compile the hosts of one port scope (`None`: those without a port).
    fn compile_port(hosts: &[VirtualHost], clusters: &Clusters, port: Option<u16>) -> VirtualHosts {
        let mut out = VirtualHosts::default();
        let scoped = hosts.iter().filter(|h| h.port == port);
        for (i, host) in scoped.enumerate() {
            for domain in &host.domains {
                if domain == "*" {
                    out.any = Some(i);
                } else if let Some(suffix) = domain.strip_prefix('*') {
                    out.suffixes.push((suffix.to_string(), i));
                } else if let Some(prefix) = domain.strip_suffix('*') {
                    out.prefixes.push((prefix.to_string(), i));
                } else {
                    out.exact.insert(domain.clone(), i);
                }
            }
            let host_name: Arc<str> = host.name.as_str().into();
            out.names.push(host_name.clone());
            out.hosts.push(
                host.routes
                    .iter()
                    .filter_map(|r| compile_route(r, &host_name, clusters).map(Arc::new))
                    .collect(),
            );
        }
        out.suffixes
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        out.prefixes
            .sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        out
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// The route for a request to `host` (lowercase, no port).
    pub fn find<B>(&self, host: &str, req: &Request<B>) -> Option<&Arc<Route>> {
        let (index, _) = self.host_index(host)?;
        self.hosts
            .get(index)?
            .iter()
            .find(|route| route.mismatch(req).is_none())
    }

    /// The virtual host `host` (lowercase, no port) belongs to, and why.
    pub fn host_index(&self, host: &str) -> Option<(usize, DomainMatch<'_>)> {
        if let Some(i) = self.exact.get(host) {
            return Some((*i, DomainMatch::Exact));
        }
        if let Some((s, i)) = self
            .suffixes
            .iter()
            .find(|(s, _)| host.len() > s.len() && host.ends_with(s.as_str()))
        {
            return Some((*i, DomainMatch::Suffix(s)));
        }
        if let Some((p, i)) = self
            .prefixes
            .iter()
            .find(|(p, _)| host.len() > p.len() && host.starts_with(p.as_str()))
        {
            return Some((*i, DomainMatch::Prefix(p)));
        }
        self.any.map(|i| (i, DomainMatch::Any))
    }

    /// Virtual host `index`'s name and routes, in match order.
    pub fn host(&self, index: usize) -> Option<(&Arc<str>, &[Arc<Route>])> {
        Some((self.names.get(index)?, self.hosts.get(index)?.as_slice()))
    }
}

fn compile_route(
    rule: &strait_config::RouteRule,
    host: &Arc<str>,
    clusters: &Clusters,
) -> Option<Route> {
    let name: Arc<str> = rule.name.as_str().into();
    let target = |cluster: &str| {
        clusters.get(cluster).map(|c| RouteTarget {
            authority: host.clone(),
            route: name.clone(),
            cluster: c.clone(),
        })
    };
    let action = match &rule.action {
        RouteAction::Cluster(c) => Action::Forward(WeightedRoundRobin::new([(target(c)?, 1)])),
        RouteAction::Split(parts) => {
            let weighted: Vec<(RouteTarget, u32)> = parts
                .iter()
                .filter_map(|(c, w)| Some((target(c)?, *w)))
                .collect();
            Action::Forward(WeightedRoundRobin::new(weighted))
        }
        RouteAction::DirectResponse { status, body } => Action::Direct {
            status: http::StatusCode::from_u16(*status).ok()?,
            body: Bytes::from(body.clone()),
        },
        RouteAction::Redirect { host, path, status } => Action::Redirect {
            host: host.clone(),
            path: path.clone(),
            status: http::StatusCode::from_u16(*status).ok()?,
        },
        RouteAction::OriginalDestination => Action::OriginalDestination,
    };
    let named = |list: &[NamedMatch]| -> Vec<(String, Matcher, bool)> {
        list.iter()
            .map(|n| (n.name.clone(), Matcher::compile(&n.matcher), n.invert))
            .collect()
    };
    let rewrite_prefix = match (&rule.rewrite.prefix, &rule.matches.path) {
        (Some(to), Some(StringMatch::Prefix(from))) => Some((from.clone(), to.clone())),
        _ => None,
    };
    Some(Route {
        path: rule.matches.path.as_ref().map(Matcher::compile),
        method: rule
            .matches
            .method
            .as_deref()
            .and_then(|m| http::Method::from_bytes(m.as_bytes()).ok()),
        headers: named(&rule.matches.headers)
            .into_iter()
            .filter_map(|(n, m, inv)| Some((HeaderName::try_from(n).ok()?, m, inv)))
            .collect(),
        query: named(&rule.matches.query),
        action,
        request_headers: Ops::compile(&rule.request_headers),
        response_headers: Ops::compile(&rule.response_headers),
        rewrite_prefix,
        rewrite_host: rule.rewrite.host.clone(),
        timeout: rule.timeout,
        retry: rule.retry.clone().map(Arc::new),
        fault_delay: rule
            .fault
            .delay_duration
            .zip(rule.fault.delay.as_ref().map(|(_, p)| p / 100.0)),
        fault_abort: rule
            .fault
            .abort
            .and_then(|(status, p)| Some((http::StatusCode::from_u16(status).ok()?, p / 100.0))),
        rate_limit: rule
            .rate_limit
            .as_ref()
            .map(|r| TokenBucket::new(r.requests_per_second, r.burst)),
        name,
    })
}

impl Route {
    /// The first of the route's conditions `req` fails, None when all
    /// hold (the route matches).
    pub fn mismatch<B>(&self, req: &Request<B>) -> Option<Mismatch<'_>> {
        if let Some(path) = &self.path {
            if !path.matches(Some(req.uri().path())) {
                return Some(Mismatch::Path(path));
            }
        }
        if let Some(method) = self.method.as_ref().filter(|m| *m != req.method()) {
            return Some(Mismatch::Method(method));
        }
        for (name, matcher, invert) in &self.headers {
            let value = req.headers().get(name).and_then(|v| v.to_str().ok());
            if matcher.matches(value) == *invert {
                return Some(Mismatch::Header(name, matcher, *invert));
            }
        }
        for (name, matcher, invert) in &self.query {
            if matcher.matches(query_param(req.uri().query(), name)) == *invert {
                return Some(Mismatch::Query(name, matcher, *invert));
            }
        }
        None
    }

    /// Header edits and rewrites on the request going upstream.
    pub fn edit_request<B>(&self, req: &mut Request<B>) {
        self.request_headers.apply(req.headers_mut());
        if let Some((from, to)) = &self.rewrite_prefix {
            let pq = req
                .uri()
                .path_and_query()
                .map(|pq| pq.as_str())
                .unwrap_or("/");
            if let Some(rest) = pq.strip_prefix(from.as_str()) {
                let rewritten = format!("{to}{rest}");
                let mut parts = std::mem::take(req.uri_mut()).into_parts();
                parts.path_and_query = rewritten.parse().ok().or(parts.path_and_query);
                if let Ok(uri) = http::Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
        }
        if let Some(host) = &self.rewrite_host {
            if let Ok(value) = HeaderValue::try_from(host.as_str()) {
                req.headers_mut().insert(http::header::HOST, value);
            }
            let mut parts = std::mem::take(req.uri_mut()).into_parts();
            if parts.authority.is_some() {
                parts.authority = host.parse().ok().or(parts.authority);
            }
            if let Ok(uri) = http::Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    }

    /// Whether the route's rate limit lets one more request through.
    pub fn take_token(&self) -> bool {
        self.rate_limit.as_ref().is_none_or(|b| b.try_take())
    }

    /// The status to abort this request with, when the fault picks it.
    pub fn fault_abort(&self) -> Option<http::StatusCode> {
        let (status, share) = self.fault_abort?;
        (fastrand::f64() < share).then_some(status)
    }

    /// How long to delay this request, when the fault picks it.
    pub fn fault_delay(&self) -> Option<std::time::Duration> {
        let (delay, share) = self.fault_delay?;
        (fastrand::f64() < share).then_some(delay)
    }

    /// (delay, share in 0..=1) of the route's fault injection.
    pub fn fault_delay_policy(&self) -> Option<(std::time::Duration, f64)> {
        self.fault_delay
    }

    /// (abort status, share in 0..=1) of the route's fault injection.
    pub fn fault_abort_policy(&self) -> Option<(http::StatusCode, f64)> {
        self.fault_abort
    }

    /// (requests per second, burst) of the route's rate limit.
    pub fn rate_limit_policy(&self) -> Option<(f64, f64)> {
        self.rate_limit.as_ref().map(|b| (b.rate, b.burst))
    }

    /// Header edits on the response going back.
    pub fn edit_response(&self, headers: &mut HeaderMap) {
        self.response_headers.apply(headers);
    }
}

/// The value of query parameter `name` (not percent-decoded), `Some("")`
/// for a bare `name`.
fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// The redirect's Location: its host and path, or the request's own.
pub fn redirect_location<B>(
    req: &Request<B>,
    authority: &str,
    host: &Option<String>,
    path: &Option<String>,
) -> String {
    let host = host.as_deref().unwrap_or(authority);
    let path = match path {
        Some(p) => p.as_str(),
        None => req
            .uri()
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/"),
    };
    format!("http://{host}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Snapshot;

    #[test]
    fn mismatch_names_the_first_failing_condition() {
        let config = strait_config::Config::from_yaml(
            "clusters:\n  - {name: a, endpoints: [{address: '127.0.0.1:1'}]}\nvirtual_hosts:\n  - name: h\n    domains: [\"*\"]\n    routes:\n      - name: r\n        match: {path: {prefix: /app}, method: GET, headers: [{name: user-agent, prefix: Mobile, invert: true}], query: [{name: debug, present: true}]}\n        cluster: a\n",
        )
        .expect("valid");
        let snapshot = Snapshot::new(config);
        let (index, how) = snapshot.vhosts.host_index("any.host").expect("the * host");
        assert_eq!(how, DomainMatch::Any);
        let route = &snapshot.vhosts.host(index).expect("host").1[0];
        let why = |method: &str, uri: &str, agent: &str| {
            let req = Request::builder()
                .method(method)
                .uri(uri)
                .header("user-agent", agent)
                .body(())
                .expect("request");
            route.mismatch(&req).map(|m| m.to_string())
        };
        assert_eq!(
            why("GET", "/x", "curl").as_deref(),
            Some("path is not prefixed \"/app\"")
        );
        assert_eq!(
            why("POST", "/app", "curl").as_deref(),
            Some("method is not GET")
        );
        assert_eq!(
            why("GET", "/app", "Mobile Safari").as_deref(),
            Some("header user-agent is prefixed \"Mobile\" (the route requires it not to be)")
        );
        assert_eq!(
            why("GET", "/app", "curl").as_deref(),
            Some("query parameter debug is not present")
        );
        assert_eq!(why("GET", "/app?debug", "curl"), None);
    }
}
