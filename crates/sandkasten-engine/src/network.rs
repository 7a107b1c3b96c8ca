//! The operator's cap on sandboxes' network policies, and the turning of
//! a request (`network` or the v1 `network_mode` on create, the body of
//! `PUT /v1/sessions/{id}/network`) into a [`NetworkPolicy`] within it.
//! A request beyond the cap, or with a malformed entry, is refused whole
//! with a message naming the entry; nothing is changed.

use crate::EngineError;
use sandkasten_runtime::{IpNet, NetEntry, NetworkMode, NetworkPolicy, MAX_ENTRIES};

/// What an operator allows (`network:` in the daemon config) and what a
/// session gets when its request names no network (`defaults.*`).
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// Whether a session may have `mode: full` at all.
    pub allow_full: bool,
    /// Ranges no allow entry may overlap and no sandbox reaches.
    pub deny_always: Vec<IpNet>,
    /// The policy of a session whose request names none.
    pub default: NetworkPolicy,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            allow_full: false,
            deny_always: sandkasten_runtime::default_deny_always(),
            default: NetworkPolicy::none(),
        }
    }
}

/// A request's network, unchecked: entries as the client wrote them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetworkRequest {
    /// `None`: the daemon's default mode.
    pub mode: Option<NetworkMode>,
    pub allow_out: Vec<String>,
    pub deny_out: Vec<String>,
}

impl NetworkRequest {
    /// The request that asks for `policy` again (a fork's children).
    pub fn from_policy(policy: &NetworkPolicy) -> NetworkRequest {
        NetworkRequest {
            mode: Some(policy.mode),
            allow_out: policy.allow_out.iter().map(ToString::to_string).collect(),
            deny_out: policy.deny_out.iter().map(ToString::to_string).collect(),
        }
    }
}

impl NetworkConfig {
    /// The policy of a create: the request's (`network`, or the v1
    /// `network_mode`), else the configured default; checked against the
    /// cap.
    pub(crate) fn for_create(
        &self,
        network: Option<NetworkRequest>,
        v1_mode: Option<NetworkMode>,
    ) -> Result<NetworkPolicy, EngineError> {
        let req = match (network, v1_mode) {
            (Some(_), Some(_)) => {
                return Err(EngineError::InvalidRequest(
                    "give either network or network_mode, not both".into(),
                ))
            }
            (Some(n), None) => n,
            (None, Some(mode)) => NetworkRequest {
                mode: Some(mode),
                ..Default::default()
            },
            (None, None) => return self.check(self.default.clone()),
        };
        self.resolve(req)
    }

    /// Parses and checks a request.
    pub fn resolve(&self, req: NetworkRequest) -> Result<NetworkPolicy, EngineError> {
        let mode = req.mode.unwrap_or(self.default.mode);
        let policy = NetworkPolicy {
            mode,
            allow_out: parse_list("allow_out", &req.allow_out)?,
            deny_out: parse_list("deny_out", &req.deny_out)?,
        };
        self.check(policy)
    }

    /// The configured default policy (`defaults.network_mode`,
    /// `allow_out`, `deny_out`), checked like a request; the error says
    /// what is wrong.
    pub fn resolve_config(
        &self,
        mode: NetworkMode,
        allow_out: &[String],
        deny_out: &[String],
    ) -> Result<NetworkPolicy, String> {
        self.resolve(NetworkRequest {
            mode: Some(mode),
            allow_out: allow_out.to_vec(),
            deny_out: deny_out.to_vec(),
        })
        .map_err(|e| e.to_string())
    }

    /// Checks a policy against the cap.
    pub fn check(&self, policy: NetworkPolicy) -> Result<NetworkPolicy, EngineError> {
        let bad = |m: String| Err(EngineError::InvalidRequest(m));
        if policy.mode == NetworkMode::None {
            if let Some(e) = policy.allow_out.iter().chain(&policy.deny_out).next() {
                return bad(format!(
                    "network entry {e} needs mode full (mode none has no outbound network)"
                ));
            }
            return Ok(policy);
        }
        if !self.allow_full {
            return bad(
                "network mode full is not allowed by this daemon (network.allow_full is false)"
                    .into(),
            );
        }
        for e in &policy.allow_out {
            if let Some(net) = e.net() {
                if let Some(range) = self.deny_always.iter().find(|d| d.overlaps(net)) {
                    return bad(format!(
                        "allow_out entry {e} overlaps {range}, which this daemon always denies \
                         (network.deny_always)"
                    ));
                }
            }
        }
        Ok(policy)
    }
}

fn parse_list(field: &str, entries: &[String]) -> Result<Vec<NetEntry>, EngineError> {
    if entries.len() > MAX_ENTRIES {
        return Err(EngineError::InvalidRequest(format!(
            "{field} has {} entries, at most {MAX_ENTRIES} are allowed",
            entries.len()
        )));
    }
    let mut out: Vec<NetEntry> = Vec::with_capacity(entries.len());
    for s in entries {
        let e = NetEntry::parse(s)
            .map_err(|why| EngineError::InvalidRequest(format!("{field} entry {why}")))?;
        if !out.contains(&e) {
            out.push(e);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap() -> NetworkConfig {
        NetworkConfig {
            allow_full: true,
            ..Default::default()
        }
    }

    fn req(mode: NetworkMode, allow: &[&str], deny: &[&str]) -> NetworkRequest {
        NetworkRequest {
            mode: Some(mode),
            allow_out: allow.iter().map(|s| s.to_string()).collect(),
            deny_out: deny.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn msg(r: Result<NetworkPolicy, EngineError>) -> String {
        match r {
            Err(EngineError::InvalidRequest(m)) => m,
            other => panic!("expected InvalidRequest, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_request_becomes_a_policy() {
        let p = cap()
            .resolve(req(
                NetworkMode::Full,
                &[
                    "pypi.org",
                    "*.github.com",
                    "203.0.113.0/24",
                    "2001:db8::1",
                    "pypi.org",
                ],
                &["203.0.113.9"],
            ))
            .unwrap();
        assert_eq!(p.allow_out.len(), 4, "duplicates are folded");
        assert_eq!(p.deny_out[0].to_string(), "203.0.113.9");
    }

    #[test]
    fn requests_beyond_the_cap_name_the_entry() {
        let m = msg(cap().resolve(req(NetworkMode::Full, &["10.0.0.0/8"], &[])));
        assert!(m.contains("10.0.0.0/8") && m.contains("deny_always"), "{m}");
        let m = msg(cap().resolve(req(NetworkMode::Full, &["169.254.169.254"], &[])));
        assert!(
            m.contains("169.254.169.254") && m.contains("169.254.0.0/16"),
            "{m}"
        );
        let m = msg(cap().resolve(req(NetworkMode::Full, &["0.0.0.0/0"], &[])));
        assert!(
            m.contains("0.0.0.0/0"),
            "a range containing a denied one: {m}"
        );
        let m = msg(cap().resolve(req(NetworkMode::Full, &["fe80::/64"], &[])));
        assert!(m.contains("fe80::/64"), "{m}");
        // Denying what is always denied is fine.
        cap()
            .resolve(req(NetworkMode::Full, &[], &["10.0.0.0/8"]))
            .unwrap();
        let closed = NetworkConfig::default();
        let m = msg(closed.resolve(req(NetworkMode::Full, &[], &[])));
        assert!(m.contains("network.allow_full"), "{m}");
        closed.resolve(req(NetworkMode::None, &[], &[])).unwrap();
    }

    #[test]
    fn an_operator_can_lift_a_range() {
        let lifted = NetworkConfig {
            deny_always: cap()
                .deny_always
                .into_iter()
                .filter(|n| n.to_string() != "10.0.0.0/8")
                .collect(),
            ..cap()
        };
        lifted
            .resolve(req(NetworkMode::Full, &["10.1.0.0/16"], &[]))
            .unwrap();
    }

    #[test]
    fn malformed_lists_are_refused_whole() {
        let m = msg(cap().resolve(req(NetworkMode::Full, &["ok.example", "a.*.b"], &[])));
        assert!(m.starts_with("allow_out entry \"a.*.b\""), "{m}");
        let m = msg(cap().resolve(req(NetworkMode::Full, &[], &["10.0.0.1/8"])));
        assert!(
            m.starts_with("deny_out entry") && m.contains("host bits"),
            "{m}"
        );
        let many: Vec<String> = (0..=MAX_ENTRIES).map(|i| format!("h{i}.example")).collect();
        let m = msg(cap().resolve(NetworkRequest {
            mode: Some(NetworkMode::Full),
            allow_out: many,
            deny_out: vec![],
        }));
        assert!(m.contains("at most 256"), "{m}");
        let m = msg(cap().resolve(req(NetworkMode::None, &["pypi.org"], &[])));
        assert!(m.contains("pypi.org") && m.contains("mode full"), "{m}");
    }

    #[test]
    fn a_create_takes_the_request_the_v1_mode_or_the_default() {
        let c = NetworkConfig {
            default: NetworkPolicy {
                mode: NetworkMode::Full,
                allow_out: vec![NetEntry::parse("pypi.org").unwrap()],
                deny_out: vec![],
            },
            ..cap()
        };
        assert_eq!(c.for_create(None, None).unwrap(), c.default);
        assert_eq!(
            c.for_create(None, Some(NetworkMode::None)).unwrap(),
            NetworkPolicy::none()
        );
        let p = c
            .for_create(
                Some(NetworkRequest {
                    allow_out: vec!["203.0.113.0/24".into()],
                    ..Default::default()
                }),
                None,
            )
            .unwrap();
        assert_eq!(p.mode, NetworkMode::Full, "mode defaults to the daemon's");
        assert!(c
            .for_create(Some(NetworkRequest::default()), Some(NetworkMode::Full))
            .is_err());
    }
}
