//! Many idle agents from one process: QUIC client connections exactly as the agent makes
//! them (ALPN, transport config, client certificate), each serving HTTP/3 requests with
//! a small 200 response.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::Response;
use tether_proto::congestion::Congestion;
use tether_proto::tls::{load_certs, load_key, load_roots, provider};
use tether_proto::wire::{transport_config, Side};
use tokio::sync::Semaphore;

/// The rustls/quinn client config an agent with this certificate would use, offering
/// `alpn` (Tether's is `tether_proto::wire::ALPN_TUNNEL`).
pub fn client_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
    alpn: &[u8],
) -> Result<quinn::ClientConfig> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(load_roots(ca)?)
        .with_client_auth_cert(load_certs(cert)?, load_key(key)?)?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut c = quinn::ClientConfig::new(Arc::new(crypto));
    c.transport_config(transport_config(Side::Agent, Congestion::default()));
    Ok(c)
}

/// One fake agent connection: how many requests it has served.
pub struct FakeAgent {
    pub conn: quinn::Connection,
    pub served: Arc<AtomicU64>,
}

pub struct Fleet {
    pub endpoints: Vec<quinn::Endpoint>,
    pub agents: Vec<FakeAgent>,
    /// Handshakes that had to be tried again (as a real agent would, after a backoff).
    pub retries: u64,
    /// Connections that never came up (after [`ATTEMPTS`] tries).
    pub failed: u64,
}

/// Tries per connection before it counts as failed.
const ATTEMPTS: u32 = 5;

async fn connect_one(
    ep: &quinn::Endpoint,
    cfg: quinn::ClientConfig,
    relay: SocketAddr,
) -> Result<(
    quinn::Connection,
    h3::server::Connection<h3_quinn::Connection, Bytes>,
)> {
    let conn = ep
        .connect_with(cfg, relay, "localhost")?
        .await
        .context("handshake")?;
    let h3c = h3::server::builder()
        .send_grease(false)
        .build::<_, Bytes>(h3_quinn::Connection::new(conn.clone()))
        .await
        .context("h3")?;
    Ok((conn, h3c))
}

/// Connects `configs.len() * per_node` agent connections to `relay`, at most
/// `parallel` handshakes at a time, spread over one UDP socket per 1,000 connections.
pub async fn connect(
    relay: SocketAddr,
    configs: &[quinn::ClientConfig],
    per_node: usize,
    parallel: usize,
) -> Result<Fleet> {
    let total = configs.len() * per_node;
    let n_ep = total.div_ceil(1000).max(1);
    let mut endpoints = Vec::new();
    for _ in 0..n_ep {
        endpoints.push(tether_proto::udp_socket::client_endpoint(
            "127.0.0.1:0".parse()?,
        )?);
    }
    let sem = Arc::new(Semaphore::new(parallel));
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let cfg = configs[i % configs.len()].clone();
        let ep = endpoints[i % n_ep].clone();
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let mut tries = 0;
            loop {
                tries += 1;
                match connect_one(&ep, cfg.clone(), relay).await {
                    Ok((conn, h3c)) => {
                        let served = Arc::new(AtomicU64::new(0));
                        tokio::spawn(serve(h3c, served.clone()));
                        return Ok::<_, anyhow::Error>((Some(FakeAgent { conn, served }), tries));
                    }
                    Err(_) if tries < ATTEMPTS => {
                        tokio::time::sleep(Duration::from_millis(200 * u64::from(tries))).await
                    }
                    Err(_) => return Ok((None, tries)),
                }
            }
        }));
    }
    let mut agents = Vec::with_capacity(total);
    let (mut retries, mut failed) = (0, 0);
    for t in tasks {
        let (a, tries) = t.await??;
        retries += u64::from(tries - 1);
        match a {
            Some(a) => agents.push(a),
            None => failed += 1,
        }
    }
    Ok(Fleet {
        endpoints,
        agents,
        retries,
        failed,
    })
}

async fn serve(
    mut h3c: h3::server::Connection<h3_quinn::Connection, Bytes>,
    served: Arc<AtomicU64>,
) {
    while let Ok(Some(resolver)) = h3c.accept().await {
        let served = served.clone();
        tokio::spawn(async move {
            let Ok((_req, mut stream)) = resolver.resolve_request().await else {
                return;
            };
            while let Ok(Some(_)) = stream.recv_data().await {}
            let resp = Response::builder().status(200).body(()).expect("response");
            if stream.send_response(resp).await.is_ok()
                && stream.send_data(Bytes::from_static(b"ok")).await.is_ok()
                && stream.finish().await.is_ok()
            {
                served.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    // Keeps `h3c` (and so the connection) alive until the relay ends it.
}

impl Fleet {
    pub async fn close(self) {
        for a in &self.agents {
            a.conn.close(0u32.into(), b"bench done");
        }
        for ep in &self.endpoints {
            let _ = tokio::time::timeout(Duration::from_secs(3), ep.wait_idle()).await;
        }
    }
}
