//! The relay's TLS: server certificate, and a client verifier that accepts an agent only
//! if its certificate chains to our CA, is valid for client auth, carries exactly one
//! Tether identity in our trust domain, *and* is not revoked. Everything is decided in the
//! handshake, so a bad agent never gets as far as the registry.
//!
//! A client certificate is optional at the TLS level because the enrollment ALPN is used
//! by agents that have none yet; the tunnel ALPN insists on one right after the handshake
//! (see `tunnel`). A certificate that *is* presented is always fully verified.

use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use tether_proto::enroll::ALPN_ENROLL;
use tether_proto::tls::{
    ca_trust_domain, identity_from_cert, load_certs, load_key, load_roots, provider,
};
use tether_proto::wire::{transport_config, Side, ALPN_TUNNEL};

use crate::config::TunnelConfig;
use crate::metrics::{HandshakeResult, Metrics};
use crate::revocation::RevocationList;

/// Chain and usage checks from webpki, plus the identity check.
struct IdentityVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
    revocations: Arc<RevocationList>,
    /// Refusals are counted here, where their reason is still a type, not a string.
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for IdentityVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityVerifier")
            .field("trust_domain", &self.trust_domain)
            .finish()
    }
}

/// A refused agent certificate: the metric label, a sentence for the log (rustls carries
/// our own errors only as `Debug`), and the error rustls turns into the TLS alert.
struct Refusal {
    reason: &'static str,
    detail: String,
    error: rustls::Error,
}

impl Refusal {
    /// A refusal by webpki (chain, validity, usage).
    fn webpki(error: rustls::Error) -> Self {
        use CertificateError as C;
        let reason = match &error {
            rustls::Error::InvalidCertificate(c) => match c {
                C::UnknownIssuer | C::BadSignature => "unknown-ca",
                C::Expired | C::ExpiredContext { .. } => "expired",
                C::NotValidYet | C::NotValidYetContext { .. } => "expired",
                C::InvalidPurpose | C::InvalidPurposeContext { .. } => "wrong-usage",
                _ => "bad-certificate",
            },
            _ => "bad-certificate",
        };
        Refusal {
            reason,
            detail: error.to_string(),
            error,
        }
    }

    /// A refusal by Tether's own rules (identity, revocation).
    fn tether(reason: &'static str, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        let detail = e.to_string();
        let error =
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))));
        Refusal {
            reason,
            detail,
            error,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("certificate {serial} of node {node} is revoked")]
struct Revoked {
    node: tether_proto::Id,
    serial: String,
}

/// Serial of a DER certificate, formatted as `tether-certs inspect` prints it.
pub fn cert_serial(der: &[u8]) -> String {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c.raw_serial_as_string())
        .unwrap_or_default()
}

impl IdentityVerifier {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), Refusal> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(Refusal::webpki)?;
        let identity = identity_from_cert(end_entity, Some(&self.trust_domain))
            .map_err(|e| Refusal::tether("bad-identity", e))?;
        let serial = cert_serial(end_entity);
        if self.revocations.is_revoked(&identity.node, &serial) {
            let node = identity.node;
            return Err(Refusal::tether("revoked", Revoked { node, serial }));
        }
        Ok(())
    }
}

impl ClientCertVerifier for IdentityVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now).map_err(|r| {
            self.metrics.handshake(HandshakeResult::Refused, r.reason);
            tracing::warn!(reason = r.reason, detail = %r.detail, "agent certificate refused");
            r.error
        })?;
        Ok(ClientCertVerified::assertion())
    }

    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The verifier for agent certificates.
fn client_verifier(
    cfg: &TunnelConfig,
    revocations: Arc<RevocationList>,
    metrics: Arc<Metrics>,
) -> Result<Arc<IdentityVerifier>> {
    let roots = load_roots(&cfg.ca).context("loading tunnel.ca")?;
    let trust_domain = match &cfg.trust_domain {
        Some(td) => td.clone(),
        None => ca_trust_domain(&load_certs(&cfg.ca)?[0])
            .with_context(|| format!("{}: set tunnel.trust_domain", cfg.ca.display()))?,
    };
    tether_proto::identity::validate_trust_domain(&trust_domain)?;
    let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .context("building the client certificate verifier")?;
    Ok(Arc::new(IdentityVerifier {
        inner: webpki,
        trust_domain,
        revocations,
        metrics,
    }))
}

/// The QUIC server config for the tunnel listener.
pub fn server_config(
    cfg: &TunnelConfig,
    revocations: Arc<RevocationList>,
    metrics: Arc<Metrics>,
) -> Result<quinn::ServerConfig> {
    let verifier = client_verifier(cfg, revocations, metrics)?;
    // Serve the CA after our certificate: an enrolling agent knows the CA only by the
    // fingerprint in its token, and finds it in this chain.
    let mut certs = load_certs(&cfg.cert).context("loading tunnel.cert")?;
    for ca in load_certs(&cfg.ca)? {
        if !certs.contains(&ca) {
            certs.push(ca);
        }
    }
    let key = load_key(&cfg.key).context("loading tunnel.key")?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .context("tunnel.cert and tunnel.key do not form a usable pair")?;
    tls.alpn_protocols = vec![ALPN_TUNNEL.to_vec(), ALPN_ENROLL.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(transport_config(Side::Relay, cfg.congestion));
    Ok(server)
}

/// The endpoint config. Both the stateless-reset key and the connection-ID check key are
/// derived from the relay's private key, so a relay restarted after a crash recognises the
/// connection IDs its predecessor issued and resets agents' stale connections at their
/// next keep-alive, instead of leaving them to wait out the idle timeout.
pub fn endpoint_config(cfg: &TunnelConfig) -> Result<quinn::EndpointConfig> {
    let key = load_key(&cfg.key).context("loading tunnel.key")?;
    let derive = |label: &[u8]| {
        ring::digest::digest(&ring::digest::SHA256, &[label, key.secret_der()].concat())
    };
    let reset = derive(b"tether stateless reset v1");
    let hmac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset.as_ref());
    let cid_key = u64::from_le_bytes(
        derive(b"tether connection id v1").as_ref()[..8]
            .try_into()
            .expect("8 bytes"),
    );
    let mut endpoint = quinn::EndpointConfig::new(Arc::new(hmac));
    endpoint.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    Ok(endpoint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        SanType,
    };

    struct TestCa {
        dir: tempfile::TempDir,
        issuer: Issuer<'static, KeyPair>,
    }

    impl TestCa {
        fn new() -> TestCa {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::default();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.subject_alt_names = vec![SanType::URI("spiffe://tether.local".try_into().unwrap())];
            let cert = p.self_signed(&key).unwrap();
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
            TestCa {
                dir,
                issuer: Issuer::new(p, key),
            }
        }

        fn verifier(&self) -> Arc<IdentityVerifier> {
            let cfg = TunnelConfig {
                ca: self.dir.path().join("ca.pem"),
                ..Default::default()
            };
            let revocations = Arc::new(RevocationList::load(cfg.revocations_path()).unwrap());
            client_verifier(&cfg, revocations, Arc::new(Metrics::default())).unwrap()
        }

        fn agent(&self, uri: Option<&str>, expired: bool) -> CertificateDer<'static> {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(vec!["agent.example".to_owned()]).unwrap();
            if let Some(uri) = uri {
                p.subject_alt_names
                    .push(SanType::URI(uri.try_into().unwrap()));
            }
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            if expired {
                p.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(10);
                p.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
            }
            p.signed_by(&key, &self.issuer).unwrap().der().clone()
        }
    }

    fn verdict(v: &IdentityVerifier, cert: &CertificateDer<'_>) -> Result<(), String> {
        v.verify_client_cert(cert, &[], UnixTime::now())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn only_valid_identities_of_our_trust_domain_pass() {
        let ca = TestCa::new();
        let v = ca.verifier();
        let good = "spiffe://tether.local/cluster/west/node/n1";
        assert_eq!(verdict(&v, &ca.agent(Some(good), false)), Ok(()));
        let err = verdict(&v, &ca.agent(None, false)).unwrap_err();
        assert!(err.contains("NoIdentity"), "{err}");
        let err = verdict(
            &v,
            &ca.agent(Some("spiffe://other.org/cluster/west/node/n1"), false),
        )
        .unwrap_err();
        assert!(err.contains("BadIdentity"), "{err}");
        let err = verdict(&v, &ca.agent(Some(good), true)).unwrap_err();
        assert!(err.to_lowercase().contains("expired"), "{err}");
    }

    #[test]
    fn revoked_certificates_are_refused() {
        let ca = TestCa::new();
        let cert = ca.agent(Some("spiffe://tether.local/cluster/west/node/n1"), false);
        let path = ca.dir.path().join("revoked.json");
        tether_certs::revocation::revoke_serial(&path, &cert_serial(&cert)).unwrap();
        let v = ca.verifier();
        let err = verdict(&v, &cert).unwrap_err();
        assert!(err.contains("Revoked"), "{err}");
        let metrics = v.metrics.encode();
        assert!(metrics.contains(r#"reason="revoked"} 1"#), "{metrics}");
    }
}
