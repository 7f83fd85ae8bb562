//! Keeping the agent's certificate fresh: renew at two thirds of its lifetime over the
//! current mutual-TLS identity, retry with backoff on failure, and get louder as expiry
//! nears. New connections pick the new file up; connections in flight are untouched.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use tether_proto::enroll::renew_at_unix;
use tether_proto::tls::load_certs;
use tracing::{error, info, warn};

use crate::enroll::{renew, IdentityFiles};
use crate::tunnel::Agent;

/// Longest wait between renewal retries.
const RETRY_CAP: Duration = Duration::from_secs(300);

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `(not_before, not_after)` of the certificate file, in unix seconds.
pub fn validity(files: &IdentityFiles) -> Result<(u64, u64)> {
    let der = load_certs(&files.cert)?.remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| anyhow::anyhow!("{} is not valid X.509: {e}", files.cert.display()))?;
    let v = cert.validity();
    Ok((
        v.not_before.timestamp().max(0) as u64,
        v.not_after.timestamp().max(0) as u64,
    ))
}

/// Renews for ever (until the agent stops), with the configuration in force at each
/// attempt (a reload may have moved the relay).
pub async fn run(agent: Arc<Agent>) {
    let (metrics, stop) = (&agent.metrics, &agent.stop);
    let mut retry = Duration::from_secs(1);
    loop {
        let cfg = agent.cfg.load_full();
        let Ok(files) = cfg.identity_files() else {
            return;
        };
        let (not_before, not_after) =
            match validity(&files).context("reading the agent certificate") {
                Ok(v) => v,
                Err(e) => {
                    error!(error = %format!("{e:#}"), "cannot schedule certificate renewal");
                    return;
                }
            };
        metrics.cert_expiry.set(not_after as i64);
        let due = renew_at_unix(not_before, not_after);
        let now = now_unix();
        if now < due {
            info!(
                renew_in_s = due - now,
                expires_in_s = not_after.saturating_sub(now),
                "certificate renewal scheduled"
            );
            // Re-check at least hourly: the file may have been replaced by hand.
            let wait = Duration::from_secs((due - now).min(3600));
            tokio::select! {
                _ = tokio::time::sleep(wait) => continue,
                _ = stop.cancelled() => return,
            }
        }
        match renew(&cfg.relay, &cfg.server_name, &files).await {
            Ok(identity) => {
                let (_, new_after) = validity(&files).unwrap_or((0, 0));
                info!(%identity, expires_in_s = new_after.saturating_sub(now_unix()), "certificate renewed");
                retry = Duration::from_secs(1);
                continue;
            }
            Err(e) => {
                let left = not_after.saturating_sub(now_unix());
                if left == 0 {
                    error!(error = %format!("{e:#}"), "CERTIFICATE EXPIRED and renewal failed: re-enroll this agent with a new token");
                } else {
                    error!(error = %format!("{e:#}"), expires_in_s = left, retry_in = ?retry, "certificate renewal failed");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = stop.cancelled() => return,
        }
        retry = (retry * 2).min(RETRY_CAP);
        if retry == RETRY_CAP {
            warn!("certificate renewal keeps failing; check the relay's [enroll] settings");
        }
    }
}
