//! Inbound authorization: whether a client (by its mesh identity, or none
//! for plaintext) may reach a destination port, per the config's policy.
//! HTTP requests to listed health-check paths are always allowed, so the
//! kubelet's probes reach the app without a mesh identity.

use strait_config::{Allow, Policy};

/// Why a client was refused, for the log and the 403's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied(pub String);

/// Decide for `identity` (None = no mTLS) at `port`.
pub fn check(policy: &Policy, port: u16, identity: Option<&str>) -> Result<(), Denied> {
    match (policy.for_port(port), identity) {
        (Allow::Unauthenticated, _) => Ok(()),
        (Allow::Deny, _) => Err(Denied(format!("port {port} denies all traffic"))),
        (Allow::Authenticated | Allow::Identities(_), None) => Err(Denied(format!(
            "port {port} requires mTLS and the client presented no mesh identity"
        ))),
        (Allow::Authenticated, Some(_)) => Ok(()),
        (Allow::Identities(allowed), Some(id)) => {
            if allowed.iter().any(|m| m.matches(id)) {
                Ok(())
            } else {
                Err(Denied(format!(
                    "identity '{id}' is not allowed on port {port}"
                )))
            }
        }
    }
}

/// Whether `path` is one of the policy's unauthenticated paths (exact, or
/// a prefix when the entry ends in `*`).
pub fn is_unauthenticated_path(policy: &Policy, path: &str) -> bool {
    policy
        .unauthenticated_paths
        .iter()
        .any(|p| match p.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => path == p,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_config::IdentityMatch;

    fn policy(default: Allow) -> Policy {
        Policy {
            default,
            ports: Default::default(),
            unauthenticated_paths: vec!["/healthz".into(), "/probe/*".into()],
        }
    }

    #[test]
    fn decides_by_identity() {
        let ids = Allow::Identities(vec![
            IdentityMatch::parse("spiffe://td/ns/prod/sa/web"),
            IdentityMatch::parse("spiffe://td/ns/ops/*"),
            IdentityMatch::parse("*.prod.svc"),
            IdentityMatch::parse("spiffe://td/*/sa/batch"),
        ]);
        let p = policy(ids);
        assert!(check(&p, 80, Some("spiffe://td/ns/prod/sa/web")).is_ok());
        assert!(check(&p, 80, Some("spiffe://td/ns/ops/sa/any")).is_ok());
        assert!(check(&p, 80, Some("api.prod.svc")).is_ok());
        assert!(check(&p, 80, Some("spiffe://td/ns/dev/sa/web")).is_err());
        // Both ends, not overlapping.
        assert!(check(&p, 80, Some("spiffe://td/ns/dev/sa/batch")).is_ok());
        assert!(check(&p, 80, Some("spiffe://other/ns/dev/sa/batch")).is_err());
        assert!(check(&p, 80, Some("spiffe://td/sa/batch")).is_err());
        assert!(check(&p, 80, None).is_err());
        assert!(check(&policy(Allow::Authenticated), 80, None).is_err());
        assert!(check(&policy(Allow::Unauthenticated), 80, None).is_ok());
        assert!(check(&policy(Allow::Deny), 80, Some("x")).is_err());
        assert!(is_unauthenticated_path(&p, "/healthz"));
        assert!(is_unauthenticated_path(&p, "/probe/ready"));
        assert!(!is_unauthenticated_path(&p, "/healthz/x"));
    }
}
