//! Enrollment: how an agent gets its identity without its private key ever leaving the
//! host, and how it renews it.
//!
//! The operator creates a one-time [`Token`] (`tether-certs token create`). The token
//! names a record in the CA's token store (node, cluster, expiry, hash of the secret) and
//! pins the CA by its SHA-256 fingerprint, so the agent can trust the relay knowing
//! nothing but its address and the token. The agent makes its key pair locally and sends
//! a CSR with the token over QUIC (ALPN [`ALPN_ENROLL`], on the tunnel port). Renewal uses
//! the same exchange without a token, authenticated by the agent's current certificate.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

/// ALPN of the enrollment exchange (one request, one response, on one stream).
pub const ALPN_ENROLL: &[u8] = b"tether-enroll/1";

/// Largest enrollment message either side accepts.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// Certificates are valid from this long before they are issued, so that peers whose
/// clocks lag by a few minutes accept them at once.
pub const CERT_BACKDATE: Duration = Duration::from_secs(5 * 60);

/// Default lifetime of an agent certificate issued by enrollment.
pub const DEFAULT_AGENT_CERT_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

const TOKEN_PREFIX: &str = "tether1-";
const ID_LEN: usize = 16;
const SECRET_LEN: usize = 32;
const FP_LEN: usize = 32;
const SUM_LEN: usize = 4;

/// SHA-256 of a DER certificate: how a token pins the CA.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed (expected tether1-…; was it copied whole?)")]
    Malformed,
    #[error("token is corrupted (checksum mismatch; was it copied whole?)")]
    Checksum,
}

/// A one-time enrollment token as the agent holds it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub id: [u8; ID_LEN],
    pub secret: [u8; SECRET_LEN],
    pub ca_fingerprint: [u8; FP_LEN],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Token")
            .field("id", &self.id_hex())
            .finish_non_exhaustive()
    }
}

impl Token {
    /// A fresh random token pinned to the CA with `ca_fingerprint`.
    pub fn generate(ca_fingerprint: [u8; 32], random: impl FnOnce(&mut [u8])) -> Token {
        let mut bytes = [0u8; ID_LEN + SECRET_LEN];
        random(&mut bytes);
        let mut id = [0u8; ID_LEN];
        let mut secret = [0u8; SECRET_LEN];
        id.copy_from_slice(&bytes[..ID_LEN]);
        secret.copy_from_slice(&bytes[ID_LEN..]);
        Token {
            id,
            secret,
            ca_fingerprint,
        }
    }

    /// The token's public name (hex), used for its record in the store.
    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }

    /// SHA-256 of the secret, as stored; the store never holds the secret itself.
    pub fn secret_hash_hex(&self) -> String {
        hex::encode(Sha256::digest(self.secret))
    }

    pub fn encode(&self) -> String {
        let mut raw = Vec::with_capacity(ID_LEN + SECRET_LEN + FP_LEN + SUM_LEN);
        raw.extend_from_slice(&self.id);
        raw.extend_from_slice(&self.secret);
        raw.extend_from_slice(&self.ca_fingerprint);
        let sum = Sha256::digest(&raw);
        raw.extend_from_slice(&sum[..SUM_LEN]);
        format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw))
    }

    pub fn decode(s: &str) -> Result<Token, TokenError> {
        let body = s
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(TokenError::Malformed)?;
        let raw = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::Malformed)?;
        if raw.len() != ID_LEN + SECRET_LEN + FP_LEN + SUM_LEN {
            return Err(TokenError::Malformed);
        }
        let (data, sum) = raw.split_at(ID_LEN + SECRET_LEN + FP_LEN);
        if Sha256::digest(data)[..SUM_LEN] != *sum {
            return Err(TokenError::Checksum);
        }
        let mut t = Token {
            id: [0; ID_LEN],
            secret: [0; SECRET_LEN],
            ca_fingerprint: [0; FP_LEN],
        };
        t.id.copy_from_slice(&data[..ID_LEN]);
        t.secret.copy_from_slice(&data[ID_LEN..ID_LEN + SECRET_LEN]);
        t.ca_fingerprint
            .copy_from_slice(&data[ID_LEN + SECRET_LEN..]);
        Ok(t)
    }
}

/// What the token store keeps for each outstanding token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub secret_sha256: String,
    pub node: crate::Id,
    pub cluster: crate::Id,
    pub created_unix: u64,
    pub expires_unix: u64,
}

/// The agent's request: a CSR, with a token for first enrollment or none for renewal
/// (then the connection's client certificate says who is asking).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EnrollRequest {
    pub token: Option<String>,
    pub csr_pem: String,
}

/// Why the relay refused an enrollment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EnrollError {
    /// Neither a token nor a client certificate.
    NoToken,
    /// The token does not decode.
    BadToken,
    /// The token pins another CA.
    WrongCa,
    /// No such token (never created, revoked, or from another store).
    UnknownToken,
    /// The token was already used.
    TokenUsed,
    /// The token expired.
    TokenExpired,
    /// The CSR does not parse or its signature is wrong.
    BadCsr,
    /// The CSR's key is weak or of an unsupported type.
    WeakKey,
    /// The identity is revoked.
    Revoked,
    /// Enrollment is not enabled on this relay.
    Disabled,
    /// Something went wrong on the relay.
    Internal,
}

/// The relay's answer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum EnrollResponse {
    Issued {
        ca_pem: String,
        cert_pem: String,
        identity: String,
    },
    Refused {
        error: EnrollError,
        detail: String,
    },
}

/// The revocation list the relay watches (`revoked.json` in the CA directory).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Revocations {
    /// Nodes that may not connect or enroll with any certificate.
    #[serde(default)]
    pub nodes: Vec<crate::Id>,
    /// Revoked certificate serials (colon-separated hex, as `tether-certs inspect` shows).
    #[serde(default)]
    pub serials: Vec<String>,
}

impl Revocations {
    pub fn is_revoked(&self, node: &crate::Id, serial: &str) -> bool {
        self.nodes.contains(node) || self.serials.iter().any(|s| s.eq_ignore_ascii_case(serial))
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.serials.is_empty()
    }
}

/// When a certificate valid from `not_before` to `not_after` (unix seconds) should be
/// renewed: two thirds into its intended lifetime (which starts [`CERT_BACKDATE`] after
/// `not_before`).
pub fn renew_at_unix(not_before: u64, not_after: u64) -> u64 {
    let issued = not_before + CERT_BACKDATE.as_secs();
    let issued = issued.min(not_after);
    issued + (not_after - issued) * 2 / 3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> Token {
        Token::generate([7; 32], |b| {
            b.iter_mut().enumerate().for_each(|(i, x)| *x = i as u8)
        })
    }

    #[test]
    fn tokens_round_trip() {
        let t = token();
        let s = t.encode();
        assert!(s.starts_with("tether1-"));
        assert_eq!(Token::decode(&s).unwrap(), t);
        assert_eq!(Token::decode(&format!("  {s}\n")).unwrap(), t);
        assert!(!format!("{t:?}").contains(&hex::encode(t.secret)));
    }

    #[test]
    fn garbled_tokens_are_refused() {
        let s = token().encode();
        assert_eq!(Token::decode("hello"), Err(TokenError::Malformed));
        assert_eq!(Token::decode(&s[..s.len() - 3]), Err(TokenError::Malformed));
        let mut chars: Vec<char> = s.chars().collect();
        let i = 20;
        chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
        let flipped: String = chars.into_iter().collect();
        assert_eq!(Token::decode(&flipped), Err(TokenError::Checksum));
    }

    #[test]
    fn renewal_is_two_thirds_into_the_intended_lifetime() {
        let backdate = CERT_BACKDATE.as_secs();
        // Issued at t=1000 for 60 s.
        assert_eq!(renew_at_unix(1000 - backdate, 1060), 1040);
        // Issued at t=0 for 7 days.
        let week = 7 * 24 * 3600;
        assert_eq!(renew_at_unix(0, week + backdate) - backdate, week * 2 / 3);
    }

    #[test]
    fn revocation_matches_node_or_serial() {
        let r = Revocations {
            nodes: vec![crate::Id::new("a").unwrap()],
            serials: vec!["0a:0b".into()],
        };
        assert!(r.is_revoked(&crate::Id::new("a").unwrap(), "ff"));
        assert!(r.is_revoked(&crate::Id::new("b").unwrap(), "0A:0B"));
        assert!(!r.is_revoked(&crate::Id::new("b").unwrap(), "ff"));
    }
}
