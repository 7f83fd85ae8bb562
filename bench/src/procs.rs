//! Child processes under test: start with logs, pin to CPUs, measure RSS, stop.

use std::fs::File;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    child: Child,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, logdir: &Path) -> Result<Proc> {
        let log = File::create(logdir.join(format!("{name}.log")))?;
        cmd.stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null());
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Proc { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// This process and all its descendants (nginx forks its workers).
    pub fn tree(&self) -> Vec<u32> {
        let mut out = vec![self.pid()];
        let mut i = 0;
        while i < out.len() {
            let pid = out[i];
            if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
                for t in tasks.flatten() {
                    let p = t.path().join("children");
                    if let Ok(s) = std::fs::read_to_string(p) {
                        out.extend(s.split_whitespace().filter_map(|x| x.parse::<u32>().ok()));
                    }
                }
            }
            i += 1;
        }
        out
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn stop(&mut self) {
        if self.alive() {
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
            }
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until && self.alive() {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Pins every thread of `pids` to `cpus` (a taskset list such as "0" or "0-1").
pub fn pin(pids: &[u32], cpus: &str) {
    for pid in pids {
        let _ = Command::new("taskset")
            .args(["-a", "-p", "-c", cpus, &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

pub fn have(cmd: &str) -> bool {
    which(cmd).is_some()
}

pub fn which(cmd: &str) -> Option<std::path::PathBuf> {
    if cmd.contains('/') {
        let p = Path::new(cmd);
        return p.is_file().then(|| p.to_owned());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain(["/usr/sbin".into(), "/sbin".into()])
            .map(|d| d.join(cmd))
            .find(|p| p.is_file())
    })
}

/// Resident set size in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    for line in s.lines() {
        if let Some(v) = line.strip_prefix("VmRSS:") {
            return Ok(v.trim().trim_end_matches("kB").trim().parse()?);
        }
    }
    bail!("no VmRSS for pid {pid}")
}

/// Waits until something accepts TCP connections at `addr`.
pub fn wait_tcp(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let until = Instant::now() + timeout;
    loop {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > until {
            bail!("nothing listens on {addr} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a command to completion, failing with its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
