//! Two network namespaces joined by a lossy, slow link: the relay (and the caller) on one
//! side, the agent, the upstream and nginx (h2c) on the other. Addresses exist only inside
//! these namespaces.
//!
//! The link is a veth pair with `tc netem` on both ends where the kernel has netem, and
//! otherwise a TUN device in each namespace joined by [`crate::link`] in this process.

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::link::{Link, Tun};
use crate::procs;

pub const NS_RELAY: &str = "tbench-relay";
pub const NS_AGENT: &str = "tbench-agent";
pub const IP_RELAY: &str = "10.203.0.1";
pub const IP_AGENT: &str = "10.203.0.2";
const DEV_RELAY: &str = "tb-r";
const DEV_AGENT: &str = "tb-a";

/// The namespaces and the link; deleted on drop.
pub struct Netns {
    /// The user-space link when netem was not available, and why it was not.
    fallback: Option<(Link, String)>,
}

fn ip(args: &[&str]) -> Result<()> {
    procs::run(Command::new("ip").args(args))?;
    Ok(())
}

fn delete_namespaces() {
    let _ = Command::new("ip").args(["netns", "del", NS_RELAY]).output();
    let _ = Command::new("ip").args(["netns", "del", NS_AGENT]).output();
}

/// Gives each device its address and brings it (and the namespace's loopback) up.
fn configure(devices: [(&str, &str, &str); 2]) -> Result<()> {
    for (ns, dev, addr) in devices {
        ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
        ip(&["-n", ns, "link", "set", dev, "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    Ok(())
}

const DEVICES: [(&str, &str, &str); 2] = [
    (NS_RELAY, DEV_RELAY, IP_RELAY),
    (NS_AGENT, DEV_AGENT, IP_AGENT),
];

impl Netns {
    /// `loss_pct` percent of the packets lost and `delay` added, in each direction.
    pub fn create(loss_pct: f64, delay: Duration) -> Result<Netns> {
        delete_namespaces(); // leftovers of an interrupted run
        ip(&["netns", "add", NS_RELAY])?;
        let mut ns = Netns { fallback: None };
        ip(&["netns", "add", NS_AGENT])?;
        match Self::netem(loss_pct, delay) {
            Ok(()) => Ok(ns),
            Err(netem) => {
                let _ = Command::new("ip")
                    .args(["-n", NS_RELAY, "link", "del", DEV_RELAY])
                    .output();
                let link = Self::tun_link(loss_pct, delay).with_context(|| {
                    format!("no netem ({netem:#}) and no user-space link either")
                })?;
                ns.fallback = Some((link, format!("{netem:#}")));
                Ok(ns)
            }
        }
    }

    /// A veth pair with netem on both ends.
    fn netem(loss_pct: f64, delay: Duration) -> Result<()> {
        ip(&[
            "link", "add", DEV_RELAY, "netns", NS_RELAY, "type", "veth", "peer", "name", DEV_AGENT,
            "netns", NS_AGENT,
        ])?;
        configure(DEVICES)?;
        for (ns, dev, _) in DEVICES {
            procs::run(Command::new("tc").args([
                "-n",
                ns,
                "qdisc",
                "add",
                "dev",
                dev,
                "root",
                "netem",
                "loss",
                &format!("{loss_pct}%"),
                "delay",
                &format!("{}ms", delay.as_millis()),
            ]))?;
        }
        Ok(())
    }

    /// A TUN device per namespace, created here and moved there, joined by [`Link`].
    fn tun_link(loss_pct: f64, delay: Duration) -> Result<Link> {
        let relay = Tun::create(DEV_RELAY)?;
        let agent = Tun::create(DEV_AGENT)?;
        for (ns, dev, _) in DEVICES {
            ip(&["link", "set", dev, "netns", ns])?;
        }
        configure(DEVICES)?;
        Link::start(relay, agent, loss_pct / 100.0, delay)
    }

    /// What joins the namespaces, for the report.
    pub fn describe(&self) -> &'static str {
        match self.fallback {
            None => "veth pair with tc netem on both ends",
            Some(_) => {
                "TUN device per namespace joined by the harness's user-space link (no netem here)"
            }
        }
    }

    /// With the user-space link: packets it forwarded and dropped so far, and why netem
    /// was not used. None with netem.
    pub fn link_counts(&self) -> Option<(u64, u64, &str)> {
        self.fallback.as_ref().map(|(l, why)| {
            (
                l.counters.forwarded.load(Ordering::Relaxed),
                l.counters.dropped.load(Ordering::Relaxed),
                why.as_str(),
            )
        })
    }

    /// `ip netns exec NS` as a command prefix.
    pub fn exec(ns: &str) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), ns.into()]
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Stop the link (closing the TUN devices) before the namespaces go.
        self.fallback = None;
        delete_namespaces();
    }
}
