//! The private certificate authority and the certificate profiles it issues.
//!
//! Profiles:
//! - CA: `CA:TRUE, pathlen 0`, keyCertSign + cRLSign, and a URI SAN `spiffe://<trust-domain>`
//!   so every later command (and the relay) reads the trust domain from the CA itself.
//! - relay: serverAuth only, DNS/IP SANs.
//! - agent: clientAuth only, exactly one URI SAN `spiffe://<td>/cluster/<c>/node/<n>`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use tether_proto::enroll::CERT_BACKDATE;
use tether_proto::identity::{validate_trust_domain, Identity};
use time::OffsetDateTime;

use rustls_pki_types::pem::PemObject;

use crate::files::{check_absent, write_atomic, Overwrite, Secrecy};

/// A loaded CA: its certificate, key and trust domain.
pub struct Ca {
    pub cert_pem: String,
    pub trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A freshly issued certificate and its private key, both PEM.
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// File names inside a CA directory.
pub fn ca_cert_path(dir: &Path) -> PathBuf {
    dir.join("ca.pem")
}
pub fn ca_key_path(dir: &Path) -> PathBuf {
    dir.join("ca.key")
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and never shortened by DER's leading-zero rule
    SerialNumber::from_slice(&bytes)
}

/// Days on the command line as a lifetime.
pub fn days(days: u32) -> Result<std::time::Duration> {
    if days == 0 {
        bail!("--days must be at least 1");
    }
    Ok(std::time::Duration::from_secs(u64::from(days) * 24 * 3600))
}

/// Valid from [`CERT_BACKDATE`] ago (peers with lagging clocks accept it at once) for
/// `lifetime` from now.
fn validity(params: &mut CertificateParams, lifetime: std::time::Duration) -> Result<()> {
    if lifetime.is_zero() {
        bail!("certificate lifetime must be positive");
    }
    let now = OffsetDateTime::now_utc();
    params.not_before = now - CERT_BACKDATE;
    params.not_after = now + lifetime;
    Ok(())
}

/// Why a CSR cannot be signed.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("CSR does not parse or its signature is invalid: {0}")]
    Invalid(String),
    #[error("CSR key type {0} is weak or unsupported (use ECDSA P-256, P-384 or Ed25519)")]
    WeakKey(String),
    #[error("signing failed: {0}")]
    Signing(String),
}

impl Ca {
    /// Creates a new CA in `dir` (`ca.pem`, `ca.key` mode 0600).
    pub fn init(
        dir: &Path,
        trust_domain: &str,
        lifetime: std::time::Duration,
        overwrite: Overwrite,
    ) -> Result<Ca> {
        validate_trust_domain(trust_domain)?;
        let (cert_path, key_path) = (ca_cert_path(dir), ca_key_path(dir));
        check_absent(&[&cert_path, &key_path], overwrite).context(
            "refusing to replace an existing CA (every certificate it issued would stop working)",
        )?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Tether");
        dn.push(DnType::CommonName, format!("Tether CA {trust_domain}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.subject_alt_names =
            vec![SanType::URI(format!("spiffe://{trust_domain}").try_into()?)];
        params.serial_number = Some(random_serial());
        validity(&mut params, lifetime)?;
        let cert = params.self_signed(&key)?;
        // Key first: a CA certificate without its key is useless, the reverse is harmless.
        write_atomic(&key_path, key.serialize_pem().as_bytes(), Secrecy::Secret)?;
        write_atomic(&cert_path, cert.pem().as_bytes(), Secrecy::Public)?;
        Ca::load(dir)
    }

    /// Loads the CA in `dir`.
    pub fn load(dir: &Path) -> Result<Ca> {
        Ca::load_files(&ca_cert_path(dir), &ca_key_path(dir))
    }

    /// Loads a CA from its certificate and key files.
    pub fn load_files(cert_path: &Path, key_path: &Path) -> Result<Ca> {
        let cert_pem = std::fs::read_to_string(cert_path).with_context(|| {
            format!(
                "reading CA certificate {} (run `tether-certs ca init` first)",
                cert_path.display()
            )
        })?;
        let key_pem = std::fs::read_to_string(key_path)
            .with_context(|| format!("reading CA key {}", key_path.display()))?;
        let key = KeyPair::from_pem(&key_pem)
            .with_context(|| format!("{} is not a PEM private key", key_path.display()))?;
        let trust_domain = crate::inspect::ca_trust_domain(&cert_pem)
            .with_context(|| format!("reading trust domain of {}", cert_path.display()))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .with_context(|| format!("{} is not a usable CA certificate", cert_path.display()))?;
        Ok(Ca {
            cert_pem,
            trust_domain,
            issuer,
        })
    }

    /// Issues a relay (server) certificate for the given DNS names and IP addresses.
    pub fn issue_relay(
        &self,
        sans: &[String],
        lifetime: std::time::Duration,
    ) -> Result<IssuedCert> {
        if sans.is_empty() {
            bail!("a relay certificate needs at least one --san (for example localhost)");
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(sans.to_vec())
            .context("invalid --san (expected a DNS name or an IP address)")?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Tether");
        dn.push(DnType::CommonName, format!("tether-relay {}", sans[0]));
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        validity(&mut params, lifetime)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues an agent (client) certificate carrying `identity` for `public_key`.
    pub fn issue_agent_for(
        &self,
        identity: &Identity,
        public_key: &impl rcgen::PublicKeyData,
        lifetime: std::time::Duration,
    ) -> Result<String> {
        if identity.trust_domain != self.trust_domain {
            bail!(
                "identity {} is outside this CA's trust domain {}",
                identity,
                self.trust_domain
            );
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Tether");
        dn.push(DnType::OrganizationalUnitName, identity.cluster.as_str());
        dn.push(DnType::CommonName, identity.node.as_str());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(identity.to_uri().try_into()?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        validity(&mut params, lifetime)?;
        Ok(params.signed_by(public_key, &self.issuer)?.pem())
    }

    /// Issues an agent certificate with a freshly generated key.
    pub fn issue_agent(
        &self,
        identity: &Identity,
        lifetime: std::time::Duration,
    ) -> Result<IssuedCert> {
        let key = KeyPair::generate()?;
        let cert_pem = self.issue_agent_for(identity, &key, lifetime)?;
        Ok(IssuedCert {
            cert_pem,
            key_pem: key.serialize_pem(),
        })
    }
}

impl Ca {
    /// Signs an agent certificate for `identity` over the public key in `csr_pem`.
    ///
    /// Only the CSR's key is used: its subject, SANs and extensions are ignored, so a CSR
    /// asking for another node still gets exactly `identity`.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &Identity,
        lifetime: std::time::Duration,
    ) -> Result<String, CsrError> {
        check_csr_key(csr_pem)?;
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CsrError::Invalid(e.to_string()))?;
        self.issue_agent_for(identity, &csr.public_key, lifetime)
            .map_err(|e| CsrError::Signing(format!("{e:#}")))
    }

    /// SHA-256 fingerprint of the CA certificate (what tokens pin).
    pub fn fingerprint(&self) -> [u8; 32] {
        let der = rustls_pki_types::CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .expect("CA certificate was parsed when loaded");
        tether_proto::enroll::fingerprint(&der)
    }
}

/// Accepts only modern elliptic-curve keys (ECDSA P-256/P-384, Ed25519): small, fast,
/// and what `tether-agent enroll` makes. Everything else is named in the refusal.
fn check_csr_key(csr_pem: &str) -> Result<(), CsrError> {
    use x509_parser::prelude::FromDer;
    use x509_parser::public_key::PublicKey;
    let der = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|e| CsrError::Invalid(format!("no PEM certificate request: {e}")))?;
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
            .map_err(|e| CsrError::Invalid(e.to_string()))?;
    let spki = &csr.certification_request_info.subject_pki;
    let oid = spki.algorithm.algorithm.to_id_string();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string());
    match (oid.as_str(), curve.as_deref()) {
        // id-ecPublicKey with prime256v1 or secp384r1; id-Ed25519.
        ("1.2.840.10045.2.1", Some("1.2.840.10045.3.1.7" | "1.3.132.0.34"))
        | ("1.3.101.112", _) => Ok(()),
        _ => Err(CsrError::WeakKey(match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => format!("RSA-{}", rsa.key_size()),
            Ok(PublicKey::EC(_)) => format!("EC curve {}", curve.unwrap_or_default()),
            _ => format!("algorithm {oid}"),
        })),
    }
}

impl IssuedCert {
    /// Writes `<dir>/<name>.pem` and `<dir>/<name>.key` (0600); refuses to replace existing
    /// files unless `overwrite` allows it, checking both before writing either.
    pub fn write(
        &self,
        dir: &Path,
        name: &str,
        overwrite: Overwrite,
    ) -> Result<(PathBuf, PathBuf)> {
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}.key"));
        check_absent(&[&cert_path, &key_path], overwrite)?;
        write_atomic(&key_path, self.key_pem.as_bytes(), Secrecy::Secret)?;
        write_atomic(&cert_path, self.cert_pem.as_bytes(), Secrecy::Public)?;
        Ok((cert_path, key_path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_proto::Id;

    fn ca() -> (tempfile::TempDir, Ca) {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init(
            dir.path(),
            "tether.local",
            days(1).unwrap(),
            Overwrite::Refuse,
        )
        .unwrap();
        (dir, ca)
    }

    fn identity(node: &str) -> Identity {
        Identity::new(
            "tether.local",
            Id::new("west").unwrap(),
            Id::new(node).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn csr_identity_is_ignored_in_favour_of_the_given_one() {
        let (_dir, ca) = ca();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            "spiffe://tether.local/cluster/west/node/evil"
                .try_into()
                .unwrap(),
        )];
        params.distinguished_name.push(DnType::CommonName, "evil");
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let cert = ca
            .sign_csr(&csr, &identity("good"), std::time::Duration::from_secs(60))
            .unwrap();
        let s = crate::inspect::summarize(&cert).unwrap();
        assert_eq!(
            s.identity.as_deref(),
            Some("spiffe://tether.local/cluster/west/node/good")
        );
        assert!(
            !s.sans.iter().any(|san| san.contains("evil")),
            "{:?}",
            s.sans
        );
        assert!(!s.subject.contains("evil"), "{}", s.subject);
    }

    #[test]
    fn weak_and_garbage_csrs_are_refused() {
        let (_dir, ca) = ca();
        let weak = include_str!("../testdata/weak-rsa1024.csr");
        let life = std::time::Duration::from_secs(60);
        assert!(matches!(
            ca.sign_csr(weak, &identity("n"), life),
            Err(CsrError::WeakKey(_))
        ));
        assert!(matches!(
            ca.sign_csr("nope", &identity("n"), life),
            Err(CsrError::Invalid(_))
        ));
    }
}
