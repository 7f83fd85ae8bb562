//! Reloading the relay's configuration without dropping tunnels or requests in flight:
//! on SIGHUP and whenever the config file changes. Routing settings (headers, timeout)
//! apply to the next request, certificates and the congestion controller to the next
//! handshake, enrollment settings to the next enrollment; tunnels and requests in flight
//! are untouched. A config that does not load is refused with a log line and the old one
//! stays in force. Listen addresses and the runtime's shape change on restart only.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::enroll::Enroller;
use crate::ingress::Router;
use crate::metrics::Metrics;
use crate::revocation::RevocationList;
use crate::tunnel::{Acceptor, TunnelRegistry};

/// How often the config file's modification time is checked.
const POLL: Duration = Duration::from_secs(2);

/// Where the configuration comes from: the file plus the command-line flags.
pub struct Source {
    pub file: Option<PathBuf>,
    pub flags: serde_json::Value,
}

impl Source {
    pub fn load(&self) -> Result<Config> {
        Ok(tether_proto::config::load(
            self.file.as_deref(),
            self.flags.clone(),
        )?)
    }

    fn stamp(&self) -> Option<(SystemTime, u64)> {
        let m = std::fs::metadata(self.file.as_ref()?).ok()?;
        Some((m.modified().ok()?, m.len()))
    }
}

/// The parts of the running relay a reload replaces.
pub struct Live {
    pub source: Source,
    pub current: ArcSwap<Config>,
    pub router: Arc<ArcSwap<Router>>,
    pub acceptor: Arc<Acceptor>,
    pub endpoint: quinn::Endpoint,
    pub registry: TunnelRegistry,
    pub metrics: Arc<Metrics>,
    pub revocations: Arc<RevocationList>,
}

impl Live {
    /// Builds everything from the new config first, then swaps it all in; any error
    /// leaves the running configuration untouched.
    fn apply(&self) -> Result<()> {
        let cfg = self.source.load().context("new configuration refused")?;
        let router = Router::new(&cfg.ingress, self.registry.clone(), self.metrics.clone())?;
        let tls =
            crate::tls::server_config(&cfg.tunnel, self.revocations.clone(), self.metrics.clone())
                .context("new tunnel certificates refused")?;
        let enroller = Enroller::new(&cfg, self.revocations.clone())?;
        let old = self.current.load();
        for (what, changed) in [
            ("tunnel.listen", old.tunnel.listen != cfg.tunnel.listen),
            ("ingress.listen", old.ingress.listen != cfg.ingress.listen),
            (
                "admin",
                old.admin.listen != cfg.admin.listen || old.admin.enabled != cfg.admin.enabled,
            ),
            ("runtime", old.runtime != cfg.runtime),
            (
                "tunnel.revocations",
                old.tunnel.revocations_path() != cfg.tunnel.revocations_path(),
            ),
        ] {
            if changed {
                warn!(setting = what, "this setting changes on restart only");
            }
        }
        self.endpoint.set_server_config(Some(tls));
        self.router.store(Arc::new(router));
        self.acceptor.enroller.store(Arc::new(enroller));
        self.current.store(Arc::new(cfg));
        Ok(())
    }

    /// Reloads on SIGHUP and on changes to the config file until the task is dropped.
    pub async fn watch(self) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "cannot watch SIGHUP; reload by file change only");
                return;
            }
        };
        let mut last = self.source.stamp();
        loop {
            let why = tokio::select! {
                _ = hup.recv() => "SIGHUP",
                _ = tokio::time::sleep(POLL) => {
                    let now = self.source.stamp();
                    if now == last { continue; }
                    last = now;
                    "config file changed"
                }
            };
            match self.apply() {
                Ok(()) => info!(trigger = why, "configuration reloaded"),
                Err(e) => {
                    error!(trigger = why, error = %format!("{e:#}"), "configuration reload refused; the previous configuration stays in force")
                }
            }
        }
    }
}
