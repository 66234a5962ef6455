//! Inbound RBAC principals as istiod writes `source.namespaces` and
//! wildcard `source.principals` (`safe_regex`), resolved under the
//! listener's trust domain, and what stays refused (other regexes,
//! `notNamespaces` / `notPrincipals`). Fixtures from
//! [`super::inbound_tests`].

use super::inbound_tests::{
    any_permission, chain, exact, ids, mtls_context, peer, policy_of, port_chains, refused, rules,
    tls_socket, SLEEP,
};
use envoy_types::pb::envoy::config::listener::v3::FilterChain;
use envoy_types::pb::envoy::config::rbac::v3::{principal, rbac::Action, Principal, Rbac};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher};
use strait_config::{Allow, IdentityMatch};

fn regex(r: &str) -> MatchPattern {
    MatchPattern::SafeRegex(RegexMatcher {
        regex: r.into(),
        ..Default::default()
    })
}

/// An ALLOW rule set as istiod writes `from: source` with these matchers
/// (`namespaces`, `principals`): and_ids of or_ids.
fn allow_source(matchers: Vec<MatchPattern>) -> Rbac {
    let or = ids(
        principal::Identifier::OrIds,
        matchers.into_iter().map(peer).collect(),
    );
    rules(
        Action::Allow,
        vec![any_permission()],
        vec![ids(principal::Identifier::AndIds, vec![or])],
    )
}

/// Where istiod's first source matcher sits in an HTTP chain's RBAC.
const FIRST_SOURCE: &str = "filter_chains[1].filters[1].typed_config.http_filters[1].typed_config.rules.policies['ns[foo]-policy[web]-rule[0]'].principals[0].and_ids.ids[0].or_ids.ids[0].filter_state.string_match";

/// A chain's TLS context with `san` as its SAN matcher (`None`: none).
fn with_san(mut c: FilterChain, san: Option<MatchPattern>) -> FilterChain {
    let mut ctx = mtls_context();
    if let Some(ValidationContextType::CombinedValidationContext(v)) = ctx
        .common_tls_context
        .as_mut()
        .and_then(|c| c.validation_context_type.as_mut())
    {
        #[allow(deprecated)]
        match (san, v.default_validation_context.as_mut()) {
            (Some(san), Some(d)) => d.match_subject_alt_names[0].match_pattern = Some(san),
            _ => v.default_validation_context = None,
        }
    }
    c.transport_socket = tls_socket(&ctx);
    c
}

#[test]
fn namespaces_are_the_trust_domains_identities_of_that_namespace() {
    let foo = || allow_source(vec![regex(".*/ns/foo/.*")]);
    let foo_ids = Allow::Identities(vec![IdentityMatch::Prefix(
        "spiffe://cluster.local/ns/foo/".into(),
    )]);
    // STRICT: the trust domain from the TLS context's SAN prefix.
    let p = policy_of(port_chains(Some(80), true, Some(foo()))).expect("strict");
    assert_eq!(p.ports[&80], foo_ids);
    // PERMISSIVE: the plaintext chains' RBAC resolves the same way.
    let mut both = port_chains(Some(80), true, Some(foo()));
    both.extend(port_chains(Some(80), false, Some(foo())));
    assert_eq!(policy_of(both).expect("permissive").ports[&80], foo_ids);
    // `authenticated.principal_name` (istiod's other form) too, and one
    // of several namespaces.
    let authenticated = Principal {
        identifier: Some(principal::Identifier::Authenticated(
            principal::Authenticated {
                principal_name: Some(StringMatcher {
                    match_pattern: Some(regex(".*/ns/bar-2/.*")),
                    ..Default::default()
                }),
            },
        )),
    };
    let r = rules(
        Action::Allow,
        vec![any_permission()],
        vec![ids(
            principal::Identifier::OrIds,
            vec![authenticated, peer(regex(".*/ns/foo/.*"))],
        )],
    );
    assert_eq!(
        policy_of(vec![chain(Some(80), true, false, Some(r))])
            .expect("two namespaces")
            .ports[&80],
        Allow::Identities(vec![
            IdentityMatch::Prefix("spiffe://cluster.local/ns/bar-2/".into()),
            IdentityMatch::Prefix("spiffe://cluster.local/ns/foo/".into()),
        ])
    );
    // Another trust domain in the SAN prefix is the one used.
    let c = with_san(
        chain(Some(80), true, true, Some(foo())),
        Some(MatchPattern::Prefix("spiffe://prod.example/".into())),
    );
    assert_eq!(
        policy_of(vec![c]).expect("other td").ports[&80],
        Allow::Identities(vec![IdentityMatch::Prefix(
            "spiffe://prod.example/ns/foo/".into()
        )])
    );
    // DISABLE everywhere: nobody proves an identity, whatever the domain.
    let p = policy_of(port_chains(Some(80), false, Some(foo()))).expect("disable");
    assert_eq!(p.ports[&80], Allow::Deny);
}

#[test]
fn a_namespace_without_a_known_trust_domain_is_refused_with_its_field() {
    let foo = || allow_source(vec![regex(".*/ns/foo/.*")]);
    let field = format!("{FIRST_SOURCE}.safe_regex.regex");
    // No SAN matcher: any identity the bundle signs, of any domain.
    let e = refused(vec![with_san(
        chain(Some(80), true, true, Some(foo())),
        None,
    )]);
    assert_eq!(e.field, field, "{e}");
    assert!(
        e.message.contains("namespace 'foo' needs the trust domain")
            && e.message
                .contains("filter_chains[1]'s TLS context has no such SAN matcher"),
        "{e}"
    );
    // A SAN prefix that is not a whole trust domain.
    let c = with_san(
        chain(Some(80), true, true, Some(foo())),
        Some(MatchPattern::Prefix("spiffe://cluster.local/ns/".into())),
    );
    assert_eq!(refused(vec![c]).field, field);
    // Two chains accepting different trust domains.
    let chains = vec![
        chain(Some(80), true, true, Some(foo())),
        with_san(
            chain(Some(81), true, true, None),
            Some(MatchPattern::Prefix("spiffe://other.td/".into())),
        ),
    ];
    let e = refused(chains);
    assert_eq!(e.field, field, "{e}");
    assert!(e.message.contains("different trust domains"), "{e}");
}

#[test]
fn principals_with_wildcards_are_taken_as_istiod_writes_them() {
    // `principals: ["cluster.local/ns/foo/sa/*"]`: a prefix matcher.
    let r = allow_source(vec![MatchPattern::Prefix(
        "spiffe://cluster.local/ns/foo/sa/".into(),
    )]);
    assert_eq!(
        policy_of(port_chains(Some(80), true, Some(r)))
            .expect("prefix")
            .ports[&80],
        Allow::Identities(vec![IdentityMatch::Prefix(
            "spiffe://cluster.local/ns/foo/sa/".into()
        )])
    );
    // `principals: ["*/ns/foo/sa/sleep"]`: istiod keeps the `spiffe://`
    // scheme, so a regex, not a suffix matcher. Under the trust domain
    // prefix: the trust domain's own identity, and longer paths ending
    // the same way (as the regex admits them).
    let r = allow_source(vec![regex("spiffe://.*/ns/foo/sa/sleep")]);
    assert_eq!(
        policy_of(port_chains(Some(80), true, Some(r)))
            .expect("leading wildcard")
            .ports[&80],
        Allow::Identities(vec![
            IdentityMatch::PrefixSuffix {
                prefix: "spiffe://cluster.local/".into(),
                suffix: "/ns/foo/sa/sleep".into()
            },
            exact(SLEEP),
        ])
    );
    // `principals: ["*"]`.
    let r = allow_source(vec![regex(".+")]);
    assert_eq!(
        policy_of(port_chains(Some(80), true, Some(r)))
            .expect("any")
            .ports[&80],
        Allow::Identities(vec![IdentityMatch::Prefix(
            "spiffe://cluster.local/".into()
        )])
    );
}

#[test]
fn other_regexes_and_exclusions_are_refused_with_their_field() {
    for other in [
        // `namespaces: ["foo*"]`
        ".*/ns/foo.*/.*",
        // `serviceAccounts: ["foo/sleep"]`
        r"spiffe://.+/ns/foo/(.+/|)sa/sleep(/.+)?",
        // `notTrustDomains: ["bad*"]`-style
        "spiffe://bad[^/]*/.*",
        "spiffe://.*/ns/foo/sa/a.b",
    ] {
        let e = refused(port_chains(
            Some(80),
            true,
            Some(allow_source(vec![regex(other)])),
        ));
        assert_eq!(e.field, format!("{FIRST_SOURCE}.safe_regex.regex"), "{e}");
        assert!(e.message.contains("is not supported"), "{e}");
    }
    // `notNamespaces: [bar]`: and_ids of a not_id, as istiod writes it.
    let not = Principal {
        identifier: Some(principal::Identifier::NotId(Box::new(ids(
            principal::Identifier::OrIds,
            vec![peer(regex(".*/ns/bar/.*"))],
        )))),
    };
    let r = rules(
        Action::Allow,
        vec![any_permission()],
        vec![ids(principal::Identifier::AndIds, vec![not])],
    );
    let e = refused(vec![chain(Some(80), true, false, Some(r))]);
    assert_eq!(
        e.field,
        "filter_chains[1].filters[1].typed_config.rules.policies['ns[foo]-policy[web]-rule[0]'].principals[0].and_ids.ids[0].not_id",
        "{e}"
    );
    assert!(e.message.contains("notNamespaces"), "{e}");
}
