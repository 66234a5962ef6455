//! `routes`: the simple routes, by authority (HTTP), original destination
//! port or address, or TLS server name (SNI, optionally scoped to a port),
//! each to one cluster or a weighted split of clusters (picked per
//! connection; per request for HTTP).

use super::{normalize_authority, Rules};
use crate::error::ConfigError;
use crate::file::FileRoute;
use crate::model::{Route, RouteMatch};
use std::collections::HashSet;

/// `known(field, cluster)` checks that a cluster exists.
pub(super) fn routes(
    rules: &Rules<'_>,
    file: Vec<FileRoute>,
    known: &dyn Fn(&str, &str) -> Result<(), ConfigError>,
) -> Result<Vec<Route>, ConfigError> {
    let mut routes = Vec::with_capacity(file.len());
    let mut authorities = HashSet::new();
    let mut server_names = HashSet::new();
    for (i, r) in file.into_iter().enumerate() {
        let field = format!("routes[{i}]");
        let port = |port: i64| rules.port(&format!("{field}.port"), port, false);
        let matches = match (r.authority, r.port, r.destination, r.server_name) {
            (Some(authority), None, None, None) => {
                let authority = normalize_authority(&authority);
                if !authorities.insert(authority.clone()) {
                    return Err(ConfigError::DuplicateRoute {
                        at: rules.at(&format!("{field}.authority")),
                        value: authority,
                    });
                }
                RouteMatch::Authority(authority)
            }
            (None, Some(p), None, None) => RouteMatch::Port(port(p)?),
            (None, None, Some(destination), None) => {
                match destination.trim().parse::<std::net::SocketAddr>() {
                    Ok(addr) if addr.port() != 0 => RouteMatch::Destination(addr),
                    _ => {
                        return Err(ConfigError::Invalid {
                            at: rules.at(&format!("{field}.destination")),
                            message: format!("'{destination}' is not an IP:port"),
                        })
                    }
                }
            }
            (None, p, None, Some(name)) => {
                let at = || rules.at(&format!("{field}.server_name"));
                let name = server_name(&name)
                    .map_err(|message| ConfigError::Invalid { at: at(), message })?;
                let port = p.map(port).transpose()?;
                if !server_names.insert((name.clone(), port)) {
                    return Err(ConfigError::Invalid {
                        at: at(),
                        message: format!(
                            "server name '{name}'{} is already routed by an earlier route",
                            port.map_or(String::new(), |p| format!(" on port {p}"))
                        ),
                    });
                }
                RouteMatch::ServerName { name, port }
            }
            _ => {
                return Err(ConfigError::RouteMatch {
                    at: rules.at(&field),
                })
            }
        };
        let (cluster, split) = match (r.cluster, r.split) {
            (Some(cluster), None) => {
                known(&format!("{field}.cluster"), &cluster)?;
                (cluster, Vec::new())
            }
            (None, Some(split)) => {
                if matches!(matches, RouteMatch::Authority(_)) {
                    return Err(ConfigError::Invalid {
                        at: rules.at(&format!("{field}.split")),
                        message: "an authority route takes one cluster (split HTTP requests with a virtual host's route)".into(),
                    });
                }
                (
                    first_of(rules, &field, &split)?,
                    weighted(rules, &field, split, known)?,
                )
            }
            _ => {
                return Err(ConfigError::Invalid {
                    at: rules.at(&field),
                    message: "a route takes exactly one of `cluster` or `split`".into(),
                })
            }
        };
        routes.push(Route {
            matches,
            cluster,
            split,
        });
    }
    Ok(routes)
}

fn first_of(
    rules: &Rules<'_>,
    field: &str,
    split: &[crate::file::FileSplit],
) -> Result<String, ConfigError> {
    split
        .first()
        .map(|s| s.cluster.clone())
        .ok_or_else(|| ConfigError::Empty {
            at: rules.at(&format!("{field}.split")),
        })
}

/// A split's (cluster, weight) pairs: known clusters, weights 1 to 10000.
fn weighted(
    rules: &Rules<'_>,
    field: &str,
    split: Vec<crate::file::FileSplit>,
    known: &dyn Fn(&str, &str) -> Result<(), ConfigError>,
) -> Result<Vec<(String, u32)>, ConfigError> {
    let mut parts = Vec::with_capacity(split.len());
    for (i, s) in split.into_iter().enumerate() {
        known(&format!("{field}.split[{i}].cluster"), &s.cluster)?;
        if !(1..=10_000).contains(&s.weight) {
            return Err(ConfigError::OutOfRange {
                at: rules.at(&format!("{field}.split[{i}].weight")),
                value: s.weight,
                expected: "1 to 10000",
            });
        }
        parts.push((s.cluster, s.weight as u32));
    }
    Ok(parts)
}

/// A TLS server name as routes match it: lowercase DNS labels, the first
/// of which may be `*` (any name under the rest, at any depth: Envoy's
/// `server_names` wildcard). The error says what is wrong.
pub fn server_name(name: &str) -> Result<String, String> {
    let lower = name.trim().to_ascii_lowercase();
    let (wildcard, rest) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if rest.is_empty() || rest.len() > 253 || !rest.split('.').all(label_ok) {
        return Err(format!(
            "'{name}' is not a server name (DNS labels, optionally after a leading `*.`)"
        ));
    }
    if wildcard && !rest.contains('.') {
        return Err(format!(
            "'{name}': a wildcard needs at least two labels after `*.` (no wildcard for a whole top-level domain)"
        ));
    }
    Ok(lower)
}

#[cfg(test)]
mod tests {
    use super::server_name;
    use crate::{Config, RouteMatch};

    const CLUSTERS: &str = "clusters:\n  - {name: a, endpoints: [{address: '127.0.0.1:1'}]}\n  - {name: b, endpoints: [{address: '127.0.0.1:2'}]}\n";

    #[test]
    fn server_name_and_split_routes_validate_and_survive_a_dump() {
        let yaml = format!(
            "{CLUSTERS}routes:\n  - {{server_name: API.example.com, port: 443, cluster: a}}\n  - {{server_name: '*.example.com', cluster: b}}\n  - {{port: 9000, split: [{{cluster: a, weight: 80}}, {{cluster: b, weight: 20}}]}}\n"
        );
        let config = Config::from_yaml(&yaml).expect("valid");
        assert_eq!(
            config.routes[0].matches,
            RouteMatch::ServerName {
                name: "api.example.com".into(),
                port: Some(443)
            }
        );
        assert_eq!(config.routes[2].cluster, "a");
        assert_eq!(
            config.routes[2].split,
            vec![("a".to_string(), 80), ("b".to_string(), 20)]
        );
        let dumped = serde_yaml::to_string(&config.to_file()).expect("dump");
        assert_eq!(
            Config::from_yaml(&dumped).expect("dump is valid").routes,
            config.routes
        );
    }

    #[test]
    fn bad_routes_name_their_field_and_line() {
        for (routes, expected) in [
            (
                "  - {server_name: 'a b', cluster: a}",
                "routes[0].server_name: 'a b' is not a server name",
            ),
            (
                "  - {server_name: a.com, cluster: a}\n  - {server_name: A.com, cluster: b}",
                "routes[1].server_name: server name 'a.com' is already routed",
            ),
            (
                "  - {server_name: a.com, destination: '10.0.0.1:443', cluster: a}",
                "routes[0]: a route matches on exactly one of",
            ),
            (
                "  - {port: 9000, cluster: a, split: [{cluster: b, weight: 1}]}",
                "routes[0]: a route takes exactly one of `cluster` or `split`",
            ),
            (
                "  - {authority: web, split: [{cluster: b, weight: 1}]}",
                "routes[0].split: an authority route takes one cluster",
            ),
            (
                "  - {port: 9000, split: [{cluster: c, weight: 1}]}",
                "routes[0].split[0].cluster: cluster 'c' is not defined",
            ),
            (
                "  - {port: 9000, split: [{cluster: a, weight: 0}]}",
                "routes[0].split[0].weight",
            ),
            ("  - {port: 9000, split: []}", "routes[0].split"),
        ] {
            let yaml = format!("{CLUSTERS}routes:\n{routes}\n");
            let e = Config::from_yaml(&yaml).expect_err(routes).to_string();
            assert!(e.contains(expected), "{routes}: {e}");
            assert!(e.contains("(line "), "{routes}: {e}");
        }
    }

    #[test]
    fn server_names_are_lowercase_labels_with_an_optional_leading_wildcard() {
        assert_eq!(
            server_name("API.Example.com").as_deref(),
            Ok("api.example.com")
        );
        assert_eq!(server_name("*.example.com").as_deref(), Ok("*.example.com"));
        for bad in [
            "",
            "*",
            "*.com",
            "a..b",
            "a.*.b",
            "exa mple.com",
            "*example.com",
        ] {
            assert!(server_name(bad).is_err(), "{bad}");
        }
    }
}
