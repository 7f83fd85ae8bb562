//! The agent's TLS: trust only our CA for the relay, present our certificate.
//! Built fresh for every connection attempt so renewed certificate files take effect on
//! the next connection without a restart.

use std::sync::Arc;

use anyhow::{Context, Result};
use tether_proto::tls::{load_certs, load_key, load_roots, provider};
use tether_proto::wire::{transport_config, Side, ALPN_TUNNEL};

use crate::config::Config;

pub fn client_config(cfg: &Config) -> Result<quinn::ClientConfig> {
    let files = cfg.identity_files()?;
    let roots = load_roots(&files.ca).context("loading ca")?;
    let certs = load_certs(&files.cert).context("loading cert")?;
    let key = load_key(&files.key).context("loading key")?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .context("cert and key do not form a usable pair")?;
    tls.alpn_protocols = vec![ALPN_TUNNEL.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(transport_config(Side::Agent, cfg.congestion));
    Ok(client)
}
