//! A lossy, slow link in user space: a TUN device in each namespace and, per direction, a
//! thread that drops a share of the packets and delays the rest by a fixed time.
//!
//! It stands in for `tc netem` on kernels built without it (this VM's). Like netem on each
//! end of a veth pair, it acts on whole IP packets, independently in each direction, so
//! QUIC and TCP see the same loss and the same delay.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How often the threads look at the stop flag while the link is quiet.
const POLL: Duration = Duration::from_millis(100);
/// Larger than any packet a 1500-byte-MTU TUN device hands over.
const MAX_PACKET: usize = 65_536;

/// One end of the link: a TUN device (IP packets, no extra header) owned by this process.
/// The device exists while the file is open, wherever its namespace is.
pub struct Tun {
    file: File,
}

impl Tun {
    /// Creates TUN device `name` in this process's namespace.
    pub fn create(name: &str) -> Result<Tun> {
        const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
        const IFF_TUN: libc::c_short = 0x0001;
        const IFF_NO_PI: libc::c_short = 0x1000;
        #[repr(C)]
        struct IfReq {
            name: [u8; libc::IFNAMSIZ],
            flags: libc::c_short,
            _pad: [u8; 22],
        }
        if name.len() >= libc::IFNAMSIZ {
            bail!("TUN device name {name:?} is too long");
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .context("opening /dev/net/tun")?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TUN | IFF_NO_PI,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which IfReq lays out.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("creating TUN device {name}"));
        }
        Ok(Tun { file })
    }

    /// Waits up to `timeout` for a packet to read.
    fn readable(&self, timeout: Duration) -> bool {
        let mut p = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as libc::c_int) };
        n > 0 && p.revents & libc::POLLIN != 0
    }
}

/// Packets that crossed and packets dropped, both directions together.
#[derive(Default)]
pub struct Counters {
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
}

/// The running link; dropping it stops its threads and removes both devices.
pub struct Link {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub counters: Arc<Counters>,
}

impl Link {
    /// Joins `a` and `b`: each direction loses `loss` (0.0–1.0) of its packets at random
    /// and delays the others by `delay`, keeping their order.
    pub fn start(a: Tun, b: Tun, loss: f64, delay: Duration) -> Result<Link> {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let a = Arc::new(a);
        let b = Arc::new(b);
        let mut threads = Vec::new();
        for (i, (from, to)) in [(a.clone(), b.clone()), (b, a)].into_iter().enumerate() {
            let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
            let seed = 0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            let (st, c) = (stop.clone(), counters.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("link-in-{i}"))
                    .spawn(move || receive(&from, &tx, loss, delay, seed, &st, &c))?,
            );
            let st = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("link-out-{i}"))
                    .spawn(move || deliver(&to, &rx, &st))?,
            );
        }
        Ok(Link {
            stop,
            threads,
            counters,
        })
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Reads packets off `from`; drops a `loss` share, queues the rest due `delay` from now.
fn receive(
    from: &Tun,
    out: &mpsc::Sender<(Instant, Vec<u8>)>,
    loss: f64,
    delay: Duration,
    mut seed: u64,
    stop: &AtomicBool,
    counters: &Counters,
) {
    let threshold = drop_threshold(loss);
    let mut buf = vec![0u8; MAX_PACKET];
    while !stop.load(Ordering::Relaxed) {
        if !from.readable(POLL) {
            continue;
        }
        let n = match (&from.file).read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return, // the device is gone
        };
        if lost(&mut seed, threshold) {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if out
            .send((Instant::now() + delay, buf[..n].to_vec()))
            .is_err()
        {
            return;
        }
        counters.forwarded.fetch_add(1, Ordering::Relaxed);
    }
}

/// Writes each queued packet to `to` once it is due.
fn deliver(to: &Tun, queue: &mpsc::Receiver<(Instant, Vec<u8>)>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let (due, packet) = match queue.recv_timeout(POLL) {
            Ok(p) => p,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            // The reading side has ended (its device is gone): nothing more will come.
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let wait = due.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        // A full device queue or a vanished route loses the packet, as a real link would.
        let _ = (&to.file).write(&packet);
    }
}

/// `loss` (0.0–1.0) as a threshold for [`lost`]'s 53-bit draw.
fn drop_threshold(loss: f64) -> u64 {
    (loss.clamp(0.0, 1.0) * (1u64 << 53) as f64) as u64
}

/// Whether the next packet is lost: a uniform draw from [0, 2^53) under `threshold`.
fn lost(seed: &mut u64, threshold: u64) -> bool {
    xorshift(seed) >> 11 < threshold
}

/// xorshift64*: plenty for choosing which packets a test link loses.
fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    s.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_loses_about_the_asked_share() {
        let mut s = 42;
        for (loss, lo, hi) in [(0.01, 800, 1200), (0.2, 19_000, 21_000)] {
            let threshold = drop_threshold(loss);
            let hits = (0..100_000).filter(|_| lost(&mut s, threshold)).count();
            assert!((lo..hi).contains(&hits), "{hits} of 100000 at {loss}");
        }
        assert!(!(0..10_000).any(|_| lost(&mut s, drop_threshold(0.0))));
        assert!((0..10_000).all(|_| lost(&mut s, drop_threshold(1.0))));
    }
}
