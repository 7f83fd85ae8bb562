//! CPU time of processes and threads, from the kernel's scheduler statistics
//! (`/proc/<pid>/task/<tid>/schedstat`: nanoseconds on a CPU, not ticks).
//!
//! The latency scenario runs a target's processes, the upstream and the client on one
//! core, where a sample's time is the sum of what each of them ran. Their CPU time per
//! request says which of them a difference between targets comes from.

use std::fs;

/// Nanoseconds on a CPU of every thread of the processes `pids`, or `None` where the
/// kernel does not keep the statistic.
pub fn processes_cpu_ns(pids: &[u32]) -> Option<u64> {
    let mut total = 0;
    for pid in pids {
        let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        for task in tasks.flatten() {
            // A thread that ended between the listing and the read counts nothing.
            if let Some(ns) = schedstat_ns(&task.path().join("schedstat")) {
                total += ns;
            }
        }
    }
    Some(total)
}

/// Runs `f` (which makes `requests` requests) on the calling thread, and returns its
/// result with the thread's CPU time per request in nanoseconds (0 without schedstat).
pub fn per_request<T>(requests: usize, f: impl FnOnce() -> T) -> (T, f64) {
    let before = thread_cpu_ns();
    let out = f();
    let spent = thread_cpu_ns().saturating_sub(before);
    (out, spent as f64 / requests.max(1) as f64)
}

/// Nanoseconds on a CPU of the calling thread (0 where the kernel does not keep it).
pub fn thread_cpu_ns() -> u64 {
    schedstat_ns("/proc/thread-self/schedstat".as_ref()).unwrap_or(0)
}

fn schedstat_ns(path: &std::path::Path) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_thread_accumulates_cpu_time() {
        let before = thread_cpu_ns();
        if before == 0 {
            return; // no schedstat on this kernel
        }
        // Bounded busy work: about a millisecond of arithmetic.
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let mine = thread_cpu_ns();
        assert!(mine > before, "{x}");
        // Read after the thread's own figure, so the process's includes all of it.
        let own = processes_cpu_ns(&[std::process::id()]).unwrap();
        assert!(own >= mine);
    }
}
