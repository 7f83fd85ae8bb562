//! `tether-certs`: the mutual-TLS command-line tool.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tether_certs::files::Overwrite;
use tether_certs::tokens::{tokens_dir, TokenStore};
use tether_certs::{ca, inspect, revocation, Ca};
use tether_proto::identity::DEFAULT_TRUST_DOMAIN;
use tether_proto::{Id, Identity};

#[derive(Parser)]
#[command(
    name = "tether-certs",
    version,
    about = "Private CA and certificates for Tether's mutual TLS"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Manage the certificate authority.
    Ca {
        #[command(subcommand)]
        cmd: CaCmd,
    },
    /// Issue a relay or agent certificate signed by the CA in --dir.
    Issue {
        #[command(subcommand)]
        cmd: IssueCmd,
    },
    /// Print a certificate's identity, subject, serial and validity window.
    Inspect {
        /// PEM certificate file.
        file: PathBuf,
    },
    /// One-time enrollment tokens (see `tether-agent enroll`).
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Revoke a node (every certificate it has) or one certificate by serial. The relay
    /// refuses it at the next handshake and closes its live tunnels within seconds.
    Revoke {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, required_unless_present = "serial", conflicts_with = "serial")]
        node: Option<Id>,
        /// Serial as `inspect` prints it (colons optional).
        #[arg(long)]
        serial: Option<String>,
    },
    /// Lift a node's revocation so that it can enroll again.
    Unrevoke {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        node: Id,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a single-use token bound to one node and cluster; prints the token.
    Create {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        node: Id,
        #[arg(long)]
        cluster: Id,
        /// How long the token stays valid, e.g. 30m, 1h, 2days.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
    /// List tokens and whether they are unused, used, expired or revoked.
    List {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Revoke an unused token by its ID (or a unique prefix of it).
    Revoke {
        #[arg(long)]
        dir: PathBuf,
        id: String,
    },
}

#[derive(Subcommand)]
enum CaCmd {
    /// Create a new CA: DIR/ca.pem and DIR/ca.key (mode 0600).
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Trust domain written into every identity this CA issues.
        #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Replace an existing CA (every certificate it issued stops working).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum IssueCmd {
    /// Server certificate for the relay: DIR/relay.pem, DIR/relay.key.
    Relay {
        #[arg(long)]
        dir: PathBuf,
        /// DNS name or IP address agents use to reach the relay (repeatable).
        #[arg(long = "san", required = true)]
        sans: Vec<String>,
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Client certificate for an agent: DIR/NODE.pem, DIR/NODE.key.
    Agent {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        node: Id,
        #[arg(long)]
        cluster: Id,
        #[arg(long, default_value_t = 30)]
        days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

fn overwrite(force: bool) -> Overwrite {
    if force {
        Overwrite::Allow
    } else {
        Overwrite::Refuse
    }
}

fn token(cmd: TokenCmd) -> Result<()> {
    match cmd {
        TokenCmd::Create {
            dir,
            node,
            cluster,
            ttl,
        } => {
            let ca = Ca::load(&dir)?;
            let store = TokenStore::new(tokens_dir(&dir));
            let token = store.create(&ca, node, cluster, ttl)?;
            println!("{}", token.encode());
        }
        TokenCmd::List { dir } => {
            let tokens = TokenStore::new(tokens_dir(&dir)).list()?;
            if tokens.is_empty() {
                println!("no tokens");
            }
            for (r, state) in tokens {
                let expires =
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(r.expires_unix);
                println!(
                    "{}  {:<8} node={} cluster={} expires={}",
                    r.id,
                    state,
                    r.node,
                    r.cluster,
                    humantime::format_rfc3339_seconds(expires)
                );
            }
        }
        TokenCmd::Revoke { dir, id } => {
            let r = TokenStore::new(tokens_dir(&dir)).revoke(&id)?;
            println!(
                "revoked token {} for node {} of cluster {}",
                r.id, r.node, r.cluster
            );
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Ca {
            cmd:
                CaCmd::Init {
                    dir,
                    trust_domain,
                    days,
                    force,
                },
        } => {
            let ca = Ca::init(&dir, &trust_domain, ca::days(days)?, overwrite(force))?;
            println!(
                "created CA for trust domain {} in {}",
                ca.trust_domain,
                dir.display()
            );
        }
        Cmd::Issue {
            cmd:
                IssueCmd::Relay {
                    dir,
                    sans,
                    days,
                    force,
                },
        } => {
            let ca = Ca::load(&dir)?;
            let (cert, key) =
                ca.issue_relay(&sans, ca::days(days)?)?
                    .write(&dir, "relay", overwrite(force))?;
            println!("wrote {} and {}", cert.display(), key.display());
        }
        Cmd::Issue {
            cmd:
                IssueCmd::Agent {
                    dir,
                    node,
                    cluster,
                    days,
                    force,
                },
        } => {
            let ca = Ca::load(&dir)?;
            let identity = Identity::new(&ca.trust_domain, cluster, node.clone())?;
            let issued = ca.issue_agent(&identity, ca::days(days)?)?;
            let (cert, key) = issued.write(&dir, node.as_str(), overwrite(force))?;
            println!(
                "wrote {} and {} for {}",
                cert.display(),
                key.display(),
                identity
            );
        }
        Cmd::Token { cmd } => token(cmd)?,
        Cmd::Revoke { dir, node, serial } => {
            let path = revocation::revocations_path(&dir);
            let changed = match (node, serial) {
                (Some(node), _) => revocation::revoke_node(&path, node.clone())
                    .map(|c| (c, format!("node {node}")))?,
                (None, Some(serial)) => revocation::revoke_serial(&path, &serial)
                    .map(|c| (c, format!("certificate {serial}")))?,
                (None, None) => unreachable!("clap requires --node or --serial"),
            };
            match changed {
                (true, what) => println!("revoked {what} (in {})", path.display()),
                (false, what) => println!("{what} was already revoked"),
            }
        }
        Cmd::Unrevoke { dir, node } => {
            let path = revocation::revocations_path(&dir);
            if revocation::unrevoke_node(&path, &node)? {
                println!("node {node} may enroll and connect again");
            } else {
                println!("node {node} was not revoked");
            }
        }
        Cmd::Inspect { file } => {
            let pem = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            println!("{}", inspect::summarize(&pem)?);
        }
    }
    Ok(())
}
