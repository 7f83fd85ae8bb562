//! `quic-raw`: the floor under any tunnel built on Tether's QUIC transport.
//!
//! A TCP tunnel like rathole, but over QUIC exactly as Tether's relay and agent run it:
//! the same quinn endpoint and UDP socket (`tether_proto::udp_socket`), the same mutual
//! TLS 1.3 with the same certificates and cipher suites, the same transport settings and
//! congestion controller (`tether_proto::wire`), the same runtime shape
//! (`tether_proto::runtime`), and the same direction (the "agent" dials out, the "relay"
//! opens a stream towards it). What it leaves out is all of HTTP: each caller's TCP
//! connection becomes one bidirectional stream and its bytes are copied as they are, with
//! no parsing, no HTTP/3 framing, no QPACK, no routing and no logging.
//!
//! So the added latency of this target is what QUIC alone costs on the path, and Tether's
//! added latency minus this one is what HTTP costs on top (both measured in the same run).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::server::WebPkiClientVerifier;
use tether_proto::congestion::Congestion;
use tether_proto::tls::{load_certs, load_key, load_roots, provider};
use tether_proto::udp_socket::{connected_client_endpoint, endpoint};
use tether_proto::wire::{transport_config, Side};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Its own ALPN: this is not Tether's protocol, and a Tether relay must never accept it.
pub const ALPN: &[u8] = b"tether-bench-raw";

/// The "relay": accepts the agent's QUIC connection on `quic` and callers' TCP
/// connections on `tcp`; each caller gets one stream to the newest agent connection.
pub async fn relay(tcp: SocketAddr, quic: SocketAddr, pki: &Path) -> Result<()> {
    let roots = Arc::new(load_roots(&pki.join("ca.pem"))?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .context("client verifier")?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            load_certs(&pki.join("relay.pem"))?,
            load_key(&pki.join("relay.key"))?,
        )?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(transport_config(Side::Relay, Congestion::default()));
    let endpoint = endpoint(quic, quinn::EndpointConfig::default(), Some(server))
        .with_context(|| format!("binding {quic}"))?;
    let listener = TcpListener::bind(tcp)
        .await
        .with_context(|| format!("binding {tcp}"))?;

    let (agent_tx, agent_rx) = watch::channel(None::<quinn::Connection>);
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            match incoming.await {
                Ok(conn) => {
                    agent_tx.send_replace(Some(conn));
                }
                Err(e) => eprintln!("quic-raw relay: handshake failed: {e}"),
            }
        }
    });
    loop {
        let (caller, _) = listener.accept().await?;
        let agent = agent_rx.borrow().clone();
        tokio::spawn(async move {
            let Some(agent) = agent else {
                return; // No agent yet: the caller sees its connection close.
            };
            if let Err(e) = relay_caller(caller, agent).await {
                eprintln!("quic-raw relay: {e:#}");
            }
        });
    }
}

async fn relay_caller(caller: TcpStream, agent: quinn::Connection) -> Result<()> {
    caller.set_nodelay(true)?;
    let (send, recv) = agent.open_bi().await.context("opening a stream")?;
    splice(caller, send, recv).await
}

/// The "agent": dials the relay at `quic` and carries each stream the relay opens to a
/// new TCP connection to `upstream`.
pub async fn agent(quic: SocketAddr, upstream: SocketAddr, pki: &Path) -> Result<()> {
    let cfg = crate::agents::client_config(
        &pki.join("ca.pem"),
        &pki.join("bench.pem"),
        &pki.join("bench.key"),
        ALPN,
    )?;
    let endpoint = connected_client_endpoint(quic)?;
    let conn = endpoint
        .connect_with(cfg, quic, "localhost")?
        .await
        .context("connecting to the quic-raw relay")?;
    while let Ok((send, recv)) = conn.accept_bi().await {
        tokio::spawn(async move {
            let r = async {
                let tcp = TcpStream::connect(upstream).await?;
                tcp.set_nodelay(true)?;
                splice(tcp, send, recv).await
            };
            if let Err(e) = r.await {
                eprintln!("quic-raw agent: {e:#}");
            }
        });
    }
    Ok(())
}

/// Copies a TCP connection and a QUIC stream into each other until both directions have
/// ended, passing each end-of-stream on (`finish` / TCP shutdown).
async fn splice(
    tcp: TcpStream,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<()> {
    let (mut tcp_r, mut tcp_w) = tcp.into_split();
    let up = async {
        tokio::io::copy(&mut tcp_r, &mut send).await?;
        send.finish()?;
        anyhow::Ok(())
    };
    let down = async {
        tokio::io::copy(&mut recv, &mut tcp_w).await?;
        tcp_w.shutdown().await?;
        anyhow::Ok(())
    };
    tokio::try_join!(up, down)?;
    Ok(())
}
