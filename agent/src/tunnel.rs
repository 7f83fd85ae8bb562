//! Keeping tunnels up: each connection slot dials the relay, serves HTTP/3 requests on
//! the connection until it dies, then reconnects with backoff, for ever.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use tether_proto::wire::close;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, info_span, warn, Instrument};

use crate::backoff::Backoff;
use crate::config::Config;
use crate::serve::{handle, Service};

/// A connection that stayed up this long was healthy: the next failure starts the
/// backoff from the beginning.
const HEALTHY_AFTER: Duration = Duration::from_secs(5);

/// How a connection attempt ended.
enum Outcome {
    /// Connected and served until the connection ended.
    Served { uptime: Duration, reason: String },
    /// The relay refused our identity (or we refused the relay's).
    Refused(String),
    /// Could not connect at all.
    Failed(anyhow::Error),
    /// Shutdown was requested.
    Stopped,
}

/// TLS alerts travel as QUIC CRYPTO_ERROR codes 0x100..=0x1ff.
fn is_crypto(code: quinn::TransportErrorCode) -> bool {
    (0x100..=0x1ff).contains(&u64::from(code))
}

/// Did the relay close this connection because of who we are?
fn refusal(conn: &quinn::Connection) -> Option<String> {
    match conn.close_reason()? {
        quinn::ConnectionError::ConnectionClosed(c) if is_crypto(c.error_code) => Some(format!(
            "relay refused our certificate: {}",
            String::from_utf8_lossy(&c.reason)
        )),
        quinn::ConnectionError::ApplicationClosed(c) if c.error_code == close::REFUSED.into() => {
            Some(format!(
                "relay refused this agent: {}",
                String::from_utf8_lossy(&c.reason)
            ))
        }
        _ => None,
    }
}

async fn resolve(relay: &str) -> Result<SocketAddr> {
    tokio::net::lookup_host(relay)
        .await
        .with_context(|| format!("resolving relay {relay}"))?
        .next()
        .ok_or_else(|| anyhow!("relay {relay} resolves to no address"))
}

/// Keeps one tunnel connection up until `stop` is cancelled.
pub async fn run_slot(
    slot: usize,
    cfg: Arc<Config>,
    service: Arc<Service>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::default();
    loop {
        let outcome = connect_and_serve(&cfg, &service, &stop)
            .instrument(info_span!("tunnel", slot))
            .await;
        let delay = match outcome {
            Outcome::Stopped => return,
            Outcome::Served { uptime, reason } => {
                if uptime >= HEALTHY_AFTER {
                    backoff.reset();
                }
                let d = backoff.next_delay();
                warn!(slot, reason, retry_in = ?d, "tunnel lost; reconnecting");
                d
            }
            Outcome::Refused(reason) => {
                let d = backoff.next_after_refusal();
                error!(slot, reason, attempt = backoff.attempt(), retry_in = ?d, "authentication failed");
                d
            }
            Outcome::Failed(e) => {
                let d = backoff.next_delay();
                warn!(slot, error = %format!("{e:#}"), attempt = backoff.attempt(), retry_in = ?d, "cannot reach relay");
                d
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return,
        }
    }
}

async fn connect_and_serve(
    cfg: &Config,
    service: &Arc<Service>,
    stop: &CancellationToken,
) -> Outcome {
    let setup = async {
        let client_cfg = crate::tls::client_config(cfg)?;
        let addr = resolve(&cfg.relay).await?;
        let bind: SocketAddr = if addr.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        }
        .parse()?;
        let mut endpoint = quinn::Endpoint::client(bind).context("binding a UDP socket")?;
        endpoint.set_default_client_config(client_cfg);
        let connecting = endpoint
            .connect(addr, &cfg.server_name)
            .with_context(|| format!("connecting to {addr}"))?;
        Ok::<_, anyhow::Error>((endpoint, connecting))
    };
    let (endpoint, connecting) = match setup.await {
        Ok(x) => x,
        Err(e) => return Outcome::Failed(e),
    };
    let conn = tokio::select! {
        r = connecting => match r {
            Ok(c) => c,
            // A relay certificate we do not trust fails here, on our side.
            Err(quinn::ConnectionError::TransportError(e)) if is_crypto(e.code) => {
                return Outcome::Refused(format!("relay certificate rejected: {e}"));
            }
            Err(e) => return Outcome::Failed(anyhow!(e).context(format!("handshake with {}", cfg.relay))),
        },
        _ = stop.cancelled() => return Outcome::Stopped,
    };
    let up_at = Instant::now();
    let outcome = serve_connection(&conn, service, stop).await;
    // Let the close frame reach the relay before the socket goes away.
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    match outcome {
        Outcome::Served { reason, .. } => Outcome::Served {
            uptime: up_at.elapsed(),
            reason,
        },
        other => other,
    }
}

async fn serve_connection(
    conn: &quinn::Connection,
    service: &Arc<Service>,
    stop: &CancellationToken,
) -> Outcome {
    let mut h3 = match h3::server::builder()
        .send_grease(false)
        .build::<_, Bytes>(h3_quinn::Connection::new(conn.clone()))
        .await
    {
        Ok(h3) => h3,
        Err(e) => {
            return match refusal(conn) {
                Some(r) => Outcome::Refused(r),
                None => Outcome::Failed(anyhow!("starting HTTP/3: {e}")),
            };
        }
    };
    // TLS 1.3 lets our handshake finish before the relay has checked our certificate: a
    // refusal shows up as the first `accept` failing, and is classified there.
    info!(relay = %conn.remote_address(), "tunnel connected");
    let in_flight = TaskTracker::new();
    let reason = loop {
        tokio::select! {
            r = h3.accept() => match r {
                Ok(Some(resolver)) => {
                    in_flight.spawn(handle(service.clone(), resolver).in_current_span());
                }
                Ok(None) => break "relay ended the connection".to_owned(),
                Err(e) => {
                    if let Some(r) = refusal(conn) {
                        return Outcome::Refused(r);
                    }
                    break format!("{e}");
                }
            },
            _ = stop.cancelled() => {
                conn.close(close::SHUTDOWN.into(), b"agent shutting down");
                return Outcome::Stopped;
            }
        }
    };
    in_flight.close();
    // Keep the h3 connection alive until every response task is done: dropping it
    // closes the QUIC connection and cuts buffered response bytes.
    let _ = tokio::time::timeout(Duration::from_secs(5), in_flight.wait()).await;
    drop(h3);
    Outcome::Served {
        uptime: Duration::ZERO,
        reason,
    }
}
