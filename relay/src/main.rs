//! `tether-relay`: the cloud side of Tether.
//!
//! Accepts agents' mutual-TLS QUIC connections (`tunnel`), accepts cloud callers' HTTP
//! (`ingress`), and carries each request down the chosen agent's connection as an HTTP/3
//! request stream (`forward`). The `registry` maps node and cluster IDs to live tunnels.

mod access_log;
mod admin;
mod config;
mod enroll;
mod forward;
mod ingress;
mod metrics;
mod registry;
mod reload;
mod revocation;
mod tls;
mod tunnel;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use clap::Parser;
use tether_proto::wire::close;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::tunnel::TunnelRegistry;

/// mimalloc (through `tether_proto::alloc`) instead of the system allocator: glibc
/// malloc/free were about 12 % of the CPU per request under load (perf), mostly
/// short-lived per-request buffers; measured +13 % req/s through one tunnel
/// (bench/RESULTS.md).
#[global_allocator]
static GLOBAL: tether_proto::alloc::Allocator = tether_proto::alloc::Allocator;

#[derive(Parser)]
#[command(
    name = "tether-relay",
    version,
    about = "Tether relay: cloud end of the reverse tunnel"
)]
struct Cli {
    /// TOML config file; TETHER_* environment variables and flags override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// QUIC (UDP) address agents connect to.
    #[arg(long)]
    tunnel_listen: Option<String>,
    /// HTTP address cloud callers send requests to.
    #[arg(long)]
    ingress_listen: Option<String>,
    /// Admin HTTP address (health, /api/nodes).
    #[arg(long)]
    admin_listen: Option<String>,
    /// Request timeout for the response head, e.g. "30s".
    #[arg(long)]
    request_timeout: Option<String>,
    /// Log format: pretty or json.
    #[arg(long)]
    log_format: Option<String>,
}

impl Cli {
    fn flags(&self) -> serde_json::Value {
        let v = |o: &Option<String>| o.clone().map(serde_json::Value::from);
        tether_proto::config::flags([
            ("tunnel.listen", v(&self.tunnel_listen)),
            ("ingress.listen", v(&self.ingress_listen)),
            ("ingress.request_timeout", v(&self.request_timeout)),
            ("admin.listen", v(&self.admin_listen)),
            ("log.format", v(&self.log_format)),
        ])
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let source = reload::Source {
        file: cli.config.clone(),
        flags: cli.flags(),
    };
    let cfg: Config = source.load().context("invalid relay configuration")?;
    let _log = tether_proto::logging::init(&cfg.log);
    let rt = cfg.runtime.build("tether-relay")?;
    let result = rt.block_on(run(cfg, source));
    if let Err(e) = &result {
        tracing::error!(error = %format!("{e:#}"), "relay failed");
    }
    result
}

async fn run(cfg: Config, source: reload::Source) -> Result<()> {
    let registry = TunnelRegistry::default();
    let metrics = Arc::new(metrics::Metrics::default());
    let revocations = Arc::new(revocation::RevocationList::load(
        cfg.tunnel.revocations_path(),
    )?);
    let enroller = Arc::new(enroll::Enroller::new(&cfg, revocations.clone())?);

    let endpoint = tether_proto::udp_socket::endpoint(
        cfg.tunnel.listen,
        tls::endpoint_config(&cfg.tunnel)?,
        Some(tls::server_config(
            &cfg.tunnel,
            revocations.clone(),
            metrics.clone(),
        )?),
    )
    .with_context(|| format!("binding tunnel.listen {}", cfg.tunnel.listen))?;
    info!(addr = %endpoint.local_addr()?, "tunnel listening");

    let ingress = TcpListener::bind(cfg.ingress.listen)
        .await
        .with_context(|| format!("binding ingress.listen {}", cfg.ingress.listen))?;
    info!(addr = %ingress.local_addr()?, "ingress listening");

    if cfg.admin.enabled {
        let admin = TcpListener::bind(cfg.admin.listen)
            .await
            .with_context(|| format!("binding admin.listen {}", cfg.admin.listen))?;
        info!(addr = %admin.local_addr()?, "admin listening");
        tokio::spawn(admin::serve(
            admin,
            admin::Admin {
                registry: registry.clone(),
                metrics: metrics.clone(),
            },
        ));
    }

    let stop = CancellationToken::new();
    tokio::spawn(revocations.clone().watch(registry.clone()));
    let acceptor = Arc::new(tunnel::Acceptor {
        registry: registry.clone(),
        enroller: ArcSwap::new(enroller),
        metrics: metrics.clone(),
        shutdown: stop.clone(),
    });
    tokio::spawn(tunnel::accept_loop(endpoint.clone(), acceptor.clone()));
    let router = Arc::new(ArcSwap::from_pointee(ingress::Router::new(
        &cfg.ingress,
        registry.clone(),
        metrics.clone(),
    )?));
    let drain_timeout = cfg.ingress.drain_timeout;
    tokio::spawn(
        reload::Live {
            source,
            current: ArcSwap::from_pointee(cfg),
            router: router.clone(),
            acceptor,
            endpoint: endpoint.clone(),
            registry: registry.clone(),
            metrics: metrics.clone(),
            revocations: revocations.clone(),
        }
        .watch(),
    );
    let ingress_task = tokio::spawn(ingress::serve(ingress, router, stop.clone(), drain_timeout));

    let signal = tether_proto::signals::shutdown().await;
    info!(
        signal,
        "shutting down: telling agents, finishing requests in flight"
    );
    stop.cancel();
    let _ = ingress_task.await;
    endpoint.close(close::SHUTDOWN.into(), b"relay shutting down");
    if tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle())
        .await
        .is_err()
    {
        warn!("tunnels did not close within 2s");
    }
    info!("stopped");
    Ok(())
}
