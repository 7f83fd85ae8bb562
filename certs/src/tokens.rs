//! The token store: one file per outstanding enrollment token in `<ca-dir>/tokens/`.
//!
//! `tether-certs token create` writes `<id>.json` (mode 0600; it holds only a hash of
//! the secret). The relay checks a presented token against it and consumes it by
//! renaming `<id>.json` to `<id>.used`. A rename is atomic, so when two enrollments race
//! with the same token exactly one rename succeeds: single use holds across threads and
//! processes without any lock.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use tether_proto::enroll::{EnrollError, Token, TokenRecord};
use tether_proto::Id;

use crate::files::{write_atomic, Secrecy};
use crate::Ca;

/// Token files live here, beside the CA.
pub fn tokens_dir(ca_dir: &Path) -> PathBuf {
    ca_dir.join("tokens")
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Where a token stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    Unused,
    Expired,
    Used,
    Revoked,
}

impl std::fmt::Display for TokenState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            TokenState::Unused => "unused",
            TokenState::Expired => "expired",
            TokenState::Used => "used",
            TokenState::Revoked => "revoked",
        })
    }
}

pub struct TokenStore {
    dir: PathBuf,
}

/// A refused token check: the code for the agent and a sentence for people.
pub type Refusal = (EnrollError, String);

impl TokenStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        TokenStore { dir: dir.into() }
    }

    fn path(&self, id: &str, state: &str) -> PathBuf {
        self.dir.join(format!("{id}.{state}"))
    }

    /// Creates a token for `node` of `cluster`, valid for `ttl`.
    pub fn create(&self, ca: &Ca, node: Id, cluster: Id, ttl: Duration) -> Result<Token> {
        if ttl.is_zero() {
            bail!("--ttl must be positive");
        }
        let token = Token::generate(ca.fingerprint(), |b| rand::fill(b));
        let now = now_unix();
        let record = TokenRecord {
            id: token.id_hex(),
            secret_sha256: token.secret_hash_hex(),
            node,
            cluster,
            created_unix: now,
            expires_unix: now + ttl.as_secs(),
        };
        let json = serde_json::to_vec_pretty(&record)?;
        write_atomic(&self.path(&record.id, "json"), &json, Secrecy::Secret)?;
        Ok(token)
    }

    /// Every token the store knows, oldest first.
    pub fn list(&self) -> Result<Vec<(TokenRecord, TokenState)>> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.dir.display())),
        };
        let now = now_unix();
        for entry in entries {
            let path = entry?.path();
            let state = match path.extension().and_then(|e| e.to_str()) {
                Some("json") => TokenState::Unused,
                Some("used") => TokenState::Used,
                Some("revoked") => TokenState::Revoked,
                _ => continue,
            };
            let record: TokenRecord = serde_json::from_slice(&std::fs::read(&path)?)
                .with_context(|| format!("{} is not a token record", path.display()))?;
            let state = if state == TokenState::Unused && record.expires_unix <= now {
                TokenState::Expired
            } else {
                state
            };
            out.push((record, state));
        }
        out.sort_by_key(|(r, _)| r.created_unix);
        Ok(out)
    }

    /// Revokes an unused token by ID (or unique ID prefix).
    pub fn revoke(&self, id_prefix: &str) -> Result<TokenRecord> {
        let matches: Vec<_> = self
            .list()?
            .into_iter()
            .filter(|(r, _)| r.id.starts_with(&id_prefix.to_ascii_lowercase()))
            .collect();
        let (record, state) = match matches.as_slice() {
            [] => bail!("no token with ID {id_prefix}"),
            [one] => one.clone(),
            _ => bail!("ID prefix {id_prefix} matches several tokens; give more of it"),
        };
        if matches!(state, TokenState::Used | TokenState::Revoked) {
            bail!("token {} is already {state}", record.id);
        }
        std::fs::rename(
            self.path(&record.id, "json"),
            self.path(&record.id, "revoked"),
        )
        .with_context(|| format!("revoking token {}", record.id))?;
        Ok(record)
    }

    /// Checks a presented token without consuming it.
    pub fn check(&self, token: &Token, ca_fingerprint: &[u8; 32]) -> Result<TokenRecord, Refusal> {
        if token.ca_fingerprint != *ca_fingerprint {
            return Err((
                EnrollError::WrongCa,
                "the token was made for another CA than this relay's".into(),
            ));
        }
        let id = token.id_hex();
        let bytes = match std::fs::read(self.path(&id, "json")) {
            Ok(b) => b,
            Err(_) if self.path(&id, "used").exists() => {
                return Err((
                    EnrollError::TokenUsed,
                    format!("token {id} was already used"),
                ))
            }
            Err(_) => {
                return Err((
                    EnrollError::UnknownToken,
                    format!("token {id} is unknown or revoked"),
                ))
            }
        };
        let record: TokenRecord = serde_json::from_slice(&bytes).map_err(|e| {
            (
                EnrollError::Internal,
                format!("token record {id} is unreadable: {e}"),
            )
        })?;
        if record.secret_sha256 != token.secret_hash_hex() {
            return Err((
                EnrollError::UnknownToken,
                format!("token {id} is unknown or revoked"),
            ));
        }
        if record.expires_unix <= now_unix() {
            return Err((EnrollError::TokenExpired, format!("token {id} has expired")));
        }
        Ok(record)
    }

    /// Consumes a checked token. Exactly one of several racing callers succeeds.
    pub fn consume(&self, record: &TokenRecord) -> Result<(), Refusal> {
        std::fs::rename(self.path(&record.id, "json"), self.path(&record.id, "used")).map_err(
            |_| {
                (
                    EnrollError::TokenUsed,
                    format!("token {} was already used", record.id),
                )
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::days;
    use crate::files::Overwrite;

    /// A fresh CA, its token store, and one token for node n1 of cluster c.
    fn fixture() -> (tempfile::TempDir, Ca, TokenStore, Token) {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init(
            dir.path(),
            "tether.local",
            days(1).unwrap(),
            Overwrite::Refuse,
        )
        .unwrap();
        let store = TokenStore::new(tokens_dir(dir.path()));
        let (node, cluster) = (Id::new("n1").unwrap(), Id::new("c").unwrap());
        let token = store
            .create(&ca, node, cluster, Duration::from_secs(60))
            .unwrap();
        (dir, ca, store, token)
    }

    #[test]
    fn tokens_are_single_use_even_when_raced() {
        let (_dir, ca, store, token) = fixture();
        let record = store.check(&token, &ca.fingerprint()).unwrap();
        assert_eq!(record.node.as_str(), "n1");

        let winners: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| store.consume(&record).is_ok()))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap() as usize)
                .sum()
        });
        assert_eq!(winners, 1);
        assert_eq!(
            store.check(&token, &ca.fingerprint()).unwrap_err().0,
            EnrollError::TokenUsed
        );
        assert_eq!(store.list().unwrap()[0].1, TokenState::Used);
    }

    #[test]
    fn wrong_ca_wrong_secret_and_revoked_tokens_are_refused() {
        let (_dir, ca, store, token) = fixture();
        assert_eq!(
            store.check(&token, &[0; 32]).unwrap_err().0,
            EnrollError::WrongCa
        );
        let mut forged = token.clone();
        forged.secret[0] ^= 1;
        assert_eq!(
            store.check(&forged, &ca.fingerprint()).unwrap_err().0,
            EnrollError::UnknownToken
        );
        store.revoke(&token.id_hex()[..8]).unwrap();
        assert_eq!(
            store.check(&token, &ca.fingerprint()).unwrap_err().0,
            EnrollError::UnknownToken
        );
        assert!(store.revoke(&token.id_hex()).is_err(), "already revoked");
    }
}
