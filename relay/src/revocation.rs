//! The relay's view of the revocation list: consulted in every handshake and watched for
//! changes, so that a revocation takes effect without a restart. When the list changes,
//! every live tunnel of a revoked identity is closed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tether_proto::enroll::Revocations;
use tether_proto::wire::close;
use tether_proto::Id;
use tracing::{error, info, warn};

use crate::tunnel::TunnelRegistry;

/// How often the file is checked. Revocations take effect within this (plus the time
/// to close the tunnels).
const POLL: Duration = Duration::from_secs(1);

pub struct RevocationList {
    path: PathBuf,
    current: ArcSwap<Revocations>,
}

impl RevocationList {
    /// Loads `path` (a missing file means nothing is revoked; a bad one is an error).
    pub fn load(path: PathBuf) -> anyhow::Result<Self> {
        let current = tether_certs::revocation::load(&path)?;
        if !current.is_empty() {
            info!(path = %path.display(), nodes = current.nodes.len(), serials = current.serials.len(), "revocation list loaded");
        }
        Ok(RevocationList {
            path,
            current: ArcSwap::from_pointee(current),
        })
    }

    pub fn is_revoked(&self, node: &Id, serial: &str) -> bool {
        self.current.load().is_revoked(node, serial)
    }

    /// Watches the file until the task is dropped; on change, swaps the list in and closes
    /// the live tunnels it now revokes.
    pub async fn watch(self: Arc<Self>, registry: TunnelRegistry) {
        let stamp = |p: &PathBuf| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
        };
        let mut last = stamp(&self.path);
        loop {
            tokio::time::sleep(POLL).await;
            let now = stamp(&self.path);
            if now == last {
                continue;
            }
            last = now;
            match tether_certs::revocation::load(&self.path) {
                Ok(list) => {
                    info!(path = %self.path.display(), nodes = list.nodes.len(), serials = list.serials.len(), "revocation list reloaded");
                    self.current.store(Arc::new(list));
                    self.kick(&registry);
                }
                // Keep enforcing the old list: a half-edited file must not un-revoke anyone.
                Err(e) => {
                    error!(error = %format!("{e:#}"), "revocation list unreadable; keeping the previous one")
                }
            }
        }
    }

    /// Closes every live tunnel whose identity or certificate is revoked.
    fn kick(&self, registry: &TunnelRegistry) {
        let list = self.current.load();
        for node in registry.nodes() {
            for t in node.tunnels().iter() {
                if list.is_revoked(&t.identity.node, &t.handle.cert_serial) {
                    warn!(node = %t.identity.node, cluster = %t.identity.cluster, conn = t.conn_id, serial = %t.handle.cert_serial, "closing revoked tunnel");
                    t.handle
                        .conn
                        .close(close::REFUSED.into(), b"certificate revoked");
                }
            }
        }
    }
}
