//! The tunnel listener: accepts agents' QUIC connections, reads their identity from the
//! verified certificate, wraps each connection in an HTTP/3 *client* and registers it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use bytes::Bytes;
use rustls::pki_types::CertificateDer;
use tether_proto::control;
use tether_proto::enroll::ALPN_ENROLL;
use tether_proto::tls::identity_from_cert;
use tether_proto::wire::close;
use tether_proto::Identity;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use crate::enroll::Enroller;
use crate::metrics::{HandshakeResult, Metrics, TunnelMetrics};
use crate::registry::{Registry, Tunnel};
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
    /// This tunnel's cached metric handles.
    pub metrics: TunnelMetrics,
}

pub type TunnelRegistry = Registry<Link>;

/// Everything a new connection needs; shared by all of them.
pub struct Acceptor {
    pub registry: TunnelRegistry,
    /// Swapped on reload.
    pub enroller: ArcSwap<Enroller>,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the relay shuts down: every control stream then says `drain`.
    pub shutdown: CancellationToken,
}

/// Accepts agents until the endpoint is closed.
pub async fn accept_loop(endpoint: quinn::Endpoint, acceptor: Arc<Acceptor>) {
    while let Some(incoming) = endpoint.accept().await {
        let acceptor = acceptor.clone();
        let remote = incoming.remote_address();
        // Accepted outside the tunnel's span: quinn runs the connection's driver as a task
        // instrumented with the span current when it is created, and inside this one it
        // would enter and leave it on every poll, several times per request. Its own logs
        // are debug-level and carry quinn's connection id.
        let connecting = incoming.accept();
        tokio::spawn(async move {
            if let Err(e) = acceptor
                .handle(connecting)
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

/// TLS alerts rustls sends for a refused certificate (bad_certificate,
/// unsupported_certificate, certificate_revoked/expired/unknown, unknown_ca,
/// access_denied, decrypt_error, certificate_required): those handshakes were already
/// counted, with their reason, by the certificate verifier.
const CERTIFICATE_ALERTS: [u64; 9] = [42, 43, 44, 45, 46, 48, 49, 51, 116];

fn is_certificate_refusal(e: &quinn::ConnectionError) -> bool {
    matches!(e, quinn::ConnectionError::TransportError(t)
        if CERTIFICATE_ALERTS.iter().any(|alert| u64::from(t.code) == 0x100 + alert))
}

/// Reads the agent's side of the control stream into control events until it ends.
async fn control_events(
    recv: &mut h3::client::RequestStream<h3_quinn::RecvStream, Bytes>,
    mut on_event: impl FnMut(control::Event),
) -> Result<(), h3::error::StreamError> {
    let mut decoder = control::Decoder::default();
    while let Some(mut chunk) = recv.recv_data().await? {
        use bytes::Buf;
        let bytes = chunk.copy_to_bytes(chunk.remaining());
        decoder.push(&bytes, &mut on_event);
    }
    Ok(())
}

impl Acceptor {
    async fn handle(
        &self,
        connecting: Result<quinn::Connecting, quinn::ConnectionError>,
    ) -> anyhow::Result<()> {
        let conn = match async { connecting?.await }.await {
            Ok(c) => c,
            Err(e) => {
                // Certificate problems (wrong CA, expired, no identity, server-only
                // usage, revoked) surface here with the verifier's reason.
                if !is_certificate_refusal(&e) {
                    self.metrics
                        .handshake(HandshakeResult::Refused, "handshake-failed");
                }
                warn!(reason = %e, "agent refused in handshake");
                return Ok(());
            }
        };
        let alpn = conn
            .handshake_data()
            .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|d| d.protocol);
        // Any certificate here was fully verified in the handshake (chain, usage,
        // identity, revocation); parsing again yields the typed identity.
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
            self.enroller
                .load_full()
                .serve(conn, peer)
                .instrument(info_span!("enroll"))
                .await;
            return Ok(());
        }
        let (Some(identity), Some(cert)) = (identity, peer) else {
            self.metrics
                .handshake(HandshakeResult::Refused, "no-client-certificate");
            warn!("agent refused: no client certificate on the tunnel ALPN");
            conn.close(close::REFUSED.into(), b"client certificate required");
            return Ok(());
        };
        let span = info_span!(
            "agent",
            node = %identity.node,
            cluster = %identity.cluster,
            conn = tracing::field::Empty
        );
        let remote = conn.remote_address();
        self.serve_tunnel(conn, remote, identity, &cert)
            .instrument(span)
            .await
    }

    async fn serve_tunnel(
        &self,
        conn: quinn::Connection,
        remote: SocketAddr,
        identity: Identity,
        cert: &[u8],
    ) -> anyhow::Result<()> {
        let (mut driver, sender) = h3::client::builder()
            .send_grease(false)
            .build::<_, _, Bytes>(h3_quinn::Connection::new(conn.clone()))
            .await?;
        let link = Link {
            sender: sender.clone(),
            conn: conn.clone(),
            remote,
            connected_at: SystemTime::now(),
            cert_serial: cert_serial(cert),
            cert_not_after: cert_not_after(cert),
            metrics: self.metrics.for_tunnel(&identity),
        };
        let node = identity.node.clone();
        let tunnel = match self.registry.register(identity, link) {
            Ok(t) => t,
            Err(e) => {
                self.metrics
                    .handshake(HandshakeResult::Refused, "cluster-conflict");
                warn!(error = %e, "refusing tunnel");
                conn.close(close::REFUSED.into(), e.to_string().as_bytes());
                return Ok(());
            }
        };
        self.metrics.handshake(HandshakeResult::Accepted, "");
        let conn_id = tunnel.conn_id;
        tracing::Span::current().record("conn", conn_id);
        info!(connections = self.registry.connection_count(), "tunnel up");
        let control =
            tokio::spawn(run_control(sender, tunnel, self.shutdown.clone()).in_current_span());
        let reason = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        control.abort();
        self.registry.unregister(&node, conn_id);
        let orderly = match conn.close_reason() {
            Some(quinn::ConnectionError::ApplicationClosed(c)) => {
                c.error_code == close::SHUTDOWN.into()
            }
            Some(quinn::ConnectionError::LocallyClosed) => true,
            _ => false,
        };
        if orderly {
            info!("tunnel closed");
        } else {
            info!(reason = %reason, "tunnel lost");
        }
        Ok(())
    }
}

/// The relay's end of a tunnel's control stream (see `tether_proto::control`): answers
/// an agent's `drain` once its streams in flight are done, and tells the agent when the
/// relay itself is shutting down.
async fn run_control(
    mut sender: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    tunnel: Arc<Tunnel<Link>>,
    shutdown: CancellationToken,
) {
    let req = http::Request::post(format!("http://tether{}", control::CONTROL_PATH))
        .body(())
        .expect("static request is valid");
    let result = async {
        let stream = sender.send_request(req).await?;
        let (mut send, mut recv) = stream.split();
        recv.recv_response().await?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let reader = control_events(&mut recv, |e| {
            let _ = tx.send(e);
        });
        tokio::pin!(reader);
        let mut told_shutdown = false;
        loop {
            tokio::select! {
                r = &mut reader => return r,
                Some(event) = rx.recv() => {
                    if event == control::Event::Drain {
                        info!("agent is draining: no new requests for this connection");
                        tunnel.set_draining();
                        let deadline = tokio::time::Instant::now() + DRAIN_WAIT;
                        while tunnel.open_streams() > 0 && tokio::time::Instant::now() < deadline {
                            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        }
                        send.send_data(Bytes::from_static(control::Event::Drained.as_line())).await?;
                    }
                }
                _ = shutdown.cancelled(), if !told_shutdown => {
                    told_shutdown = true;
                    send.send_data(Bytes::from_static(control::Event::Drain.as_line())).await?;
                }
            }
        }
    };
    if let Err(e) = result.await {
        tracing::debug!(error = %e, "control stream ended");
    }
}

/// Longest the relay waits for a draining connection's streams before answering
/// `drained` anyway (the agent bounds its own wait too).
const DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
