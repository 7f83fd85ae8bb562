//! `tether-agent`: the on-prem side of Tether.
//!
//! Dials out to the relay over mutual-TLS QUIC (`tunnel`), keeps `connections` of those
//! up for ever (`backoff`), and serves the relay's HTTP/3 requests from local services
//! chosen by the route allowlist (`routes`, `serve`).

mod backoff;
mod config;
mod control;
mod dial;
mod enroll;
mod metrics;
mod reload;
mod renew;
mod routes;
mod serve;
mod tls;
mod tunnel;
mod upstream;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use arc_swap::ArcSwap;
use tether_proto::admin::{self, AdminResponse};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::routes::Routes;
use crate::serve::Service;

/// mimalloc (through `tether_proto::alloc`) instead of the system allocator: glibc
/// malloc/free were about 12 % of the CPU per request under load (perf), mostly
/// short-lived per-request buffers; measured +13 % req/s through one tunnel
/// (bench/RESULTS.md).
#[global_allocator]
static GLOBAL: tether_proto::alloc::Allocator = tether_proto::alloc::Allocator;

#[derive(Parser)]
#[command(
    name = "tether-agent",
    version,
    about = "Tether agent: on-prem end of the reverse tunnel"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Get this agent's identity with a one-time token: makes the key pair here, sends
    /// only a CSR, pins the relay by the CA fingerprint in the token, and writes ca.pem,
    /// agent.pem and agent.key (0600) into --dir.
    Enroll {
        /// Relay QUIC address, host:port.
        #[arg(long)]
        relay: String,
        /// The token from `tether-certs token create`.
        #[arg(long, env = "TETHER_ENROLL_TOKEN", hide_env_values = true)]
        token: String,
        /// State directory; the agent config then says `state_dir = "<dir>"`.
        #[arg(long, default_value = "/var/lib/tether")]
        dir: PathBuf,
        /// Name in the relay's certificate (default: the host part of --relay).
        #[arg(long)]
        server_name: Option<String>,
        /// Replace an identity already in --dir.
        #[arg(long)]
        force: bool,
    },
}

#[derive(clap::Args)]
struct RunArgs {
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

impl RunArgs {
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

/// The host part of `host:port` (brackets of an IPv6 literal removed).
fn host_of(relay: &str) -> &str {
    let host = relay.rsplit_once(':').map_or(relay, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn enroll_main(cmd: Cmd) -> Result<()> {
    let Cmd::Enroll {
        relay,
        token,
        dir,
        server_name,
        force,
    } = cmd;
    let _log = tether_proto::logging::init(&Default::default());
    let server_name = server_name.unwrap_or_else(|| host_of(&relay).to_owned());
    let overwrite = if force {
        tether_certs::files::Overwrite::Allow
    } else {
        tether_certs::files::Overwrite::Refuse
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let identity = rt
        .block_on(enroll::enroll(
            &relay,
            &server_name,
            &token,
            &dir,
            overwrite,
        ))
        .context("enrollment failed")?;
    println!(
        "enrolled as {identity}; identity stored in {}",
        dir.display()
    );
    println!("agent config: state_dir = \"{}\"", dir.display());
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(cmd) = cli.cmd {
        return enroll_main(cmd);
    }
    let source = reload::Source {
        file: cli.run.config.clone(),
        flags: cli.run.flags(),
    };
    let metrics = Arc::new(Metrics::default());
    let (cfg, routes) = source
        .load(&metrics)
        .context("invalid agent configuration")?;
    let _log = tether_proto::logging::init(&cfg.log);
    if routes.is_empty() {
        warn!("no routes configured: every request will be answered 404 no-route");
    }
    let rt = cfg.runtime.build("tether-agent")?;
    rt.block_on(run(cfg, routes, metrics, source))
}

async fn admin(
    agent: Arc<tunnel::Agent>,
    req: http::Request<hyper::body::Incoming>,
) -> AdminResponse {
    use http::StatusCode;
    match req.uri().path() {
        "/healthz" => admin::json(StatusCode::OK, serde_json::json!({"status": "ok"})),
        "/readyz" => {
            let up = agent.tunnels_up.load(std::sync::atomic::Ordering::Relaxed);
            let status = if up > 0 {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            admin::json(status, serde_json::json!({"tunnels_up": up}))
        }
        "/metrics" => admin::response(StatusCode::OK, admin::PROMETHEUS, agent.metrics.encode()),
        _ => admin::json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not found"}),
        ),
    }
}

async fn run(
    cfg: Config,
    routes: Routes,
    metrics: Arc<Metrics>,
    source: reload::Source,
) -> Result<()> {
    // Fail fast on unreadable certificates instead of retrying for ever.
    tls::client_config(&cfg)?;
    let admin_cfg = cfg.admin.clone();
    let service = Arc::new(Service {
        routes: ArcSwap::from_pointee(routes),
        connect_timeout: cfg.upstream_connect_timeout,
    });
    let cfg = Arc::new(cfg);
    let agent = Arc::new(tunnel::Agent {
        cfg: ArcSwap::new(cfg.clone()),
        service,
        metrics,
        tunnels_up: Default::default(),
        stop: CancellationToken::new(),
    });
    if admin_cfg.enabled {
        let listener = tokio::net::TcpListener::bind(admin_cfg.listen)
            .await
            .with_context(|| format!("binding admin.listen {}", admin_cfg.listen))?;
        info!(addr = %listener.local_addr()?, "admin listening");
        let agent = agent.clone();
        tokio::spawn(admin::serve(listener, move |req| admin(agent.clone(), req)));
    }
    info!(relay = %cfg.relay, connections = cfg.connections, "agent starting");
    let renewal = cfg
        .state_dir
        .is_some()
        .then(|| tokio::spawn(renew::run(agent.clone())));
    tokio::spawn(reload::watch(agent.clone(), source));
    let slots: Vec<_> = (0..cfg.connections)
        .map(|slot| tokio::spawn(tunnel::run_slot(slot, agent.clone())))
        .collect();
    let signal = tether_proto::signals::shutdown().await;
    info!(signal, "shutting down: draining tunnels");
    agent.stop.cancel();
    for s in slots {
        let _ = s.await;
    }
    if let Some(r) = renewal {
        let _ = r.await;
    }
    info!("stopped");
    Ok(())
}
