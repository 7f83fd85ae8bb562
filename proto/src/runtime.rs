//! The tokio runtime both binaries run on, shaped by the CPUs the process may use.
//!
//! With one CPU (a pinned process, a one-core container) the binaries use tokio's
//! current-thread scheduler. A multi-thread scheduler with a single worker gains nothing
//! there and costs on every request: its LIFO slot runs a woken task right after the
//! task that woke it, so the QUIC connection driver runs (and sends a datagram) after
//! every single stream write instead of once after a batch of them; and its wake-ups go
//! through atomics and, for the blocking pool, futexes. Measured on the relay at 64
//! concurrent requests through one tunnel: about one `sendmsg` per request with the
//! multi-thread scheduler, a fraction of one with the current-thread scheduler.

use serde::{Deserialize, Serialize};

/// `[runtime]` in both binaries' configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Worker threads; unset means one per CPU this process may run on (its affinity
    /// mask and cgroup quota). 1 selects the current-thread scheduler.
    pub worker_threads: Option<usize>,
}

impl RuntimeConfig {
    /// The worker count this configuration resolves to on this machine.
    pub fn threads(&self) -> usize {
        self.worker_threads
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// Builds the runtime. The thread name carries `name` so `top -H` shows whose it is.
    pub fn build(&self, name: &str) -> std::io::Result<tokio::runtime::Runtime> {
        let threads = self.threads();
        let mut b = if threads == 1 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(threads);
            b
        };
        b.enable_all().thread_name(name).build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_count_wins_and_zero_means_auto() {
        let one = RuntimeConfig {
            worker_threads: Some(1),
        };
        assert_eq!(one.threads(), 1);
        let auto = RuntimeConfig {
            worker_threads: Some(0),
        };
        assert_eq!(auto.threads(), RuntimeConfig::default().threads());
        assert!(auto.threads() >= 1);
    }

    #[test]
    fn both_shapes_run_tasks() {
        for n in [1, 2] {
            let rt = RuntimeConfig {
                worker_threads: Some(n),
            }
            .build("tether-test")
            .unwrap();
            let got = rt.block_on(async { tokio::spawn(async { 7 }).await.unwrap() });
            assert_eq!(got, 7);
        }
    }
}
