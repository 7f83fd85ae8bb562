//! Two network namespaces joined by a veth pair with `tc netem` loss and delay on both
//! ends: the relay (and the caller) on one side, the agent, the upstream and nginx (h2c)
//! on the other. Addresses exist only inside these namespaces.

use std::process::Command;

use anyhow::Result;

use crate::procs;

pub const NS_RELAY: &str = "tbench-relay";
pub const NS_AGENT: &str = "tbench-agent";
pub const IP_RELAY: &str = "10.203.0.1";
pub const IP_AGENT: &str = "10.203.0.2";

/// The namespaces; deleted (with the veth pair) on drop.
pub struct Netns;

fn ip(args: &[&str]) -> Result<()> {
    procs::run(Command::new("ip").args(args))?;
    Ok(())
}

impl Netns {
    pub fn create(loss: &str, delay: &str) -> Result<Netns> {
        // Leftovers of an interrupted run.
        let _ = Command::new("ip").args(["netns", "del", NS_RELAY]).output();
        let _ = Command::new("ip").args(["netns", "del", NS_AGENT]).output();
        ip(&["netns", "add", NS_RELAY])?;
        let ns = Netns;
        ip(&["netns", "add", NS_AGENT])?;
        ip(&[
            "link", "add", "tb-r", "netns", NS_RELAY, "type", "veth", "peer", "name", "tb-a",
            "netns", NS_AGENT,
        ])?;
        for (ns_name, dev, addr) in [(NS_RELAY, "tb-r", IP_RELAY), (NS_AGENT, "tb-a", IP_AGENT)] {
            ip(&[
                "-n",
                ns_name,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                dev,
            ])?;
            ip(&["-n", ns_name, "link", "set", dev, "up"])?;
            ip(&["-n", ns_name, "link", "set", "lo", "up"])?;
            procs::run(Command::new("tc").args([
                "-n", ns_name, "qdisc", "add", "dev", dev, "root", "netem", "loss", loss, "delay",
                delay,
            ]))?;
        }
        Ok(ns)
    }

    /// `ip netns exec NS` as a command prefix.
    pub fn exec(ns: &str) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), ns.into()]
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", NS_RELAY]).output();
        let _ = Command::new("ip").args(["netns", "del", NS_AGENT]).output();
    }
}
