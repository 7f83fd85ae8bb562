//! `tether-agent`: the on-prem side of Tether.
//!
//! Dials out to the relay over mutual-TLS QUIC (`tunnel`), keeps `connections` of those
//! up for ever (`backoff`), and serves the relay's HTTP/3 requests from local services
//! chosen by the route allowlist (`routes`, `serve`).

mod backoff;
mod config;
mod routes;
mod serve;
mod tls;
mod tunnel;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::routes::Routes;
use crate::serve::{upstream_client, Service};

#[derive(Parser)]
#[command(
    name = "tether-agent",
    version,
    about = "Tether agent: on-prem end of the reverse tunnel"
)]
struct Cli {
    /// TOML config file; TETHER_* environment variables and flags override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Relay QUIC address, host:port.
    #[arg(long)]
    relay: Option<String>,
    /// Name in the relay's certificate.
    #[arg(long)]
    server_name: Option<String>,
    /// Parallel QUIC connections to the relay.
    #[arg(long)]
    connections: Option<usize>,
    /// Log format: pretty or json.
    #[arg(long)]
    log_format: Option<String>,
}

impl Cli {
    fn flags(&self) -> serde_json::Value {
        let v = |o: &Option<String>| o.clone().map(serde_json::Value::from);
        tether_proto::config::flags([
            ("relay", v(&self.relay)),
            ("server_name", v(&self.server_name)),
            ("connections", self.connections.map(serde_json::Value::from)),
            ("log.format", v(&self.log_format)),
        ])
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let cfg: Config = tether_proto::config::load(cli.config.as_deref(), cli.flags())
        .context("invalid agent configuration")?;
    cfg.validate().context("invalid agent configuration")?;
    let routes = Routes::new(&cfg.routes).context("invalid agent configuration")?;
    tether_proto::logging::init(&cfg.log);
    if routes.is_empty() {
        warn!("no routes configured: every request will be answered 404 no-route");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(cfg, routes))
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

async fn run(cfg: Config, routes: Routes) -> Result<()> {
    // Fail fast on unreadable certificates instead of retrying for ever.
    tls::client_config(&cfg)?;
    let service = Arc::new(Service {
        routes,
        client: upstream_client(cfg.upstream_connect_timeout),
    });
    let cfg = Arc::new(cfg);
    let stop = CancellationToken::new();
    info!(relay = %cfg.relay, connections = cfg.connections, "agent starting");
    let slots: Vec<_> = (0..cfg.connections)
        .map(|slot| {
            tokio::spawn(tunnel::run_slot(
                slot,
                cfg.clone(),
                service.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let signal = shutdown_signal().await;
    info!(signal, "shutting down");
    stop.cancel();
    for s in slots {
        let _ = s.await;
    }
    info!("stopped");
    Ok(())
}
