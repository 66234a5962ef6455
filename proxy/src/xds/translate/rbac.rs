//! Envoy's RBAC filters (`envoy.filters.network.rbac`,
//! `envoy.filters.http.rbac`) onto who may reach one destination port.
//! strait authorizes per port by the client's mesh identity, so only
//! what that can express is translated: `action: ALLOW` policies whose
//! principals are identities (`authenticated.principal_name`, or Istio's
//! `filter_state` `io.istio.peer_principal`, as exact / prefix / suffix
//! string matchers, or the regexes istiod writes: [`super::rbac_regex`]),
//! `any`, and `and_ids` / `or_ids` of those, with
//! permissions `any` or a destination port. Anything else (DENY rules,
//! paths, methods, headers, source IPs, `not_id`, conditions) is refused
//! with its field: ignoring a rule would open the port wider than the
//! control plane asked. `shadow_rules` (dry runs) are ignored with a log
//! line; so is `action: LOG`, which decides nothing.

use envoy_types::pb::envoy::config::rbac::v3::{
    permission::Rule, principal::Identifier, rbac::Action, Permission, Policy, Principal, Rbac,
};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::r#type::matcher::v3::filter_state_matcher::Matcher as FilterStateMatch;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use strait_config::{Allow, IdentityMatch};

pub use super::rbac_regex::TrustDomain;

pub const NETWORK_RBAC: &str = "envoy.filters.network.rbac";
pub const NETWORK_RBAC_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";
pub const HTTP_RBAC: &str = "envoy.filters.http.rbac";
pub const HTTP_RBAC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";

/// The filter-state key Istio keeps the mTLS peer's identity under.
const ISTIO_PEER_PRINCIPAL: &str = "io.istio.peer_principal";

/// A refused field (relative to the filter's `typed_config`) and why.
pub type Fail = (String, String);

/// What a translation noticed besides its answer: what was left out
/// because it decides nothing (for the listener's one log line), and the
/// ports that permissions on a chain serving every port name.
#[derive(Debug, Default)]
pub struct Notes {
    pub shadow_rules: usize,
    pub log_rules: usize,
    /// `destination_port` permissions met where the port is not known
    /// (a catch-all chain): each such port needs its own rule.
    pub ports_named: std::collections::BTreeSet<u16>,
}

/// Who a set of principals admits, from narrowest to widest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    Nobody,
    /// mTLS clients whose identity matches one of these.
    Ids(Vec<IdentityMatch>),
    /// Any mTLS client.
    Authenticated,
    /// Anyone, plaintext too.
    Anyone,
}

impl Who {
    /// Admitted by either.
    pub fn union(self, other: Who) -> Who {
        match (self, other) {
            (Who::Anyone, _) | (_, Who::Anyone) => Who::Anyone,
            (Who::Authenticated, _) | (_, Who::Authenticated) => Who::Authenticated,
            (Who::Nobody, x) | (x, Who::Nobody) => x,
            (Who::Ids(mut a), Who::Ids(b)) => {
                for m in b {
                    if !a.contains(&m) {
                        a.push(m);
                    }
                }
                Who::Ids(a)
            }
        }
    }

    /// Admitted by both.
    pub fn intersect(self, other: Who) -> Who {
        match (self, other) {
            (Who::Nobody, _) | (_, Who::Nobody) => Who::Nobody,
            (Who::Anyone, x) | (x, Who::Anyone) => x,
            (Who::Authenticated, x) | (x, Who::Authenticated) => x,
            (Who::Ids(a), Who::Ids(b)) => {
                let mut both = Vec::new();
                for x in &a {
                    for y in &b {
                        for m in intersect_match(x, y) {
                            if !both.contains(&m) {
                                both.push(m);
                            }
                        }
                    }
                }
                if both.is_empty() {
                    Who::Nobody
                } else {
                    Who::Ids(both)
                }
            }
        }
    }

    pub fn allow(self) -> Allow {
        match self {
            Who::Nobody => Allow::Deny,
            Who::Ids(ids) => Allow::Identities(ids),
            Who::Authenticated => Allow::Authenticated,
            Who::Anyone => Allow::Unauthenticated,
        }
    }
}

/// The identities both patterns match, as patterns: exact, since every
/// pattern is a glob with at most one `*` (`prefix*suffix`, either end
/// possibly empty), and two such globs meet in one glob of the longer
/// ends plus the few identities where those ends overlap.
fn intersect_match(a: &IdentityMatch, b: &IdentityMatch) -> Vec<IdentityMatch> {
    use IdentityMatch::Exact;
    let (p1, s1, p2, s2) = match (a, b) {
        (Exact(x), m) | (m, Exact(x)) => {
            return if m.matches(x) {
                vec![Exact(x.clone())]
            } else {
                vec![]
            };
        }
        _ => match (ends(a), ends(b)) {
            (Some((p1, s1)), Some((p2, s2))) => (p1, s1, p2, s2),
            _ => return vec![],
        },
    };
    let (Some(p), Some(s)) = (
        longer(p1, p2, |l, s| l.starts_with(s)),
        longer(s1, s2, |l, s| l.ends_with(s)),
    ) else {
        return vec![];
    };
    let mut out = vec![glob(p, s)];
    // `p*s` needs `p` and `s` side by side; the shortest identity both
    // admit may be shorter, with the two overlapping by `k` bytes.
    let shortest = (p1.len() + s1.len()).max(p2.len() + s2.len());
    for k in 1..=(p.len() + s.len()).saturating_sub(shortest) {
        if s.is_char_boundary(k) && p.ends_with(&s[..k]) {
            out.push(Exact(format!("{p}{}", &s[k..])));
        }
    }
    out
}

/// A non-exact pattern's two ends.
fn ends(m: &IdentityMatch) -> Option<(&str, &str)> {
    match m {
        IdentityMatch::Exact(_) => None,
        IdentityMatch::Prefix(p) => Some((p, "")),
        IdentityMatch::Suffix(s) => Some(("", s)),
        IdentityMatch::PrefixSuffix { prefix, suffix } => Some((prefix, suffix)),
    }
}

/// The pattern for identities starting with `prefix` and ending, after
/// it, with `suffix`.
fn glob(prefix: &str, suffix: &str) -> IdentityMatch {
    match (prefix, suffix) {
        (p, "") => IdentityMatch::Prefix(p.into()),
        ("", s) => IdentityMatch::Suffix(s.into()),
        (p, s) => IdentityMatch::PrefixSuffix {
            prefix: p.into(),
            suffix: s.into(),
        },
    }
}

/// The longer of two patterns when it extends the shorter.
fn longer<'a>(a: &'a str, b: &'a str, extends: impl Fn(&str, &str) -> bool) -> Option<&'a str> {
    if extends(a, b) {
        Some(a)
    } else if extends(b, a) {
        Some(b)
    } else {
        None
    }
}

/// A network RBAC filter's config; `None`: it constrains nothing.
pub fn network_filter(
    any: &Any,
    port: Option<u16>,
    td: &TrustDomain,
    notes: &mut Notes,
) -> Result<Option<Who>, Fail> {
    let rbac = NetworkRbac::decode(any.value.as_slice())
        .map_err(|e| (String::new(), format!("not a valid network RBAC: {e}")))?;
    let shadow = rbac.shadow_rules.is_some() || rbac.shadow_matcher.is_some();
    filter(
        rbac.rules.as_ref(),
        rbac.matcher.is_some(),
        shadow,
        port,
        td,
        notes,
    )
}

/// An HTTP RBAC filter's config; `None`: it constrains nothing.
pub fn http_filter(
    any: &Any,
    port: Option<u16>,
    td: &TrustDomain,
    notes: &mut Notes,
) -> Result<Option<Who>, Fail> {
    let rbac = HttpRbac::decode(any.value.as_slice())
        .map_err(|e| (String::new(), format!("not a valid HTTP RBAC: {e}")))?;
    let shadow = rbac.shadow_rules.is_some() || rbac.shadow_matcher.is_some();
    filter(
        rbac.rules.as_ref(),
        rbac.matcher.is_some(),
        shadow,
        port,
        td,
        notes,
    )
}

/// What both filters share: their `rules` (the `matcher` API refused,
/// shadow rules noted and left out).
fn filter(
    rules_of: Option<&Rbac>,
    matcher: bool,
    shadow: bool,
    port: Option<u16>,
    td: &TrustDomain,
    notes: &mut Notes,
) -> Result<Option<Who>, Fail> {
    if matcher {
        return Err(unsupported_matcher());
    }
    if shadow {
        // A dry run: it decides nothing.
        notes.shadow_rules += 1;
    }
    rules_of.map_or(Ok(None), |r| rules(r, port, td, notes))
}

fn unsupported_matcher() -> Fail {
    (
        "matcher".into(),
        "the matcher API is not supported: use rules".into(),
    )
}

/// `rules` for a chain serving `port` (`None`: every port).
fn rules(
    r: &Rbac,
    port: Option<u16>,
    td: &TrustDomain,
    notes: &mut Notes,
) -> Result<Option<Who>, Fail> {
    // Policies are a map: walk them by name so errors are stable.
    let mut policies: Vec<(&String, &Policy)> = r.policies.iter().collect();
    policies.sort_by_key(|(name, _)| *name);
    match Action::try_from(r.action) {
        Ok(Action::Allow) => {
            // ALLOW with no policy matching denies: start from nobody.
            let mut who = Who::Nobody;
            for (name, p) in policies {
                let field = format!("rules.policies['{name}']");
                who = who.union(policy(p, port, td, &field, notes)?);
            }
            Ok(Some(who))
        }
        Ok(Action::Deny) if policies.is_empty() => Ok(None),
        Ok(Action::Deny) => Err((
            "rules.action".into(),
            "DENY policies are not supported: strait's policy lists who is allowed on a port (express it as ALLOW)".into(),
        )),
        Ok(Action::Log) => {
            notes.log_rules += 1;
            Ok(None)
        }
        Err(_) => Err((
            "rules.action".into(),
            format!("{} is not an RBAC action", r.action),
        )),
    }
}

/// Who one policy admits on `port`: its principals if a permission
/// matches there, else nobody. Every rule is checked, matching or not.
fn policy(
    p: &Policy,
    port: Option<u16>,
    td: &TrustDomain,
    field: &str,
    notes: &mut Notes,
) -> Result<Who, Fail> {
    if p.condition.is_some() || p.checked_condition.is_some() {
        return Err((
            format!("{field}.condition"),
            "CEL conditions are not supported".into(),
        ));
    }
    if p.permissions.is_empty() {
        return Err((
            format!("{field}.permissions"),
            "a policy needs a permission (any: true for all)".into(),
        ));
    }
    if p.principals.is_empty() {
        return Err((
            format!("{field}.principals"),
            "a policy needs a principal (any: true for all)".into(),
        ));
    }
    let mut matches = false;
    for (i, perm) in p.permissions.iter().enumerate() {
        matches |= permission(perm, port, &format!("{field}.permissions[{i}]"), notes)?;
    }
    let mut who = Who::Nobody;
    for (i, id) in p.principals.iter().enumerate() {
        who = who.union(principal(id, td, &format!("{field}.principals[{i}]"))?);
    }
    Ok(if matches { who } else { Who::Nobody })
}

/// Whether a permission holds for every connection to `port`; `None`:
/// a port no `destination_port` permission names (they are noted, so
/// the caller gives each its own rule).
fn permission(
    p: &Permission,
    port: Option<u16>,
    field: &str,
    notes: &mut Notes,
) -> Result<bool, Fail> {
    let refuse = |sub: &str, why: &str| Err((format!("{field}.{sub}"), why.to_string()));
    let per_port = "strait authorizes whole destination ports by identity";
    match &p.rule {
        Some(Rule::Any(any)) => Ok(*any),
        Some(Rule::AndRules(set)) => {
            let mut all = true;
            for (i, r) in set.rules.iter().enumerate() {
                all &= permission(r, port, &format!("{field}.and_rules.rules[{i}]"), notes)?;
            }
            Ok(all)
        }
        Some(Rule::OrRules(set)) => {
            let mut one = false;
            for (i, r) in set.rules.iter().enumerate() {
                one |= permission(r, port, &format!("{field}.or_rules.rules[{i}]"), notes)?;
            }
            Ok(one)
        }
        Some(Rule::DestinationPort(p)) => match port {
            Some(port) => Ok(u32::from(port) == *p),
            None => {
                let p = u16::try_from(*p).ok().filter(|p| *p != 0).ok_or((
                    format!("{field}.destination_port"),
                    format!("{p} is not a port"),
                ))?;
                notes.ports_named.insert(p);
                Ok(false)
            }
        },
        Some(Rule::DestinationPortRange(r)) => match port {
            Some(port) => Ok((r.start..r.end).contains(&i32::from(port))),
            None => refuse(
                "destination_port_range",
                "on a chain serving every port (give the chain its destination_port)",
            ),
        },
        Some(Rule::Header(_)) => refuse("header", per_port),
        Some(Rule::UrlPath(_)) => refuse("url_path", per_port),
        Some(Rule::DestinationIp(_)) => refuse("destination_ip", per_port),
        #[allow(deprecated)]
        Some(Rule::Metadata(_)) => refuse("metadata", per_port),
        Some(Rule::NotRule(_)) => refuse("not_rule", per_port),
        Some(Rule::RequestedServerName(_)) => refuse("requested_server_name", per_port),
        Some(Rule::Matcher(_)) => refuse("matcher", per_port),
        Some(Rule::UriTemplate(_)) => refuse("uri_template", per_port),
        Some(Rule::SourcedMetadata(_)) => refuse("sourced_metadata", per_port),
        None => refuse("rule", "empty permission"),
    }
}

/// Who one principal admits.
fn principal(p: &Principal, td: &TrustDomain, field: &str) -> Result<Who, Fail> {
    let refuse = |sub: &str, why: &str| Err((format!("{field}.{sub}"), why.to_string()));
    let by_identity = "strait admits clients by their mTLS identity only";
    match &p.identifier {
        Some(Identifier::Any(true)) => Ok(Who::Anyone),
        Some(Identifier::Any(false)) => Ok(Who::Nobody),
        Some(Identifier::Authenticated(a)) => match &a.principal_name {
            None => Ok(Who::Authenticated),
            Some(m) => string_match(m, td, &format!("{field}.authenticated.principal_name")),
        },
        Some(Identifier::FilterState(f)) if f.key == ISTIO_PEER_PRINCIPAL => match &f.matcher {
            Some(FilterStateMatch::StringMatch(m)) => {
                string_match(m, td, &format!("{field}.filter_state.string_match"))
            }
            _ => refuse("filter_state", "needs a string_match"),
        },
        Some(Identifier::FilterState(f)) => Err((
            format!("{field}.filter_state.key"),
            format!(
                "'{}' is not supported (only {ISTIO_PEER_PRINCIPAL}, the mTLS identity)",
                f.key
            ),
        )),
        Some(Identifier::AndIds(set)) => {
            let mut who = Who::Anyone;
            for (i, id) in set.ids.iter().enumerate() {
                let f = format!("{field}.and_ids.ids[{i}]");
                who = who.intersect(principal(id, td, &f)?);
            }
            Ok(who)
        }
        Some(Identifier::OrIds(set)) => {
            let mut who = Who::Nobody;
            for (i, id) in set.ids.iter().enumerate() {
                who = who.union(principal(id, td, &format!("{field}.or_ids.ids[{i}]"))?);
            }
            Ok(who)
        }
        // Istio's notPrincipals / notNamespaces: admitting all but some
        // is not a list of who is allowed.
        Some(Identifier::NotId(_)) => refuse(
            "not_id",
            "exclusions (notPrincipals, notNamespaces) are not supported: list who is allowed",
        ),
        #[allow(deprecated)]
        Some(Identifier::SourceIp(_)) => refuse("source_ip", by_identity),
        Some(Identifier::DirectRemoteIp(_)) => refuse("direct_remote_ip", by_identity),
        Some(Identifier::RemoteIp(_)) => refuse("remote_ip", by_identity),
        Some(Identifier::Header(_)) => refuse("header", by_identity),
        Some(Identifier::UrlPath(_)) => refuse("url_path", by_identity),
        #[allow(deprecated)]
        Some(Identifier::Metadata(_)) => refuse("metadata", by_identity),
        Some(Identifier::SourcedMetadata(_)) => refuse("sourced_metadata", by_identity),
        Some(Identifier::Custom(_)) => refuse("custom", by_identity),
        None => refuse("identifier", "empty principal"),
    }
}

/// An identity string matcher as strait's pattern.
fn string_match(m: &StringMatcher, td: &TrustDomain, field: &str) -> Result<Who, Fail> {
    if m.ignore_case {
        return Err((
            format!("{field}.ignore_case"),
            "identities compare exactly".into(),
        ));
    }
    let refuse = |what: &str| {
        Err((
            field.to_string(),
            format!("{what} is not supported: exact, prefix or suffix"),
        ))
    };
    let (value, pattern) = match &m.match_pattern {
        Some(MatchPattern::Exact(v)) => (v, IdentityMatch::Exact(v.clone())),
        Some(MatchPattern::Prefix(v)) => (v, IdentityMatch::Prefix(v.clone())),
        Some(MatchPattern::Suffix(v)) => (v, IdentityMatch::Suffix(v.clone())),
        Some(MatchPattern::SafeRegex(r)) => {
            return super::rbac_regex::principal(&r.regex, td)
                .map_err(|why| (format!("{field}.safe_regex.regex"), why))
        }
        Some(MatchPattern::Contains(_)) => return refuse("contains"),
        _ => return refuse("this matcher"),
    };
    // `*` is strait's pattern wildcard: inside a value it would widen it.
    if value.is_empty() || value.contains('*') {
        return Err((
            field.to_string(),
            format!("'{value}': an empty identity or one with '*' cannot be matched exactly"),
        ));
    }
    Ok(Who::Ids(vec![pattern]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every string over a small alphabet up to `len`: enough to meet
    /// every overlap of the patterns below.
    fn strings(len: usize) -> Vec<String> {
        let mut all = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..len {
            last = last
                .iter()
                .flat_map(|s| ["a", "b", "/"].map(|c| format!("{s}{c}")))
                .collect();
            all.extend(last.iter().cloned());
        }
        all
    }

    #[test]
    fn the_intersection_of_two_patterns_admits_exactly_what_both_admit() {
        let patterns: Vec<IdentityMatch> = [
            "a", "a/b", "a*", "a/*", "ab*", "*a", "*/a", "*b/a", "a*a", "a/*b", "ab*ba", "a*/b",
            "/*", "*/",
        ]
        .iter()
        .map(|p| IdentityMatch::parse(p))
        .collect();
        let ids = strings(6);
        for x in &patterns {
            for y in &patterns {
                let both = intersect_match(x, y);
                for id in &ids {
                    assert_eq!(
                        both.iter().any(|m| m.matches(id)),
                        x.matches(id) && y.matches(id),
                        "{x} and {y} on '{id}': {both:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_trust_domain_prefix_and_a_suffix_meet_in_both_ends_and_their_overlap() {
        let who = Who::Ids(vec![IdentityMatch::Prefix("spiffe://td/".into())])
            .intersect(Who::Ids(vec![IdentityMatch::Suffix("/sa/web".into())]));
        assert_eq!(
            who,
            Who::Ids(vec![
                IdentityMatch::parse("spiffe://td/*/sa/web"),
                IdentityMatch::Exact("spiffe://td/sa/web".into()),
            ])
        );
    }
}
