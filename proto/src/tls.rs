//! TLS plumbing shared by the relay, agent and certificate tool.
//!
//! One crypto provider (ring) everywhere, passed explicitly: if a dependency enabled a
//! second provider, rustls' process-level default would panic at run time.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::identity::{IdError, Identity};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no usable PEM private key: {detail}")]
    BadKey { path: PathBuf, detail: String },
    #[error("certificate is not valid X.509: {0}")]
    BadCertificate(String),
    #[error(
        "certificate has no Tether identity URI (spiffe://<trust-domain>/cluster/<c>/node/<n>)"
    )]
    NoIdentity,
    #[error("certificate identity is invalid: {0}")]
    BadIdentity(#[from] IdError),
    #[error("certificate has several Tether identity URIs; exactly one is allowed")]
    SeveralIdentities,
    #[error("CA certificate names no trust domain (a spiffe://<trust-domain> URI SAN, as `tether-certs ca init` writes)")]
    NoTrustDomain,
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The crypto provider every Tether TLS config uses.
///
/// ring's suites, with TLS 1.3's mandatory AES-128-GCM moved in front of AES-256-GCM
/// (rustls' first choice), as Go's TLS and BoringSSL order them on CPUs with AES
/// instructions. Every tunnel packet is sealed once and opened once, and AES-128 does 10
/// rounds per block to AES-256's 14: callgrind counted about 500 fewer instructions per
/// small request in each of the relay and the agent (of 58k and 68k).
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    let aes128 = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
    provider
        .cipher_suites
        .retain(|s| s.suite() != aes128.suite());
    provider.cipher_suites.insert(0, aes128);
    Arc::new(provider)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads every certificate in a PEM file (leaf first for a chain).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::NoCertificate {
            path: path.to_owned(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Reads the private key in a PEM file (PKCS#8, SEC1 or PKCS#1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::BadKey {
        path: path.to_owned(),
        detail: e.to_string(),
    })
}

/// A root store holding the CA certificates in `path`.
pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// Extracts the Tether identity from a DER certificate's URI SANs.
///
/// `trust_domain`, when given, must match. Exactly one `spiffe://` URI is allowed, so a
/// certificate can never be read as two different nodes.
pub fn identity_from_cert(der: &[u8], trust_domain: Option<&str>) -> Result<Identity, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    let mut found: Option<Identity> = None;
    for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
        if let x509_parser::extensions::GeneralName::URI(uri) = name {
            if !uri.starts_with("spiffe://") {
                continue;
            }
            if found.is_some() {
                return Err(TlsError::SeveralIdentities);
            }
            found = Some(Identity::from_uri(uri)?);
        }
    }
    let id = found.ok_or(TlsError::NoIdentity)?;
    if let Some(td) = trust_domain {
        if id.trust_domain != td {
            return Err(TlsError::BadIdentity(IdError::BadUri(format!(
                "{} (trust domain must be {td})",
                id.to_uri()
            ))));
        }
    }
    Ok(id)
}

/// The trust domain a Tether CA certificate declares in its `spiffe://<trust-domain>` URI
/// SAN (written by `tether-certs ca init`), so that nothing else has to repeat it.
pub fn ca_trust_domain(der: &[u8]) -> Result<String, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    if !cert.is_ca() {
        return Err(TlsError::BadCertificate("not a CA certificate".into()));
    }
    let san = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    let td = san
        .iter()
        .flat_map(|s| s.value.general_names.iter())
        .find_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => {
                u.strip_prefix("spiffe://").filter(|td| !td.contains('/'))
            }
            _ => None,
        })
        .ok_or(TlsError::NoTrustDomain)?;
    crate::identity::validate_trust_domain(td)?;
    Ok(td.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_128_gcm_comes_first_and_no_suite_is_lost() {
        let ours = provider();
        let ring = rustls::crypto::ring::default_provider();
        assert_eq!(
            ours.cipher_suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        let mut a: Vec<_> = ours.cipher_suites.iter().map(|s| s.suite()).collect();
        let mut b: Vec<_> = ring.cipher_suites.iter().map(|s| s.suite()).collect();
        a.sort_by_key(|s| u16::from(*s));
        b.sort_by_key(|s| u16::from(*s));
        assert_eq!(a, b);
    }
}
