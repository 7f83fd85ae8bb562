//! Node and cluster identity.
//!
//! An agent's identity is a SPIFFE-style URI SAN in its certificate:
//! `spiffe://<trust-domain>/cluster/<CLUSTER>/node/<NODE>`. The relay trusts nothing an
//! agent says about itself; it reads these IDs from the verified certificate only.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// The trust domain used when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "tether.local";

/// Longest node or cluster ID (a DNS label's length, so IDs can become host names).
pub const MAX_ID_LEN: usize = 63;

/// Why a string is not a valid ID or identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("ID is empty (expected 1-{MAX_ID_LEN} characters of a-z, 0-9, '-')")]
    Empty,
    #[error("ID {0:?} is longer than {MAX_ID_LEN} characters")]
    TooLong(String),
    #[error("ID {id:?} contains {ch:?}; only a-z, 0-9 and '-' are allowed")]
    BadChar { id: String, ch: char },
    #[error("trust domain {0:?} is not valid (lower-case DNS name expected)")]
    BadTrustDomain(String),
    #[error("{0:?} is not a Tether identity URI (expected spiffe://<trust-domain>/cluster/<cluster>/node/<node>)")]
    BadUri(String),
}

/// A validated node or cluster ID: 1–63 characters of `a-z 0-9 -`.
///
/// Cheap to clone (shared string) because the relay hands IDs to every request's span.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(Arc<str>);

impl Id {
    /// Validates `s` as an ID.
    pub fn new(s: &str) -> Result<Self, IdError> {
        validate_id(s)?;
        Ok(Id(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks `s` as an ID without building one (the relay checks a header per request).
pub fn validate_id(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong(s.to_owned()));
    }
    if let Some(ch) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(IdError::BadChar {
            id: s.to_owned(),
            ch,
        });
    }
    Ok(())
}

impl FromStr for Id {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Id::new(s)
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// Maps keyed by `Id` can be searched with a plain `&str` (hash and equality are the
/// string's).
impl std::borrow::Borrow<str> for Id {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Id {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for Id {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Id::new(&s).map_err(serde::de::Error::custom)
    }
}

/// Checks a trust domain: a non-empty lower-case DNS name.
pub fn validate_trust_domain(td: &str) -> Result<(), IdError> {
    let ok = !td.is_empty()
        && td.len() <= 253
        && td.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        });
    if ok {
        Ok(())
    } else {
        Err(IdError::BadTrustDomain(td.to_owned()))
    }
}

/// An agent's identity: which node of which cluster, in which trust domain.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Identity {
    pub trust_domain: String,
    pub cluster: Id,
    pub node: Id,
}

impl Identity {
    pub fn new(trust_domain: &str, cluster: Id, node: Id) -> Result<Self, IdError> {
        validate_trust_domain(trust_domain)?;
        Ok(Identity {
            trust_domain: trust_domain.to_owned(),
            cluster,
            node,
        })
    }

    /// The URI SAN that carries this identity in a certificate.
    pub fn to_uri(&self) -> String {
        format!(
            "spiffe://{}/cluster/{}/node/{}",
            self.trust_domain, self.cluster, self.node
        )
    }

    /// Parses `spiffe://<trust-domain>/cluster/<cluster>/node/<node>`.
    pub fn from_uri(uri: &str) -> Result<Self, IdError> {
        let bad = || IdError::BadUri(uri.to_owned());
        let rest = uri.strip_prefix("spiffe://").ok_or_else(bad)?;
        let mut parts = rest.split('/');
        let (Some(td), Some("cluster"), Some(cluster), Some("node"), Some(node), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad());
        };
        Identity::new(td, Id::new(cluster)?, Id::new(node)?)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_uri())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_only_lowercase_digits_and_dash() {
        assert!(Id::new("node-a").is_ok());
        assert!(Id::new("0").is_ok());
        assert!(Id::new(&"a".repeat(63)).is_ok());
        assert_eq!(Id::new(""), Err(IdError::Empty));
        assert!(matches!(Id::new(&"a".repeat(64)), Err(IdError::TooLong(_))));
        assert!(matches!(
            Id::new("Node"),
            Err(IdError::BadChar { ch: 'N', .. })
        ));
        assert!(matches!(
            Id::new("a_b"),
            Err(IdError::BadChar { ch: '_', .. })
        ));
        assert!(matches!(
            Id::new("a/b"),
            Err(IdError::BadChar { ch: '/', .. })
        ));
        assert!(matches!(Id::new("é"), Err(IdError::BadChar { .. })));
    }

    #[test]
    fn identity_round_trips_through_its_uri() {
        let id = Identity::new(
            "tether.local",
            Id::new("west").unwrap(),
            Id::new("n1").unwrap(),
        )
        .unwrap();
        assert_eq!(id.to_uri(), "spiffe://tether.local/cluster/west/node/n1");
        assert_eq!(Identity::from_uri(&id.to_uri()).unwrap(), id);
    }

    #[test]
    fn malformed_identity_uris_are_refused() {
        for uri in [
            "https://tether.local/cluster/a/node/b",
            "spiffe://tether.local/cluster/a",
            "spiffe://tether.local/node/b/cluster/a",
            "spiffe://tether.local/cluster/a/node/b/extra",
            "spiffe://tether.local/cluster/A/node/b",
            "spiffe:///cluster/a/node/b",
            "spiffe://Tether.local/cluster/a/node/b",
        ] {
            assert!(Identity::from_uri(uri).is_err(), "{uri} should be refused");
        }
    }
}
