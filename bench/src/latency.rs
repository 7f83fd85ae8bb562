//! The latency scenario: sequential GETs of `/fixed` at one caller, with every process of
//! every target, the upstream and the client on one core.
//!
//! Each repetition measures each target twice, with the hyper client (the number the
//! target is judged on) and with the raw client (`raw_client.rs`, a cross-check that
//! leaves less of the client in the number), in alternating order. Around each run it
//! reads the CPU time of the target's own processes, of the upstream and of the client
//! thread, so a difference between targets can be traced to the process it comes from.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::cpu::processes_cpu_ns;
use crate::report::{median, Report};
use crate::{client, pin_all, raw_client, rotated, self_pin, Target};

/// The two clients, in the JSON's and the table's names.
const CLIENTS: [&str; 2] = ["hyper", "raw"];

/// One client's run through one target.
struct Run {
    /// p50, p90, p99 in µs.
    pct: [f64; 3],
    /// CPU µs per request: the target's own processes, the upstream, the client.
    cpu: Option<[f64; 3]>,
}

pub async fn run(
    requests: usize,
    reps: usize,
    cpu_one: &str,
    targets: &[Target],
    rep: &mut Report,
) -> Result<()> {
    eprintln!(
        "== latency: {requests} sequential GET /fixed per target and client (hyper, raw), \
         {reps} reps, all on cpu {cpu_one}"
    );
    pin_all(targets, cpu_one);
    self_pin(cpu_one);
    // The upstream serves every target, so its CPU time is counted for each.
    let upstream: Vec<u32> = targets
        .iter()
        .find(|t| t.name == "direct" || t.name == "upstream")
        .map(Target::pids)
        .unwrap_or_default();
    // Per target, each client's runs (indexed as `CLIENTS`).
    let mut per: BTreeMap<String, [Vec<Run>; 2]> = BTreeMap::new();
    for r in 0..reps {
        for t in rotated(targets, r) {
            // Alternate which client goes first, so neither always follows the other.
            for k in [r % 2, 1 - r % 2] {
                // A thread of its own, created by this (pinned) worker thread, so it
                // runs on `cpu_one` too; the worker hands its other tasks over meanwhile.
                let run = tokio::task::block_in_place(|| measure(t, &upstream, k, requests))
                    .with_context(|| {
                        format!("latency through {} ({} client)", t.name, CLIENTS[k])
                    })?;
                per.entry(t.name.clone()).or_default()[k].push(run);
            }
        }
    }
    let direct = per.get("direct");
    let mut out = serde_json::Map::new();
    for (name, [hyper, raw]) in &per {
        // The hyper client's numbers stay where earlier reports had them.
        let mut entry = summarize(hyper, direct.map(|d| &d[0]));
        entry[CLIENTS[1]] = summarize(raw, direct.map(|d| &d[1]));
        out.insert(name.clone(), entry);
    }
    rep.set("latency", Value::Object(out));
    Ok(())
}

/// One client's `requests` GETs (after a tenth as many to warm up) through `t`.
fn measure(t: &Target, upstream: &[u32], client: usize, requests: usize) -> Result<Run> {
    let warmup = requests / 10;
    let own: Vec<u32> = t
        .pids()
        .into_iter()
        .filter(|p| !upstream.contains(p))
        .collect();
    let before = (processes_cpu_ns(&own), processes_cpu_ns(upstream));
    let (mut nanos, client_ns) = match client {
        0 => client::latency_on_own_thread(t.addr, warmup, requests)?,
        _ => raw_client::latency_on_own_thread(t.addr, warmup, requests)?,
    };
    let after = (processes_cpu_ns(&own), processes_cpu_ns(upstream));
    let per_req = |b: Option<u64>, a: Option<u64>| {
        let total = (warmup + requests).max(1) as f64;
        a.zip(b)
            .map(|(a, b)| a.saturating_sub(b) as f64 / total / 1e3)
    };
    let cpu = per_req(before.0, after.0)
        .zip(per_req(before.1, after.1))
        .map(|(own, up)| [own, up, client_ns / 1e3]);
    nanos.sort_unstable();
    let us = |p| client::pct(&nanos, p) as f64 / 1e3;
    Ok(Run {
        pct: [us(50.0), us(90.0), us(99.0)],
        cpu,
    })
}

/// Medians over the repetitions; the added p50 is the median of each repetition's
/// difference to direct's (measured with the same client in the same repetition).
fn summarize(runs: &[Run], direct: Option<&Vec<Run>>) -> Value {
    let col = |i: usize| median(runs.iter().map(|x| x.pct[i]).collect());
    let added = direct.map(|d| {
        median(
            runs.iter()
                .zip(d)
                .map(|(x, d)| x.pct[0] - d.pct[0])
                .collect(),
        )
    });
    let cpus: Vec<[f64; 3]> = runs.iter().filter_map(|r| r.cpu).collect();
    let cpu = (!cpus.is_empty()).then(|| {
        let c = |i: usize| median(cpus.iter().map(|x| x[i]).collect());
        json!({"target": c(0), "upstream": c(1), "client": c(2)})
    });
    json!({"p50_us": col(0), "p90_us": col(1), "p99_us": col(2), "added_p50_us": added,
        "reps_p50_us": runs.iter().map(|x| x.pct[0]).collect::<Vec<_>>(),
        "cpu_us_per_req": cpu})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(p50: f64, cpu: Option<[f64; 3]>) -> Run {
        Run {
            pct: [p50, p50 + 1.0, p50 + 2.0],
            cpu,
        }
    }

    #[test]
    fn added_latency_pairs_each_repetition_with_direct() {
        let direct = vec![run(10.0, None), run(20.0, None), run(12.0, None)];
        // Differences per repetition: 5, 6, 7: median 6 (a difference of medians
        // would be 25 - 12 = 13, which no repetition saw).
        let target = vec![
            run(15.0, Some([3.0, 1.0, 2.0])),
            run(26.0, Some([5.0, 1.5, 2.5])),
            run(19.0, None),
        ];
        let v = summarize(&target, Some(&direct));
        assert_eq!(v["added_p50_us"], 6.0);
        assert_eq!(v["p50_us"], 19.0);
        assert_eq!(v["p99_us"], 21.0);
        // Medians over the repetitions that have CPU figures.
        assert_eq!(v["cpu_us_per_req"]["target"], 4.0);
        assert_eq!(v["cpu_us_per_req"]["upstream"], 1.25);
        assert_eq!(v["reps_p50_us"], json!([15.0, 26.0, 19.0]));
    }

    #[test]
    fn without_direct_or_cpu_figures_those_fields_are_null() {
        let v = summarize(&[run(15.0, None)], None);
        assert!(v["added_p50_us"].is_null());
        assert!(v["cpu_us_per_req"].is_null());
    }
}
