//! Enrollment and renewal, served on the tunnel port under ALPN `tether-enroll/1`.
//!
//! One exchange per connection: the agent opens one stream, sends an
//! [`EnrollRequest`] (CSR plus a one-time token, or no token when renewing over its
//! current client certificate), and reads one [`EnrollResponse`]. The identity in the
//! issued certificate always comes from the token record or the verified certificate,
//! never from the CSR.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tether_certs::tokens::{tokens_dir, TokenStore};
use tether_certs::Ca;
use tether_proto::enroll::{EnrollError, EnrollRequest, EnrollResponse, Token, MAX_MESSAGE};
use tether_proto::Identity;
use tracing::{info, warn};

use crate::config::Config;
use crate::revocation::RevocationList;

/// Time an enrolling agent gets to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

struct Issuer {
    ca: Ca,
    fingerprint: [u8; 32],
    store: TokenStore,
    lifetime: Duration,
}

pub struct Enroller {
    /// `None` when `[enroll]` is not configured: every request is refused as disabled.
    issuer: Option<Issuer>,
    revocations: Arc<RevocationList>,
}

/// Refuses a CA key file that others can read: it can mint any identity.
fn check_key_mode(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("reading enroll.ca_key {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "enroll.ca_key {} has mode {mode:o}; it must be readable by its owner only (chmod 600)",
                path.display()
            );
        }
    }
    let _ = meta;
    Ok(())
}

impl Enroller {
    pub fn new(cfg: &Config, revocations: Arc<RevocationList>) -> Result<Self> {
        let Some(ca_key) = &cfg.enroll.ca_key else {
            return Ok(Enroller {
                issuer: None,
                revocations,
            });
        };
        check_key_mode(ca_key)?;
        let ca_cert = cfg
            .enroll
            .ca_cert
            .clone()
            .unwrap_or_else(|| cfg.tunnel.ca.clone());
        let ca = Ca::load_files(&ca_cert, ca_key).context("loading the enrollment CA")?;
        let tokens: PathBuf = cfg
            .enroll
            .tokens
            .clone()
            .unwrap_or_else(|| tokens_dir(ca_key.parent().unwrap_or(Path::new("."))));
        info!(tokens = %tokens.display(), lifetime = ?cfg.enroll.cert_lifetime, "enrollment enabled");
        Ok(Enroller {
            issuer: Some(Issuer {
                fingerprint: ca.fingerprint(),
                ca,
                store: TokenStore::new(tokens),
                lifetime: cfg.enroll.cert_lifetime,
            }),
            revocations,
        })
    }

    /// Serves the one exchange of an enrollment connection.
    pub async fn serve(&self, conn: quinn::Connection, peer: Option<(Identity, String)>) {
        // The tunnel's transport forbids agent-opened bidirectional streams; this
        // connection is not a tunnel, so allow exactly one.
        conn.set_max_concurrent_bi_streams(1u32.into());
        let exchange = async {
            let (mut send, mut recv) = conn.accept_bi().await?;
            let bytes = recv.read_to_end(MAX_MESSAGE).await?;
            let response = match serde_json::from_slice::<EnrollRequest>(&bytes) {
                Ok(req) => self.decide(req, peer.as_ref()),
                Err(e) => refused(
                    EnrollError::BadCsr,
                    format!("request is not valid JSON: {e}"),
                ),
            };
            send.write_all(&serde_json::to_vec(&response)?).await?;
            send.finish()?;
            anyhow::Ok(())
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(Ok(())) => {
                // Let the agent read the answer and close; bounded.
                let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
            }
            Ok(Err(e)) => warn!(error = %e, "enrollment exchange failed"),
            Err(_) => warn!("enrollment request timed out"),
        }
    }

    fn decide(&self, req: EnrollRequest, peer: Option<&(Identity, String)>) -> EnrollResponse {
        let Some(issuer) = &self.issuer else {
            return refused(
                EnrollError::Disabled,
                "enrollment is not enabled on this relay".into(),
            );
        };
        let result = match (&req.token, peer) {
            (Some(token), _) => self.enroll(issuer, token, &req.csr_pem),
            (None, Some((identity, _serial))) => self.renew(issuer, identity, &req.csr_pem),
            (None, None) => Err((
                EnrollError::NoToken,
                "send an enrollment token (or renew with a client certificate)".into(),
            )),
        };
        match result {
            Ok((identity, cert_pem)) => EnrollResponse::Issued {
                ca_pem: issuer.ca.cert_pem.clone(),
                cert_pem,
                identity: identity.to_uri(),
            },
            Err((error, detail)) => {
                warn!(error = ?error, detail, "enrollment refused");
                refused(error, detail)
            }
        }
    }

    fn sign(
        &self,
        issuer: &Issuer,
        identity: &Identity,
        csr_pem: &str,
    ) -> Result<String, (EnrollError, String)> {
        use tether_certs::ca::CsrError;
        issuer
            .ca
            .sign_csr(csr_pem, identity, issuer.lifetime)
            .map_err(|e| match e {
                CsrError::Invalid(_) => (EnrollError::BadCsr, e.to_string()),
                CsrError::WeakKey(_) => (EnrollError::WeakKey, e.to_string()),
                CsrError::Signing(_) => (EnrollError::Internal, e.to_string()),
            })
    }

    fn enroll(
        &self,
        issuer: &Issuer,
        token: &str,
        csr_pem: &str,
    ) -> Result<(Identity, String), (EnrollError, String)> {
        let token = Token::decode(token).map_err(|e| (EnrollError::BadToken, e.to_string()))?;
        let record = issuer.store.check(&token, &issuer.fingerprint)?;
        let identity = Identity::new(
            &issuer.ca.trust_domain,
            record.cluster.clone(),
            record.node.clone(),
        )
        .map_err(|e| (EnrollError::Internal, e.to_string()))?;
        if self.revocations.is_revoked(&identity.node, "") {
            return Err((
                EnrollError::Revoked,
                format!("node {} is revoked", identity.node),
            ));
        }
        // Sign first (a bad CSR must not burn the token), then consume: if another
        // enrollment raced us to the token, this certificate is simply dropped.
        let cert = self.sign(issuer, &identity, csr_pem)?;
        issuer.store.consume(&record)?;
        info!(node = %identity.node, cluster = %identity.cluster, token = %record.id, "agent enrolled");
        Ok((identity, cert))
    }

    fn renew(
        &self,
        issuer: &Issuer,
        identity: &Identity,
        csr_pem: &str,
    ) -> Result<(Identity, String), (EnrollError, String)> {
        let cert = self.sign(issuer, identity, csr_pem)?;
        info!(node = %identity.node, cluster = %identity.cluster, "agent certificate renewed");
        Ok((identity.clone(), cert))
    }
}

fn refused(error: EnrollError, detail: String) -> EnrollResponse {
    EnrollResponse::Refused { error, detail }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_certs::ca::days;
    use tether_certs::files::Overwrite;

    fn enroller(dir: &Path, enabled: bool) -> Enroller {
        Ca::init(dir, "tether.local", days(1).unwrap(), Overwrite::Refuse).unwrap();
        let mut cfg = Config::default();
        cfg.tunnel.ca = dir.join("ca.pem");
        if enabled {
            cfg.enroll.ca_key = Some(dir.join("ca.key"));
        }
        let revocations = Arc::new(RevocationList::load(cfg.tunnel.revocations_path()).unwrap());
        Enroller::new(&cfg, revocations).unwrap()
    }

    fn csr() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap()
    }

    fn refusal(r: EnrollResponse) -> EnrollError {
        match r {
            EnrollResponse::Refused { error, .. } => error,
            EnrollResponse::Issued { identity, .. } => panic!("issued {identity}"),
        }
    }

    #[test]
    fn requests_without_token_or_certificate_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = enroller(dir.path(), true);
        let r = e.decide(
            EnrollRequest {
                token: None,
                csr_pem: csr(),
            },
            None,
        );
        assert_eq!(refusal(r), EnrollError::NoToken);
        let r = e.decide(
            EnrollRequest {
                token: Some("tether1-garbage".into()),
                csr_pem: csr(),
            },
            None,
        );
        assert_eq!(refusal(r), EnrollError::BadToken);
    }

    #[test]
    fn enrollment_is_off_without_a_ca_key() {
        let dir = tempfile::tempdir().unwrap();
        let e = enroller(dir.path(), false);
        let r = e.decide(
            EnrollRequest {
                token: None,
                csr_pem: csr(),
            },
            None,
        );
        assert_eq!(refusal(r), EnrollError::Disabled);
    }

    #[test]
    fn a_token_enrolls_once_with_its_own_identity() {
        let dir = tempfile::tempdir().unwrap();
        let e = enroller(dir.path(), true);
        let ca = Ca::load(dir.path()).unwrap();
        let token = TokenStore::new(tokens_dir(dir.path()))
            .create(
                &ca,
                tether_proto::Id::new("n1").unwrap(),
                tether_proto::Id::new("west").unwrap(),
                Duration::from_secs(60),
            )
            .unwrap()
            .encode();
        let req = || EnrollRequest {
            token: Some(token.clone()),
            csr_pem: csr(),
        };
        match e.decide(req(), None) {
            EnrollResponse::Issued { identity, .. } => {
                assert_eq!(identity, "spiffe://tether.local/cluster/west/node/n1")
            }
            r => panic!("{r:?}"),
        }
        assert_eq!(refusal(e.decide(req(), None)), EnrollError::TokenUsed);
    }

    #[test]
    fn a_world_readable_ca_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Ca::init(
            dir.path(),
            "tether.local",
            days(1).unwrap(),
            Overwrite::Refuse,
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let key = dir.path().join("ca.key");
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = check_key_mode(&key).unwrap_err().to_string();
            assert!(err.contains("chmod 600"), "{err}");
        }
    }
}
