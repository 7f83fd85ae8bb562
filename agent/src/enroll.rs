//! `tether-agent enroll` and certificate renewal: the agent side of the enrollment
//! exchange (see `tether_proto::enroll`).
//!
//! The key pair is made here and never leaves the host: only a CSR travels. On first
//! enrollment the agent knows the CA only by the fingerprint in its token, so it trusts
//! the relay through [`PinnedCaVerifier`]: the relay's chain must contain a certificate
//! with exactly that fingerprint, and the relay's certificate must verify against it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use rcgen::{CertificateParams, KeyPair, PublicKeyData};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tether_certs::files::{check_absent, write_atomic, Overwrite, Secrecy};
use tether_proto::congestion::Congestion;
use tether_proto::enroll::{
    fingerprint, EnrollRequest, EnrollResponse, Token, ALPN_ENROLL, MAX_MESSAGE,
};
use tether_proto::tls::{identity_from_cert, load_certs, load_key, load_roots, provider};
use tether_proto::wire::{transport_config, Side};
use tether_proto::Identity;

/// File names inside the agent's state directory.
pub const CA_FILE: &str = "ca.pem";
pub const CERT_FILE: &str = "agent.pem";
pub const KEY_FILE: &str = "agent.key";

/// Where an agent's identity lives.
#[derive(Debug, Clone)]
pub struct IdentityFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl IdentityFiles {
    pub fn in_state_dir(dir: &Path) -> Self {
        IdentityFiles {
            ca: dir.join(CA_FILE),
            cert: dir.join(CERT_FILE),
            key: dir.join(KEY_FILE),
        }
    }
}

/// Trusts exactly the CA whose SHA-256 is pinned, found in the relay's own chain.
#[derive(Debug)]
struct PinnedCaVerifier {
    pin: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// The pinned CA once seen, to be stored as `ca.pem`.
    found: std::sync::Mutex<Option<CertificateDer<'static>>>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| fingerprint(c) == self.pin)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "the relay's CA does not match the token (pinned sha256 {})",
                    hex::encode(self.pin)
                ))
            })?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp, now)?;
        *self.found.lock().unwrap_or_else(|p| p.into_inner()) = Some(ca.clone().into_owned());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn quic_client(tls: rustls::ClientConfig) -> Result<quinn::ClientConfig> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    // Enrollment is a few round trips; the controller hardly matters.
    client.transport_config(transport_config(Side::Agent, Congestion::default()));
    Ok(client)
}

fn tls_builder() -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?)
}

/// One request/response exchange on an enrollment connection.
async fn exchange(
    relay: &str,
    server_name: &str,
    client: quinn::ClientConfig,
    request: &EnrollRequest,
) -> Result<EnrollResponse> {
    let (endpoint, connecting) = crate::dial::dial(relay, server_name, client).await?;
    let conn = connecting
        .await
        .with_context(|| format!("TLS handshake with relay {relay}"))?;
    let result = async {
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .context("opening the enrollment stream")?;
        send.write_all(&serde_json::to_vec(request)?).await?;
        send.finish()?;
        let bytes = recv
            .read_to_end(MAX_MESSAGE)
            .await
            .context("reading the relay's answer")?;
        serde_json::from_slice::<EnrollResponse>(&bytes).context("the relay's answer is not valid")
    };
    let result = tokio::time::timeout(std::time::Duration::from_secs(15), result)
        .await
        .map_err(|_| anyhow!("relay {relay} did not answer the enrollment within 15s"))
        .and_then(|r| r);
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    result
}

/// Checks that `cert_pem` is for `key` and names an identity; returns the identity.
fn check_issued(cert_pem: &str, key: &KeyPair) -> Result<Identity> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| anyhow!("the relay returned no certificate: {e}"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| anyhow!("the relay returned an invalid certificate: {e}"))?;
    if cert.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
        bail!("the relay returned a certificate for another key");
    }
    Ok(identity_from_cert(&der, None)?)
}

fn csr_for(key: &KeyPair) -> Result<String> {
    Ok(CertificateParams::default().serialize_request(key)?.pem()?)
}

fn refused(error: tether_proto::enroll::EnrollError, detail: &str) -> anyhow::Error {
    let code = serde_json::to_value(error)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned));
    anyhow!("relay refused: {} ({detail})", code.unwrap_or_default())
}

/// First enrollment with a one-time token; writes `ca.pem`, `agent.pem`, `agent.key`
/// into `dir`. Checks every precondition before touching the disk.
pub async fn enroll(
    relay: &str,
    server_name: &str,
    token: &str,
    dir: &Path,
    overwrite: Overwrite,
) -> Result<Identity> {
    let token = Token::decode(token).context("invalid --token")?;
    let files = IdentityFiles::in_state_dir(dir);
    check_absent(&[&files.ca, &files.cert, &files.key], overwrite)
        .context("this directory already holds an identity")?;
    let key = KeyPair::generate()?;
    let request = EnrollRequest {
        token: Some(token.encode()),
        csr_pem: csr_for(&key)?,
    };

    let verifier = Arc::new(PinnedCaVerifier {
        pin: token.ca_fingerprint,
        provider: provider(),
        found: Default::default(),
    });
    let mut tls = tls_builder()?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN_ENROLL.to_vec()];
    let response = exchange(relay, server_name, quic_client(tls)?, &request).await?;
    let (ca_pem, cert_pem) = match response {
        EnrollResponse::Issued {
            ca_pem, cert_pem, ..
        } => (ca_pem, cert_pem),
        EnrollResponse::Refused { error, detail } => return Err(refused(error, &detail)),
    };
    let identity = check_issued(&cert_pem, &key)?;
    let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .map_err(|e| anyhow!("the relay returned no CA certificate: {e}"))?;
    if fingerprint(&ca_der) != token.ca_fingerprint {
        bail!("the relay returned a CA that does not match the token's pin");
    }
    // Key first: a certificate without its key is useless, the reverse harmless.
    write_atomic(&files.key, key.serialize_pem().as_bytes(), Secrecy::Secret)?;
    write_atomic(&files.ca, ca_pem.as_bytes(), Secrecy::Public)?;
    write_atomic(&files.cert, cert_pem.as_bytes(), Secrecy::Public)?;
    Ok(identity)
}

/// Renews the certificate in `files` over the agent's current mutual-TLS identity,
/// keeping the same key; replaces the certificate file atomically.
pub async fn renew(relay: &str, server_name: &str, files: &IdentityFiles) -> Result<Identity> {
    let key_pem = std::fs::read_to_string(&files.key)
        .with_context(|| format!("reading {}", files.key.display()))?;
    let key = KeyPair::from_pem(&key_pem).context("reading the agent key")?;
    let current = identity_from_cert(&load_certs(&files.cert)?[0], None)?;
    let mut tls = tls_builder()?
        .with_root_certificates(load_roots(&files.ca)?)
        .with_client_auth_cert(load_certs(&files.cert)?, load_key(&files.key)?)?;
    tls.alpn_protocols = vec![ALPN_ENROLL.to_vec()];
    let request = EnrollRequest {
        token: None,
        csr_pem: csr_for(&key)?,
    };
    let cert_pem = match exchange(relay, server_name, quic_client(tls)?, &request).await? {
        EnrollResponse::Issued { cert_pem, .. } => cert_pem,
        EnrollResponse::Refused { error, detail } => return Err(refused(error, &detail)),
    };
    let identity = check_issued(&cert_pem, &key)?;
    if identity != current {
        bail!("the relay renewed us as {identity}, not {current}");
    }
    write_atomic(&files.cert, cert_pem.as_bytes(), Secrecy::Public)?;
    Ok(identity)
}
