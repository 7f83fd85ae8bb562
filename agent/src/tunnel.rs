//! Keeping tunnels up: each connection slot dials the relay, serves HTTP/3 requests on
//! the connection until it dies, then reconnects with backoff, for ever.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use arc_swap::ArcSwap;
use bytes::Bytes;
use tether_proto::wire::close;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, info_span, warn, Instrument};

use crate::backoff::Backoff;
use crate::config::Config;
use crate::control::ConnControl;
use crate::metrics::Metrics;
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

/// What every connection slot shares.
pub struct Agent {
    /// Swapped whole on reload; each connection attempt reads the current one.
    pub cfg: ArcSwap<Config>,
    pub service: Arc<Service>,
    pub metrics: Arc<Metrics>,
    /// Slots whose tunnel is up (readiness: at least one).
    pub tunnels_up: AtomicUsize,
    /// Cancelled on SIGTERM/SIGINT: drain, then close.
    pub stop: CancellationToken,
}

/// Keeps one tunnel connection up until the agent stops.
pub async fn run_slot(slot: usize, agent: Arc<Agent>) {
    let mut backoff = Backoff::default();
    let labels = Metrics::slot(slot);
    loop {
        let outcome = agent.connect_and_serve(slot).await;
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
        agent.metrics.reconnects.get_or_create(&labels).inc();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = agent.stop.cancelled() => return,
        }
    }
}

impl Agent {
    async fn connect_and_serve(&self, slot: usize) -> Outcome {
        let cfg = self.cfg.load_full();
        let setup = async {
            let client_cfg = crate::tls::client_config(&cfg)?;
            // The certificate in use now: its expiry is what operators alert on.
            if let Ok((_, not_after)) = cfg
                .identity_files()
                .and_then(|f| crate::renew::validity(&f))
            {
                self.metrics.cert_expiry.set(not_after as i64);
            }
            crate::dial::dial(&cfg.relay, &cfg.server_name, client_cfg).await
        };
        // Dialled outside the tunnel's span: quinn runs the endpoint's and the connection's
        // drivers as tasks instrumented with the span current when they are created, and
        // inside this one they would enter and leave it on every poll, several times per
        // request (callgrind: 1.1k of the agent's 78k instructions per request at one
        // caller). Their own logs are debug-level and carry quinn's connection id; setup
        // failures are logged by `run_slot` with the slot.
        let (endpoint, connecting) = match setup.await {
            Ok(x) => x,
            Err(e) => return Outcome::Failed(e),
        };
        self.handshake_and_serve(slot, &cfg, endpoint, connecting)
            .instrument(info_span!("tunnel", slot))
            .await
    }

    async fn handshake_and_serve(
        &self,
        slot: usize,
        cfg: &Config,
        endpoint: quinn::Endpoint,
        connecting: quinn::Connecting,
    ) -> Outcome {
        let conn = tokio::select! {
            r = connecting => match r {
                Ok(c) => c,
                // A relay certificate we do not trust fails here, on our side.
                Err(quinn::ConnectionError::TransportError(e)) if is_crypto(e.code) => {
                    return Outcome::Refused(format!("relay certificate rejected: {e}"));
                }
                Err(e) => return Outcome::Failed(anyhow!(e).context(format!("handshake with {}", cfg.relay))),
            },
            _ = self.stop.cancelled() => return Outcome::Stopped,
        };
        let up_at = Instant::now();
        let gauge = self
            .metrics
            .tunnel_up
            .get_or_create(&Metrics::slot(slot))
            .clone();
        let outcome = self.serve_connection(slot, &conn, cfg, &gauge).await;
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
        &self,
        slot: usize,
        conn: &quinn::Connection,
        cfg: &Config,
        up: &prometheus_client::metrics::gauge::Gauge,
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
        // TLS 1.3 lets our handshake finish before the relay has checked our certificate:
        // a refusal shows up as the first `accept` failing, and is classified there.
        info!(relay = %conn.remote_address(), "tunnel connected");
        up.set(1);
        self.tunnels_up.fetch_add(1, Ordering::Relaxed);
        let _down = scopeguard(|| {
            up.set(0);
            self.tunnels_up.fetch_sub(1, Ordering::Relaxed);
        });
        let control = Arc::new(ConnControl::new(tracing::Span::current()));
        let in_flight = TaskTracker::new();
        // Accepts requests until the connection ends. It lives across the two waits
        // below, so a shutdown never drops an accept in progress; and it is one future,
        // so accepting a request does not rebuild the shutdown, drain and timer futures
        // of a `select!` around each accept (about 600 instructions per request).
        let ended = {
            let accepting = async {
                loop {
                    match h3.accept().await {
                        Ok(Some(resolver)) => {
                            // Boxed: the handler's future is ~4.8 KB, and spawning moves it
                            // through several wrappers; a box moves as one pointer.
                            // Not in the tunnel's span: see `serve::handle`.
                            let request = Box::pin(handle(
                                self.service.clone(),
                                resolver,
                                control.clone(),
                                slot,
                            ));
                            in_flight.spawn(request);
                        }
                        Ok(None) => return served("relay ended the connection".to_owned()),
                        Err(e) => {
                            if let Some(r) = refusal(conn) {
                                return Outcome::Refused(r);
                            }
                            if control.relay_is_draining() {
                                return served("relay shut down".to_owned());
                            }
                            return served(format!("{e}"));
                        }
                    }
                }
            };
            tokio::pin!(accepting);
            tokio::select! {
                biased;
                ended = &mut accepting => ended,
                () = self.stop.cancelled() => {
                    info!("draining: asking the relay to move new requests elsewhere");
                    control.request_drain();
                    tokio::select! {
                        biased;
                        ended = &mut accepting => ended,
                        () = control.drained() => {
                            info!("drained: no request in flight");
                            Outcome::Stopped
                        }
                        () = tokio::time::sleep(cfg.drain_timeout) => {
                            warn!(timeout = ?cfg.drain_timeout, "drain timeout: closing with requests in flight");
                            Outcome::Stopped
                        }
                    }
                }
            }
        };
        if let Outcome::Refused(_) = ended {
            return ended;
        }
        in_flight.close();
        if let Outcome::Stopped = ended {
            conn.close(close::SHUTDOWN.into(), b"agent shutting down");
        }
        // Keep the h3 connection alive until every response task is done: dropping it
        // closes the QUIC connection and cuts buffered response bytes.
        let _ = tokio::time::timeout(Duration::from_secs(5), in_flight.wait()).await;
        drop(h3);
        ended
    }
}

/// A connection that ended for `reason` (its uptime is filled in by the caller).
fn served(reason: String) -> Outcome {
    Outcome::Served {
        uptime: Duration::ZERO,
        reason,
    }
}

/// Runs `f` when dropped.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
