//! The tunnel listener: accepts agents' QUIC connections, reads their identity from the
//! verified certificate, wraps each connection in an HTTP/3 *client* and registers it.

use std::net::SocketAddr;
use std::time::SystemTime;

use bytes::Bytes;
use rustls::pki_types::CertificateDer;
use std::sync::Arc;
use tether_proto::enroll::ALPN_ENROLL;
use tether_proto::tls::identity_from_cert;
use tether_proto::wire::close;
use tracing::{info, info_span, warn, Instrument};

use crate::enroll::Enroller;
use crate::registry::Registry;
use crate::tls::cert_serial;

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
pub async fn accept_loop(
    endpoint: quinn::Endpoint,
    registry: TunnelRegistry,
    enroller: Arc<Enroller>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let registry = registry.clone();
        let enroller = enroller.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            if let Err(e) = handle(incoming, registry, enroller)
                .instrument(info_span!("tunnel", %remote))
                .await
            {
                warn!(error = %format!("{e:#}"), "agent connection failed");
            }
        });
    }
}

fn cert_not_after(der: &[u8]) -> String {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c.validity().not_after.to_string())
        .unwrap_or_default()
}

async fn handle(
    incoming: quinn::Incoming,
    registry: TunnelRegistry,
    enroller: Arc<Enroller>,
) -> anyhow::Result<()> {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            // Certificate problems (wrong CA, expired, no identity, server-only usage,
            // revoked) surface here with the verifier's reason.
            warn!(reason = %e, "agent refused in handshake");
            return Ok(());
        }
    };
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    // Any certificate here was fully verified in the handshake (chain, usage, identity,
    // revocation); parsing again yields the typed identity.
    let peer = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|certs| certs.into_iter().next());
    let identity = peer
        .as_ref()
        .map(|c| identity_from_cert(c, None))
        .transpose()?;
    if alpn.as_deref() == Some(ALPN_ENROLL) {
        let peer = identity.zip(peer.as_ref().map(|c| cert_serial(c)));
        enroller
            .serve(conn, peer)
            .instrument(info_span!("enroll"))
            .await;
        return Ok(());
    }
    let (Some(identity), Some(cert)) = (identity, peer) else {
        warn!("agent refused: no client certificate on the tunnel ALPN");
        conn.close(close::REFUSED.into(), b"client certificate required");
        return Ok(());
    };
    let (cert_serial, cert_not_after) = (cert_serial(&cert), cert_not_after(&cert));
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
