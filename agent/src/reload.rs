//! Reloading the configuration without dropping tunnels or requests in flight: on SIGHUP
//! and whenever the config file changes. The new routes apply to the next request, and
//! the relay address and identity files to the next connection. A config that does not
//! load is refused with a log line; the old one stays in force.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::routes::Routes;
use crate::tunnel::Agent;

/// How often the config file's modification time is checked.
const POLL: Duration = Duration::from_secs(2);

/// Where the configuration comes from: the file plus the command-line flags.
pub struct Source {
    pub file: Option<PathBuf>,
    pub flags: serde_json::Value,
}

impl Source {
    /// Loads and checks everything a running agent would use.
    pub fn load(&self, metrics: &Metrics) -> Result<(Config, Routes)> {
        let cfg: Config = tether_proto::config::load(self.file.as_deref(), self.flags.clone())?;
        cfg.validate()?;
        let routes = Routes::new(&cfg.routes, metrics)?;
        Ok((cfg, routes))
    }

    fn stamp(&self) -> Option<(SystemTime, u64)> {
        let m = std::fs::metadata(self.file.as_ref()?).ok()?;
        Some((m.modified().ok()?, m.len()))
    }
}

/// Applies a new configuration to the running agent.
fn apply(agent: &Agent, source: &Source) -> Result<()> {
    let (cfg, routes) = source
        .load(&agent.metrics)
        .context("new configuration refused")?;
    crate::tls::client_config(&cfg).context("new identity files refused")?;
    let old = agent.cfg.load();
    if cfg.connections != old.connections {
        warn!(
            old = old.connections,
            new = cfg.connections,
            "`connections` changes on restart only"
        );
    }
    if cfg.runtime != old.runtime {
        warn!("`runtime` changes on restart only");
    }
    agent.service.routes.store(Arc::new(routes));
    agent.cfg.store(Arc::new(cfg));
    Ok(())
}

/// Reloads on SIGHUP and on changes to the config file, until the agent stops.
pub async fn watch(agent: Arc<Agent>, source: Source) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot watch SIGHUP; reload by file change only");
            return;
        }
    };
    let mut last = source.stamp();
    loop {
        let why = tokio::select! {
            _ = hup.recv() => "SIGHUP",
            _ = tokio::time::sleep(POLL) => {
                let now = source.stamp();
                if now == last { continue; }
                last = now;
                "config file changed"
            }
            _ = agent.stop.cancelled() => return,
        };
        match apply(&agent, &source) {
            Ok(()) => info!(trigger = why, "configuration reloaded"),
            Err(e) => {
                error!(trigger = why, error = %format!("{e:#}"), "configuration reload refused; the previous configuration stays in force")
            }
        }
    }
}
