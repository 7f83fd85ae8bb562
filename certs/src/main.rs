//! `tether-certs`: the mutual-TLS command-line tool.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tether_certs::files::Overwrite;
use tether_certs::{inspect, Ca};
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
            let ca = Ca::init(&dir, &trust_domain, days, overwrite(force))?;
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
                ca.issue_relay(&sans, days)?
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
            let issued = ca.issue_agent(&identity, days)?;
            let (cert, key) = issued.write(&dir, node.as_str(), overwrite(force))?;
            println!(
                "wrote {} and {} for {}",
                cert.display(),
                key.display(),
                identity
            );
        }
        Cmd::Inspect { file } => {
            let pem = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            println!("{}", inspect::summarize(&pem)?);
        }
    }
    Ok(())
}
