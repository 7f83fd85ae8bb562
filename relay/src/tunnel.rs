//! The tunnel listener: accepts agents' QUIC connections, reads their identity from the
//! verified certificate, wraps each connection in an HTTP/3 *client* and registers it.

use std::net::SocketAddr;
use std::time::SystemTime;

use bytes::Bytes;
use rustls::pki_types::CertificateDer;
use tether_proto::tls::identity_from_cert;
use tether_proto::wire::close;
use tracing::{info, info_span, warn, Instrument};

use crate::registry::Registry;

/// What the registry holds for each tunnel connection.
pub struct Link {
    /// Opens request streams; cloned per request (an atomic increment).
    pub sender: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    pub conn: quinn::Connection,
    pub remote: SocketAddr,
    pub connected_at: SystemTime,
    pub cert_serial: String,
    pub cert_not_after: String,
}

pub type TunnelRegistry = Registry<Link>;

/// Accepts agents until the endpoint is closed.
pub async fn accept_loop(endpoint: quinn::Endpoint, registry: TunnelRegistry) {
    while let Some(incoming) = endpoint.accept().await {
        let registry = registry.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            if let Err(e) = handle(incoming, registry)
                .instrument(info_span!("tunnel", %remote))
                .await
            {
                warn!(error = %format!("{e:#}"), "agent connection failed");
            }
        });
    }
}

fn cert_facts(der: &[u8]) -> (String, String) {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, c)) => (c.raw_serial_as_string(), c.validity().not_after.to_string()),
        Err(_) => (String::new(), String::new()),
    }
}

async fn handle(incoming: quinn::Incoming, registry: TunnelRegistry) -> anyhow::Result<()> {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            // Certificate problems (wrong CA, expired, no identity, server-only usage)
            // surface here with rustls' reason.
            warn!(reason = %e, "agent refused in handshake");
            return Ok(());
        }
    };
    let certs = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .filter(|certs| !certs.is_empty())
        .ok_or_else(|| anyhow::anyhow!("verified connection carries no client certificate"))?;
    // Already checked by the verifier; parsing again here yields the typed identity.
    let identity = identity_from_cert(&certs[0], None)?;
    let (cert_serial, cert_not_after) = cert_facts(&certs[0]);
    let span = info_span!(
        "agent",
        node = %identity.node,
        cluster = %identity.cluster,
        conn = tracing::field::Empty
    );
    async move {
        let (mut driver, sender) = h3::client::builder()
            .send_grease(false)
            .build::<_, _, Bytes>(h3_quinn::Connection::new(conn.clone()))
            .await?;
        let link = Link {
            sender,
            conn: conn.clone(),
            remote,
            connected_at: SystemTime::now(),
            cert_serial,
            cert_not_after,
        };
        let node = identity.node.clone();
        let tunnel = match registry.register(identity, link) {
            Ok(t) => t,
            Err(e) => {
                warn!(error = %e, "refusing tunnel");
                conn.close(close::REFUSED.into(), e.to_string().as_bytes());
                return Ok(());
            }
        };
        let conn_id = tunnel.conn_id;
        drop(tunnel);
        tracing::Span::current().record("conn", conn_id);
        info!(connections = registry.connection_count(), "tunnel up");
        let reason = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        registry.unregister(&node, conn_id);
        info!(reason = %reason, "tunnel down");
        Ok(())
    }
    .instrument(span)
    .await
}
