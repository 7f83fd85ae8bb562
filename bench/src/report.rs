//! Results: a Markdown table on stdout and in `results.md`, `results.json`, and a
//! hand-written SVG bar chart `results.svg`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;
use serde_json::{json, Map, Value};

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub struct Report {
    out: PathBuf,
    data: Map<String, Value>,
    notes: Vec<String>,
}

fn sh(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Targets and paths in the order tables and the chart show them (each shows the ones
/// it has numbers for).
const ORDER: [&str; 7] = [
    "direct",
    "tether",
    "quic-raw",
    "nginx",
    "rathole",
    "rathole-noise",
    "h2-over-tcp",
];

impl Report {
    pub fn new(out: &Path, params: Value) -> Report {
        let mut data = Map::new();
        data.insert(
            "machine".into(),
            json!({"date": sh("date -u +%Y-%m-%dT%H:%M:%SZ"), "nproc": sh("nproc"),
                   "lscpu": sh("lscpu | head -n 16"), "kernel": sh("uname -r")}),
        );
        data.insert("params".into(), params);
        Report {
            out: out.to_owned(),
            data,
            notes: Vec::new(),
        }
    }

    pub fn note(&mut self, s: &str) {
        eprintln!("NOTE: {s}");
        self.notes.push(s.to_owned());
    }

    pub fn missing(&mut self, target: &str, why: &str) {
        self.note(&format!("target {target} MISSING: {why}"));
    }

    pub fn skip(&mut self, scenario: &str, why: &str) {
        self.note(&format!("scenario {scenario} SKIPPED: {why}"));
    }

    pub fn set(&mut self, key: &str, v: Value) {
        self.data.insert(key.into(), v);
    }

    fn get(&self, path: &[&str]) -> Option<f64> {
        let mut v = self.data.get(path[0])?;
        for p in &path[1..] {
            v = v.get(p)?;
        }
        v.as_f64()
    }

    fn checks(&self) -> Vec<(String, String)> {
        let o = |v: Option<f64>| v.map_or("–".to_owned(), fmt);
        let verdict = |ok: Option<bool>| match ok {
            Some(true) => "MET",
            Some(false) => "MISSED",
            None => "n/a",
        };
        let mut c = Vec::new();
        let t = self.get(&["latency", "tether", "added_p50_us"]);
        let r = self.get(&["latency", "rathole-noise", "added_p50_us"]);
        c.push((
            format!("added p50 latency ≤ rathole-noise's and ≤ 200 µs (tether {} µs, rathole-noise {} µs)", o(t), o(r)),
            // Over 200 µs misses on its own; otherwise rathole-noise must have been measured.
            verdict(match (t, r) {
                (Some(t), _) if t > 200.0 => Some(false),
                (Some(t), Some(r)) => Some(t <= r),
                _ => None,
            })
            .to_owned(),
        ));
        let t = self.get(&["latency", "tether", "raw", "added_p50_us"]);
        let r = self.get(&["latency", "rathole-noise", "raw", "added_p50_us"]);
        c.push((
            format!("cross-check, raw client: added p50 latency ≤ rathole-noise's (tether {} µs, rathole-noise {} µs)", o(t), o(r)),
            verdict(t.zip(r).map(|(t, r)| t <= r)).to_owned(),
        ));
        let t = self.get(&["throughput", "64", "tether", "rps"]);
        let r = self.get(&["throughput", "64", "rathole-noise", "rps"]);
        c.push((
            format!(
                "req/s at 64 through one tunnel ≥ rathole-noise (tether {}, rathole-noise {})",
                o(t),
                o(r)
            ),
            verdict(t.zip(r).map(|(t, r)| t >= r)).to_owned(),
        ));
        let d = self.get(&["bulk", "tether", "download_MBps"]);
        let u = self.get(&["bulk", "tether", "upload_MBps"]);
        c.push((
            format!(
                "one bulk stream ≥ 2 Gbit/s = 250 MB/s (download {}, upload {} MB/s)",
                o(d),
                o(u)
            ),
            verdict(d.zip(u).map(|(d, u)| d >= 250.0 && u >= 250.0)).to_owned(),
        ));
        let s = self
            .data
            .get("scale")
            .and_then(|s| s.as_array())
            .and_then(|a| {
                a.iter()
                    .filter(|r| r["agents"].as_u64() >= Some(10_000))
                    .find_map(|r| r["rss_per_agent_kib"].as_f64())
            });
        c.push((
            format!(
                "≤ 64 KiB relay RSS per idle agent at 10,000 agents ({} KiB)",
                o(s)
            ),
            verdict(s.map(|s| s <= 64.0)).to_owned(),
        ));
        // The target is for the issue's link only; other --loss-* settings give no verdict.
        let issue_link = self.get(&["loss", "loss_percent"]).unwrap_or(1.0) == 1.0
            && self.get(&["loss", "delay_ms"]).unwrap_or(20.0) == 20.0;
        let (t, h) = if issue_link {
            (
                self.get(&["loss", "tether", "p99_ms"]),
                self.get(&["loss", "h2-over-tcp", "p99_ms"]),
            )
        } else {
            (None, None)
        };
        c.push((
            format!(
                "under 1% loss, tether p99 < HTTP/2-over-TCP p99 ({} vs {} ms)",
                o(t),
                o(h)
            ),
            verdict(t.zip(h).map(|(t, h)| t < h)).to_owned(),
        ));
        c
    }

    fn table(&self) -> String {
        let mut s = String::new();
        let direct = |f: &dyn Fn(&str) -> Option<f64>| f("direct");
        let ratio = |v: Option<f64>, d: Option<f64>| match (v, d) {
            (Some(v), Some(d)) if d > 0.0 => format!("{:.2}×", v / d),
            _ => "".into(),
        };
        if let Some(l) = self.data.get("latency") {
            let _ = writeln!(
                s,
                "\n### Latency: sequential GET of 1 KiB (µs, median of reps)\n"
            );
            let _ = writeln!(
                s,
                "| target | p50 | p90 | p99 | added p50 vs direct | raw client: p50 | raw client: added p50 |\n|---|---:|---:|---:|---:|---:|---:|"
            );
            let added = |v: &Value| {
                v["added_p50_us"]
                    .as_f64()
                    .map_or(String::new(), |a| format!("{a:+.1}"))
            };
            let num = |v: &Value| v.as_f64().map_or(String::new(), |x| format!("{x:.0}"));
            for t in ORDER.iter().filter(|t| l.get(**t).is_some()) {
                let v = &l[*t];
                let _ = writeln!(
                    s,
                    "| {t} | {:.0} | {:.0} | {:.0} | {} | {} | {} |",
                    v["p50_us"].as_f64().unwrap_or(f64::NAN),
                    v["p90_us"].as_f64().unwrap_or(f64::NAN),
                    v["p99_us"].as_f64().unwrap_or(f64::NAN),
                    added(v),
                    num(&v["raw"]["p50_us"]),
                    added(&v["raw"]),
                );
            }
            let _ = writeln!(
                s,
                "\n### Latency: CPU time per request on the shared core (µs, median of reps)\n\n\
                 The target's own processes, the upstream behind it, and the measuring client's thread.\n"
            );
            let _ = writeln!(
                s,
                "| target | hyper client: target | upstream | client | sum | raw client: target | upstream | client | sum |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
            let cpu = |v: &Value| {
                let c = &v["cpu_us_per_req"];
                let f = |k: &str| c[k].as_f64();
                match (f("target"), f("upstream"), f("client")) {
                    (Some(t), Some(u), Some(c)) => {
                        format!("{t:.2} | {u:.2} | {c:.2} | {:.2}", t + u + c)
                    }
                    _ => "– | – | – | –".to_owned(),
                }
            };
            for t in ORDER.iter().filter(|t| l.get(**t).is_some()) {
                let v = &l[*t];
                let _ = writeln!(s, "| {t} | {} | {} |", cpu(v), cpu(&v["raw"]));
            }
        }
        if let Some(tp) = self.data.get("throughput").and_then(Value::as_object) {
            let concs: Vec<&String> = tp.keys().collect();
            let mut concs: Vec<&String> = concs;
            concs.sort_by_key(|c| c.parse::<u32>().unwrap_or(0));
            let _ = writeln!(
                s,
                "\n### Throughput: GET 1 KiB, req/s (ratio vs direct), one tunnel connection\n"
            );
            let _ = write!(s, "| target |");
            for c in &concs {
                let _ = write!(s, " c={c} |");
            }
            let _ = write!(s, "\n|---|");
            for _ in &concs {
                let _ = write!(s, "---:|");
            }
            let _ = writeln!(s);
            for t in ORDER {
                if !concs.iter().any(|c| tp[*c].get(t).is_some()) {
                    continue;
                }
                let _ = write!(s, "| {t} |");
                for c in &concs {
                    let f = |n: &str| tp[*c].get(n).and_then(|v| v["rps"].as_f64());
                    let v = f(t);
                    let errs = tp[*c]
                        .get(t)
                        .and_then(|v| v["errors"].as_u64())
                        .unwrap_or(0);
                    let e = if errs > 0 {
                        format!(" ({errs} errors)")
                    } else {
                        String::new()
                    };
                    let _ = write!(
                        s,
                        " {} {}{e} |",
                        v.map_or("–".into(), |v| format!("{v:.0}")),
                        ratio(v, direct(&f))
                    );
                }
                let _ = writeln!(s);
            }
        }
        if let Some(b) = self.data.get("bulk") {
            let _ = writeln!(
                s,
                "\n### Bulk: one {} MiB stream, MB/s (ratio vs direct)\n",
                self.data["params"]["bulk_bytes"].as_u64().unwrap_or(0) >> 20
            );
            let _ = writeln!(s, "| target | download | upload |\n|---|---:|---:|");
            for t in ORDER.iter().filter(|t| b.get(**t).is_some()) {
                let f = |n: &str, k: &str| b.get(n).and_then(|v| v[k].as_f64());
                let _ = writeln!(
                    s,
                    "| {t} | {:.0} {} | {:.0} {} |",
                    f(t, "download_MBps").unwrap_or(f64::NAN),
                    ratio(f(t, "download_MBps"), f("direct", "download_MBps")),
                    f(t, "upload_MBps").unwrap_or(f64::NAN),
                    ratio(f(t, "upload_MBps"), f("direct", "upload_MBps"))
                );
            }
        }
        if let Some(a) = self.data.get("scale").and_then(Value::as_array) {
            let _ = writeln!(s, "\n### Scale: idle agents on one relay\n");
            let _ = writeln!(s, "| agents | node identities | connect all (s) | registered | relay RSS before → after (MiB) | KiB per agent | requests ok / failed | connections that served |\n|---:|---:|---:|---:|---:|---:|---:|---:|");
            for r in a {
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.2} | {} | {:.1} → {:.1} | {:.1} | {} / {} | {} |",
                    r["agents"],
                    r["nodes"],
                    r["connect_all_s"].as_f64().unwrap_or(0.0),
                    r["registered"],
                    r["rss_before_kib"].as_f64().unwrap_or(0.0) / 1024.0,
                    r["rss_after_kib"].as_f64().unwrap_or(0.0) / 1024.0,
                    r["rss_per_agent_kib"].as_f64().unwrap_or(0.0),
                    r["requests_ok"],
                    r["requests_failed"],
                    r["connections_that_served"]
                );
            }
        }
        if let Some(l) = self.data.get("loss").and_then(Value::as_object) {
            let f = |k: &str, d: f64| l.get(k).and_then(Value::as_f64).unwrap_or(d);
            let _ = writeln!(
                s,
                "\n### Loss: {}% loss + {} ms delay each way, 64 concurrent GETs (ms)\n",
                f("loss_percent", 1.0),
                f("delay_ms", 20.0)
            );
            if let Some(link) = l.get("link").and_then(Value::as_str) {
                let _ = writeln!(s, "Link: {link}.\n");
            }
            let _ = writeln!(
                s,
                "| path | p50 | p99 | requests | errors |\n|---|---:|---:|---:|---:|"
            );
            for (name, v) in l.iter().filter(|(_, v)| v.is_object()) {
                let _ = writeln!(
                    s,
                    "| {name} | {:.1} | {:.1} | {} | {} |",
                    v["p50_ms"].as_f64().unwrap_or(f64::NAN),
                    v["p99_ms"].as_f64().unwrap_or(f64::NAN),
                    v["requests"],
                    v["errors"]
                );
            }
        }
        let _ = writeln!(s, "\n### Targets\n\n| target | verdict |\n|---|---|");
        for (what, v) in self.checks() {
            let _ = writeln!(s, "| {what} | {v} |");
        }
        if !self.notes.is_empty() {
            let _ = writeln!(s, "\nNotes:");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }

    pub fn finish(mut self) -> Result<()> {
        let checks: Vec<Value> = self
            .checks()
            .into_iter()
            .map(|(w, v)| json!({"target": w, "verdict": v}))
            .collect();
        self.data.insert("targets".into(), Value::Array(checks));
        self.data.insert("notes".into(), json!(self.notes));
        std::fs::create_dir_all(&self.out)?;
        let table = self.table();
        println!("{table}");
        std::fs::write(self.out.join("results.md"), &table)?;
        std::fs::write(
            self.out.join("results.json"),
            serde_json::to_string_pretty(&self.data)?,
        )?;
        std::fs::write(self.out.join("results.svg"), self.svg())?;
        eprintln!("wrote {}/results.{{md,json,svg}}", self.out.display());
        Ok(())
    }

    /// Horizontal grouped bars, one panel per scenario.
    fn svg(&self) -> String {
        let color = |t: &str| match t {
            "direct" => "#999999",
            "tether" => "#d9480f",
            "quic-raw" => "#f08c00",
            "nginx" => "#2b8a3e",
            "rathole" => "#1971c2",
            "rathole-noise" => "#5f3dc4",
            _ => "#495057",
        };
        let mut panels: Vec<(String, Vec<Bar>)> = Vec::new();
        let pick = |obj: Option<&Value>, key: &str| -> Vec<Bar> {
            ORDER
                .iter()
                .filter_map(|t| {
                    let v = obj?.get(*t)?.get(key)?.as_f64()?;
                    Some((t.to_string(), t.to_string(), v))
                })
                .collect()
        };
        panels.push((
            "Latency p50, sequential 1 KiB GET (µs)".into(),
            pick(self.data.get("latency"), "p50_us"),
        ));
        if let Some(tp) = self.data.get("throughput").and_then(Value::as_object) {
            let mut cs: Vec<&String> = tp.keys().collect();
            cs.sort_by_key(|c| c.parse::<u32>().unwrap_or(0));
            let mut rows = Vec::new();
            for c in cs {
                for (t, l, v) in pick(tp.get(c), "rps") {
                    rows.push((t, format!("c={c} {l}"), v));
                }
            }
            panels.push(("Throughput (req/s)".into(), rows));
        }
        let b = self.data.get("bulk");
        let mut rows: Vec<_> = pick(b, "download_MBps")
            .into_iter()
            .map(|(t, l, v)| (t, format!("down {l}"), v))
            .collect();
        rows.extend(
            pick(b, "upload_MBps")
                .into_iter()
                .map(|(t, l, v)| (t, format!("up {l}"), v)),
        );
        panels.push(("Bulk (MB/s)".into(), rows));
        if let Some(a) = self.data.get("scale").and_then(Value::as_array) {
            panels.push((
                "Relay RSS per idle agent (KiB)".into(),
                a.iter()
                    .map(|r| {
                        (
                            "tether".to_string(),
                            format!("{} agents", r["agents"]),
                            r["rss_per_agent_kib"].as_f64().unwrap_or(0.0),
                        )
                    })
                    .collect(),
            ));
        }
        let l = self.data.get("loss");
        let mut rows: Vec<_> = pick(l, "p50_ms")
            .into_iter()
            .map(|(t, l, v)| (t, format!("p50 {l}"), v))
            .collect();
        rows.extend(
            pick(l, "p99_ms")
                .into_iter()
                .map(|(t, l, v)| (t, format!("p99 {l}"), v)),
        );
        panels.push(("1% loss, 20 ms delay, 64 concurrent (ms)".into(), rows));
        panels.retain(|(_, r)| !r.is_empty());

        let (w, label_w, bar_w, row_h) = (760.0, 190.0, 470.0, 18.0);
        let mut y = 40.0;
        let mut body = String::new();
        for (title, rows) in &panels {
            let _ = writeln!(
                body,
                r#"<text x="10" y="{y}" font-weight="bold">{}</text>"#,
                esc(title)
            );
            y += 10.0;
            let max = rows.iter().map(|r| r.2).fold(0.0f64, f64::max).max(1e-9);
            for (t, label, v) in rows {
                let len = (v / max * bar_w).max(1.0);
                let _ = writeln!(
                    body,
                    r#"<text x="{}" y="{}" text-anchor="end">{}</text><rect x="{label_w}" y="{}" width="{len:.1}" height="{}" fill="{}"/><text x="{}" y="{}">{}</text>"#,
                    label_w - 6.0,
                    y + 13.0,
                    esc(label),
                    y + 2.0,
                    row_h - 4.0,
                    color(t),
                    label_w + len + 5.0,
                    y + 13.0,
                    fmt(*v)
                );
                y += row_h;
            }
            y += 26.0;
        }
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{y}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"10\" y=\"20\" font-size=\"15\" font-weight=\"bold\">Tether benchmarks ({})</text>\n{body}</svg>\n",
            esc(self.data["machine"]["date"].as_str().unwrap_or(""))
        )
    }
}

/// One bar: (target, label, value).
type Bar = (String, String, f64);

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
