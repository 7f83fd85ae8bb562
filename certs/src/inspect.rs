//! Reading certificates back: what `tether-certs inspect` prints, and the CA's trust domain.

use std::fmt;

use anyhow::{anyhow, Context, Result};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The facts about a certificate an operator asks for.
#[derive(Debug)]
pub struct Summary {
    pub identity: Option<String>,
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    pub not_before: String,
    pub not_after: String,
    pub is_ca: bool,
    pub usage: Vec<&'static str>,
    pub sans: Vec<String>,
    pub expired: bool,
}

fn first_cert_der(pem: &str) -> Result<CertificateDer<'static>> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| anyhow!("no PEM certificate found: {e}"))
}

/// Summarises the first certificate in a PEM document.
pub fn summarize(pem: &str) -> Result<Summary> {
    let der = first_cert_der(pem)?;
    let (_, cert) = X509Certificate::from_der(&der).context("not a valid X.509 certificate")?;
    let identity = match tether_proto::tls::identity_from_cert(&der, None) {
        Ok(id) => Some(id.to_uri()),
        Err(tether_proto::tls::TlsError::NoIdentity) => None,
        Err(e) => Some(format!("INVALID: {e}")),
    };
    let mut usage = Vec::new();
    if let Ok(Some(eku)) = cert.extended_key_usage() {
        if eku.value.server_auth {
            usage.push("server-auth");
        }
        if eku.value.client_auth {
            usage.push("client-auth");
        }
    }
    let sans = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect(),
        _ => Vec::new(),
    };
    Ok(Summary {
        identity,
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: cert.raw_serial_as_string(),
        not_before: cert.validity().not_before.to_string(),
        not_after: cert.validity().not_after.to_string(),
        is_ca: cert.is_ca(),
        usage,
        sans,
        expired: !cert.validity().is_valid(),
    })
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "identity:   {}",
            self.identity.as_deref().unwrap_or("(none)")
        )?;
        writeln!(f, "subject:    {}", self.subject)?;
        writeln!(f, "issuer:     {}", self.issuer)?;
        writeln!(f, "serial:     {}", self.serial)?;
        writeln!(f, "not before: {}", self.not_before)?;
        writeln!(
            f,
            "not after:  {}{}",
            self.not_after,
            if self.expired {
                " (EXPIRED or not yet valid)"
            } else {
                ""
            }
        )?;
        writeln!(f, "ca:         {}", if self.is_ca { "yes" } else { "no" })?;
        writeln!(
            f,
            "usage:      {}",
            if self.usage.is_empty() {
                "(any)".to_owned()
            } else {
                self.usage.join(", ")
            }
        )?;
        write!(f, "sans:       {}", self.sans.join(", "))
    }
}

/// The trust domain a Tether CA certificate declares (its `spiffe://<td>` URI SAN).
pub fn ca_trust_domain(pem: &str) -> Result<String> {
    Ok(tether_proto::tls::ca_trust_domain(&first_cert_der(pem)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{days, Ca};
    use crate::files::Overwrite;
    use tether_proto::{Id, Identity};

    #[test]
    fn issued_certificates_carry_the_expected_profile() {
        let dir = std::env::temp_dir().join(format!("tether-inspect-{}", std::process::id()));
        let ca = Ca::init(&dir, "example.org", days(30).unwrap(), Overwrite::Refuse).unwrap();
        assert_eq!(ca.trust_domain, "example.org");
        assert!(Ca::init(&dir, "example.org", days(30).unwrap(), Overwrite::Refuse).is_err());

        let id = Identity::new(
            "example.org",
            Id::new("west").unwrap(),
            Id::new("n1").unwrap(),
        )
        .unwrap();
        let agent = ca.issue_agent(&id, days(7).unwrap()).unwrap();
        let s = summarize(&agent.cert_pem).unwrap();
        assert_eq!(
            s.identity.as_deref(),
            Some("spiffe://example.org/cluster/west/node/n1")
        );
        assert_eq!(s.usage, vec!["client-auth"]);
        assert!(!s.is_ca && !s.expired);

        let relay = ca
            .issue_relay(&["localhost".into(), "127.0.0.1".into()], days(30).unwrap())
            .unwrap();
        let s = summarize(&relay.cert_pem).unwrap();
        assert_eq!(s.identity, None);
        assert_eq!(s.usage, vec!["server-auth"]);

        let other = Identity::new(
            "other.org",
            Id::new("west").unwrap(),
            Id::new("n1").unwrap(),
        )
        .unwrap();
        assert!(ca.issue_agent(&other, days(7).unwrap()).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
