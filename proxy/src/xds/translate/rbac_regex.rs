//! The `safe_regex` identity matchers istiod writes into RBAC principals,
//! recognised by their exact shape and turned into strait's identity
//! patterns. strait has no regex engine on its authorization path, and
//! guessing at an arbitrary regex could open a port wider than asked, so
//! only these shapes are taken (istiod's `pilot/pkg/security/authz/model`):
//!
//! - `.+` (or `.*`), `principals: ["*"]`: any mTLS identity.
//! - `.*/ns/<namespace>/.*`, `namespaces: [<namespace>]`: the identities
//!   of that namespace **under the listener's trust domain**, as the
//!   prefix `spiffe://<trust domain>/ns/<namespace>/`. The namespace must
//!   be a plain DNS label (`foo*` in the policy gives `foo.*`: refused).
//!   The regex alone would also admit `/ns/foo/` anywhere in an identity
//!   of any trust domain; the translation keeps Istio's identity shape
//!   (`spiffe://<td>/ns/<ns>/sa/<sa>`) and is never wider than the regex.
//! - `spiffe://.*<literal>`, `principals: ["*<literal>"]`: identities
//!   starting with `spiffe://` and ending with the literal (metacharacters
//!   escaped, as Go's `regexp.QuoteMeta` writes them).
//!
//! Anything else (`serviceAccounts`' `spiffe://.+/ns/..(/.+)?`, a
//! namespace with a wildcard, `notTrustDomains`' `[^/]*`) is refused with
//! its field.

use super::rbac::Who;
use strait_config::IdentityMatch;

/// The trust domain a namespace rule is resolved under: the one the
/// listener's TLS contexts accept clients from (istiod's SAN prefix
/// matcher `spiffe://<trust domain>/`). Taken from the listener itself,
/// not the workload's own SDS certificate, so the translation does not
/// depend on which resource arrived first and a certificate rotation
/// cannot silently change who a policy admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustDomain {
    Known(String),
    /// The listener has no mTLS chain: no client proves an identity, so
    /// an identity rule admits nobody whatever the trust domain.
    NoMtls,
    /// Why it cannot be told (for the refusal).
    Unknown(String),
}

impl TrustDomain {
    /// The trust domain a SAN pattern names, if it is a trust domain
    /// prefix (`spiffe://cluster.local/`).
    pub fn of_san(san: Option<&IdentityMatch>) -> Option<String> {
        match san {
            Some(IdentityMatch::Prefix(p)) => p
                .strip_prefix("spiffe://")
                .and_then(|rest| rest.strip_suffix('/'))
                .filter(|td| !td.is_empty() && !td.contains(['/', '*']))
                .map(str::to_string),
            _ => None,
        }
    }
}

/// Who `regex` admits, or why it is refused.
pub fn principal(regex: &str, td: &TrustDomain) -> Result<Who, String> {
    if regex == ".+" || regex == ".*" {
        return Ok(Who::Authenticated);
    }
    if let Some(ns) = namespace(regex) {
        return match td {
            TrustDomain::Known(td) => Ok(Who::Ids(vec![IdentityMatch::Prefix(format!(
                "spiffe://{td}/ns/{ns}/"
            ))])),
            TrustDomain::NoMtls => Ok(Who::Nobody),
            TrustDomain::Unknown(why) => Err(format!(
                "namespace '{ns}' needs the trust domain its identities are under, from the TLS context's SAN prefix (spiffe://<trust domain>/): {why}"
            )),
        };
    }
    if let Some(suffix) = regex.strip_prefix("spiffe://.*").and_then(literal) {
        if !suffix.contains('*') {
            return Ok(Who::Ids(vec![if suffix.is_empty() {
                IdentityMatch::Prefix("spiffe://".into())
            } else {
                IdentityMatch::PrefixSuffix {
                    prefix: "spiffe://".into(),
                    suffix,
                }
            }]));
        }
    }
    Err(format!(
        "'{regex}' is not supported: regexes are translated only in the shapes istiod writes for principals (.+, .*/ns/<namespace>/.*, spiffe://.*<suffix>)"
    ))
}

/// The namespace of istiod's `.*/ns/<namespace>/.*`, if it is a DNS label.
fn namespace(regex: &str) -> Option<&str> {
    let ns = regex.strip_prefix(".*/ns/")?.strip_suffix("/.*")?;
    let label = ns.len() <= 63
        && ns.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !ns.starts_with('-')
        && !ns.ends_with('-');
    (!ns.is_empty() && label).then_some(ns)
}

/// The text a regex matches when it is a literal with its metacharacters
/// escaped (Go's `regexp.QuoteMeta`); `None` for anything else.
fn literal(regex: &str) -> Option<String> {
    const META: &str = r"\.+*?()|[]{}^$";
    let mut out = String::with_capacity(regex.len());
    let mut chars = regex.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                // RE2: an escaped punctuation character is itself.
                Some(e) if e.is_ascii_punctuation() => out.push(e),
                _ => return None,
            },
            c if META.contains(c) => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::Known("cluster.local".into())
    }

    #[test]
    fn namespaces_become_a_prefix_under_the_trust_domain() {
        assert_eq!(
            principal(".*/ns/foo-1/.*", &td()),
            Ok(Who::Ids(vec![IdentityMatch::Prefix(
                "spiffe://cluster.local/ns/foo-1/".into()
            )]))
        );
        assert_eq!(
            principal(".*/ns/foo/.*", &TrustDomain::NoMtls),
            Ok(Who::Nobody)
        );
        let e = principal(".*/ns/foo/.*", &TrustDomain::Unknown("no SAN".into()))
            .expect_err("no trust domain");
        assert!(e.contains("namespace 'foo'") && e.contains("no SAN"), "{e}");
        // Wildcards, escapes and other characters are not a namespace.
        for other in [
            ".*/ns/foo.*/.*",
            ".*/ns/.*/.*",
            ".*/ns/-foo/.*",
            ".*/ns/foo\\.bar/.*",
            ".*/ns//.*",
            "spiffe://.+/ns/foo/(.+/|)sa/bar(/.+)?",
            "spiffe://bad[^/]*/.*",
        ] {
            assert!(principal(other, &td()).is_err(), "{other}");
        }
    }

    #[test]
    fn principals_with_a_leading_wildcard_keep_both_ends() {
        assert_eq!(
            principal(r"spiffe://.*/ns/foo/sa/rule\[0\]\.x", &td()),
            Ok(Who::Ids(vec![IdentityMatch::PrefixSuffix {
                prefix: "spiffe://".into(),
                suffix: "/ns/foo/sa/rule[0].x".into(),
            }]))
        );
        assert_eq!(
            principal(".+", &TrustDomain::NoMtls),
            Ok(Who::Authenticated)
        );
        // An unescaped metacharacter is not a literal.
        assert!(principal("spiffe://.*/ns/foo/sa/a.b", &td()).is_err());
        assert!(principal(r"spiffe://.*/ns/foo/sa/\d", &td()).is_err());
    }

    #[test]
    fn the_trust_domain_is_a_san_prefix_of_one_trust_domain() {
        let prefix = |p: &str| TrustDomain::of_san(Some(&IdentityMatch::Prefix(p.into())));
        assert_eq!(
            prefix("spiffe://cluster.local/"),
            Some("cluster.local".into())
        );
        assert_eq!(prefix("spiffe://cluster.local/ns/foo/"), None);
        assert_eq!(prefix("spiffe:///"), None);
        assert_eq!(
            TrustDomain::of_san(Some(&IdentityMatch::Exact("spiffe://td/".into()))),
            None
        );
        assert_eq!(TrustDomain::of_san(None), None);
    }
}
