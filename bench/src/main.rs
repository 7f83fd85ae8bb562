//! `tether-bench`: measures Tether against direct calls, nginx and rathole.
//!
//! `tether-bench run` starts everything on 127.0.0.1 (and, for the loss scenario, in two
//! network namespaces it creates), runs the scenarios of issue #4 interleaved over the
//! targets, and writes `results.json`, `results.md` and `results.svg`. `bench/run.sh`
//! builds in release mode, installs the peers and calls it. See README "Benchmarks".

mod agents;
mod client;
mod cpu;
mod latency;
mod link;
mod loss;
mod peers;
mod procs;
mod quic_raw;
mod raw_client;
mod report;
mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

use crate::peers::{Env, RelayPorts};
use crate::procs::{pin, Proc};
use crate::report::median;
use tether_proto::runtime::RuntimeConfig;
use tether_proto::wire::ALPN_TUNNEL;

#[derive(Parser)]
#[command(name = "tether-bench", about = "Tether benchmark harness")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the benchmark scenarios and write the report.
    Run(Box<RunArgs>),
    /// The fixed-response upstream (used by `run`).
    Upstream {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// The `quic-raw` target's relay side (see bench/src/quic_raw.rs).
    QuicRawRelay {
        #[arg(long)]
        tcp: SocketAddr,
        #[arg(long)]
        quic: SocketAddr,
        /// Directory with ca.pem, relay.pem and relay.key.
        #[arg(long)]
        pki: PathBuf,
    },
    /// The `quic-raw` target's agent side.
    QuicRawAgent {
        #[arg(long)]
        quic: SocketAddr,
        #[arg(long)]
        upstream: SocketAddr,
        /// Directory with ca.pem, bench.pem and bench.key.
        #[arg(long)]
        pki: PathBuf,
    },
    /// ONE HTTP/2 connection, `concurrency` callers: latency of GET /fixed as JSON (used
    /// by `run` inside a network namespace).
    H2Lat {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Keep trying a first request this long before measuring.
        #[arg(long, default_value_t = 30)]
        wait: u64,
    },
}

#[derive(Parser, Clone)]
struct RunArgs {
    /// Comma-separated: latency, throughput, bulk, scale, loss.
    #[arg(long, default_value = "latency,throughput,bulk,scale,loss")]
    scenarios: String,
    /// Comma-separated targets: direct, tether, quic-raw, nginx, rathole, rathole-noise.
    #[arg(
        long,
        default_value = "direct,tether,quic-raw,nginx,rathole,rathole-noise"
    )]
    targets: String,
    /// A ~5 s run of each scenario with tiny sizes: checks that everything works.
    #[arg(long)]
    smoke: bool,
    /// Repetitions of every measurement (medians are reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Sequential requests per latency measurement.
    #[arg(long, default_value_t = 2000)]
    latency_requests: usize,
    /// Repetitions of the latency measurement: it takes well under a second per target,
    /// and at one caller a few microseconds decide the comparison, so it gets more
    /// repetitions than the rest (`--reps`).
    #[arg(long, default_value_t = 9)]
    latency_reps: usize,
    /// Concurrency levels for throughput.
    #[arg(long, default_value = "1,16,64,256")]
    concurrency: String,
    /// Seconds per throughput measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Seconds of unrecorded load on each target before each concurrency level is
    /// measured, so that no target is measured while it still opens connections and grows
    /// its heaps and congestion window for that level (0: none).
    #[arg(long, default_value_t = 2)]
    warmup_seconds: u64,
    /// Load generator for throughput: wrk, or internal (the harness's own loop).
    #[arg(long, default_value = "wrk")]
    loadgen: String,
    /// Bytes per bulk transfer.
    #[arg(long, default_value_t = 1 << 30)]
    bulk_bytes: u64,
    /// Idle agent counts for the scale scenario.
    #[arg(long, default_value = "100,1000,10000")]
    scale: String,
    /// Seconds per loss measurement.
    #[arg(long, default_value_t = 10)]
    loss_seconds: u64,
    /// Packets lost on the loss scenario's link, percent, each way (the setting is 1).
    #[arg(long, default_value_t = 1.0)]
    loss_percent: f64,
    /// Delay the loss scenario's link adds, milliseconds, each way.
    #[arg(long, default_value_t = 20)]
    loss_delay_ms: u64,
    /// Directory with tether-relay, tether-agent, tether-certs.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// rathole binary (installed by bench/run.sh).
    #[arg(long, default_value = "bench/.tools/bin/rathole")]
    rathole: PathBuf,
    /// Output directory.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// First of the TCP/UDP ports the harness uses on 127.0.0.1.
    #[arg(long, default_value_t = 18000)]
    port_base: u16,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // The quic-raw processes run on the runtime Tether's binaries use, shaped the same way;
    // everything else on two workers. Each command builds only the runtime it runs on.
    let tether_rt = || RuntimeConfig::default().build("quic-raw");
    let rt = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    };
    match cli.cmd {
        Cmd::QuicRawRelay { tcp, quic, pki } => {
            tether_rt()?.block_on(quic_raw::relay(tcp, quic, &pki))
        }
        Cmd::QuicRawAgent {
            quic,
            upstream,
            pki,
        } => tether_rt()?.block_on(quic_raw::agent(quic, upstream, &pki)),
        Cmd::Upstream { listen } => rt()?.block_on(upstream::serve(listen)),
        Cmd::H2Lat {
            addr,
            concurrency,
            seconds,
            wait,
        } => rt()?.block_on(async move {
            let url = format!("http://{addr}/fixed");
            let until = Instant::now() + Duration::from_secs(wait);
            loop {
                let (l, _) = client::h2_latency(addr, &url, 1, Duration::from_millis(1))
                    .await
                    .unwrap_or_default();
                if !l.is_empty() {
                    break;
                }
                if Instant::now() > until {
                    bail!("{addr} not ready after {wait}s");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let (mut lat, errors) =
                client::h2_latency(addr, &url, concurrency, Duration::from_secs(seconds)).await?;
            lat.sort_unstable();
            println!(
                "{}",
                json!({"n": lat.len(), "errors": errors,
                       "p50_ms": client::pct(&lat, 50.0) as f64 / 1e6,
                       "p99_ms": client::pct(&lat, 99.0) as f64 / 1e6})
            );
            Ok(())
        }),
        Cmd::Run(mut args) => {
            if args.smoke {
                args.reps = 1;
                args.latency_reps = 1;
                args.latency_requests = 200;
                args.seconds = 1;
                args.warmup_seconds = 0;
                args.bulk_bytes = 16 << 20;
                args.scale = "20".into();
                args.loss_seconds = 2;
                if !procs::have("wrk") {
                    args.loadgen = "internal".into();
                }
            }
            rt()?.block_on(run(*args))
        }
    }
}

/// CPU sets: latency runs everything on one core (steadiest at concurrency 1); load
/// puts the load generator on one core and the processes under test on the other; bulk
/// leaves everything free.
struct Cpus {
    all: String,
    one: String,
    load: String,
    sut: String,
}

fn cpus() -> Cpus {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    if n >= 2 {
        Cpus {
            all: format!("0-{}", n - 1),
            one: "0".into(),
            load: "0".into(),
            sut: format!("1-{}", n - 1),
        }
    } else {
        Cpus {
            all: "0".into(),
            one: "0".into(),
            load: "0".into(),
            sut: "0".into(),
        }
    }
}

struct Target {
    name: String,
    addr: SocketAddr,
    procs: Vec<Proc>,
}

impl Target {
    fn pids(&self) -> Vec<u32> {
        self.procs.iter().flat_map(|p| p.tree()).collect()
    }
}

fn port(args: &RunArgs, off: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], args.port_base + off))
}

fn self_pin(cpus: &str) {
    pin(&[std::process::id()], cpus);
}

async fn run(args: RunArgs) -> Result<()> {
    let scenarios: Vec<String> = args
        .scenarios
        .split(',')
        .map(|s| s.trim().to_owned())
        .collect();
    let want = |s: &str| scenarios.iter().any(|x| x == s);
    let work = args.out.join("work");
    let _ = std::fs::remove_dir_all(&work);
    let logs = work.join("logs");
    std::fs::create_dir_all(&logs)?;
    let work = std::fs::canonicalize(&work)?;
    let logs = std::fs::canonicalize(&logs)?;
    let env = Env {
        bin: std::fs::canonicalize(&args.bin_dir).with_context(|| {
            format!(
                "{} (build with cargo build --release)",
                args.bin_dir.display()
            )
        })?,
        me: std::env::current_exe()?,
        rathole: args
            .rathole
            .is_file()
            .then(|| std::fs::canonicalize(&args.rathole))
            .transpose()?,
        work: work.clone(),
        logs: logs.clone(),
    };
    for b in ["tether-relay", "tether-agent", "tether-certs"] {
        if !env.bin.join(b).is_file() {
            bail!("{} missing in {}", b, env.bin.display());
        }
    }
    let cpu = cpus();
    let mut rep = report::Report::new(
        &args.out,
        json!({
            "bin_dir": env.bin.display().to_string(), "smoke": args.smoke, "reps": args.reps, "latency_reps": args.latency_reps, "latency_requests": args.latency_requests,
            "throughput_seconds": args.seconds, "throughput_warmup_seconds": args.warmup_seconds, "loadgen": args.loadgen, "bulk_bytes": args.bulk_bytes,
            "cpus": {"latency": cpu.one, "load_generator": cpu.load, "under_test": cpu.sut, "bulk": cpu.all},
        }),
    );
    rep.note(&format!("Tether binaries measured: {}", env.bin.display()));
    let pki = work.join("pki");
    peers::pki(&env, &pki, "bench", &["bench".to_owned()])?;

    // A scenario that fails is noted in the report and makes the run fail at the end;
    // the other scenarios still run and the report is still written.
    let mut failed = Vec::new();
    let mut check = |name: &str, r: Result<()>, rep: &mut report::Report| {
        if let Err(e) = r {
            rep.note(&format!("scenario {name} FAILED: {e:#}"));
            failed.push(name.to_owned());
        }
    };
    if want("latency") || want("throughput") || want("bulk") {
        // The processes under test inherit this CPU mask, as they would under taskset or
        // in a container with that many CPUs: tokio-based ones (Tether, rathole) size
        // their worker pools from it. Later scenarios re-pin them as they need.
        self_pin(&cpu.sut);
        let started = start_targets(&args, &env, &pki, &mut rep).await;
        self_pin(&cpu.all);
        match started {
            Ok(targets) => {
                if want("latency") {
                    let r = latency::run(
                        args.latency_requests,
                        args.latency_reps,
                        &cpu.one,
                        &targets,
                        &mut rep,
                    )
                    .await;
                    check("latency", r, &mut rep);
                }
                if want("throughput") {
                    let r = throughput(&args, &cpu, &targets, &mut rep).await;
                    check("throughput", r, &mut rep);
                }
                if want("bulk") {
                    let r = bulk(&args, &cpu, &targets, &mut rep).await;
                    check("bulk", r, &mut rep);
                }
                for mut t in targets {
                    for p in &mut t.procs {
                        p.stop();
                    }
                }
            }
            Err(e) => check("start", Err(e), &mut rep),
        }
    }
    self_pin(&cpu.all);
    if want("scale") {
        let r = scale(&args, &env, &pki, &mut rep).await;
        check("scale", r, &mut rep);
    }
    if want("loss") {
        let r = loss(&args, &env, &pki, &mut rep).await;
        check("loss", r, &mut rep);
    }
    rep.finish()?;
    if !failed.is_empty() {
        bail!("scenarios failed: {}", failed.join(", "));
    }
    Ok(())
}

async fn start_targets(
    args: &RunArgs,
    env: &Env,
    pki: &std::path::Path,
    rep: &mut report::Report,
) -> Result<Vec<Target>> {
    let up = port(args, 1);
    let mut targets = Vec::new();
    let upstream = peers::upstream(env, "upstream", up, &[])?;
    procs::wait_tcp(up, Duration::from_secs(10))?;
    // The upstream is shared by every target; it rides in "direct"'s process list.
    for name in args.targets.split(',').map(str::trim) {
        let started: Result<(SocketAddr, Vec<Proc>)> = match name {
            "direct" => Ok((up, Vec::new())),
            "tether" => (|| {
                let p = RelayPorts {
                    tunnel: port(args, 10),
                    ingress: port(args, 11),
                    admin: port(args, 12),
                };
                let relay = peers::relay(env, "tether-relay", pki, &p, &[])?;
                let agent = peers::agent(env, "tether-agent", pki, "bench", p.tunnel, up, &[])?;
                Ok((p.ingress, vec![relay, agent]))
            })(),
            "quic-raw" => peers::quic_raw(env, pki, port(args, 34), port(args, 35), up)
                .map(|p| (port(args, 35), p)),
            "nginx" => peers::nginx(env, "nginx", port(args, 20), up, false, &[])
                .map(|p| (port(args, 20), vec![p])),
            "rathole" => peers::rathole(env, "rathole", port(args, 30), port(args, 31), up, false)
                .map(|p| (port(args, 31), p)),
            "rathole-noise" => peers::rathole(
                env,
                "rathole-noise",
                port(args, 32),
                port(args, 33),
                up,
                true,
            )
            .map(|p| (port(args, 33), p)),
            other => Err(anyhow::anyhow!("unknown target {other}")),
        };
        match started {
            Ok((addr, procs)) => {
                let t = Target {
                    name: name.to_owned(),
                    addr,
                    procs,
                };
                match peers::wait_ready(t.addr, Duration::from_secs(20)).await {
                    Ok(()) => targets.push(t),
                    Err(e) => rep.missing(
                        name,
                        &format!("did not come up: {e:#} (logs in {})", env.logs.display()),
                    ),
                }
            }
            Err(e) => rep.missing(name, &format!("{e:#}")),
        }
    }
    if let Some(d) = targets.iter_mut().find(|t| t.name == "direct") {
        d.procs.push(upstream);
    } else {
        targets.push(Target {
            name: "upstream".into(),
            addr: up,
            procs: vec![upstream],
        });
    }
    Ok(targets)
}

fn measured(targets: &[Target]) -> impl Iterator<Item = &Target> {
    targets.iter().filter(|t| t.name != "upstream")
}

/// Target order for repetition `r`: rotated so no target always runs first.
fn rotated(targets: &[Target], r: usize) -> Vec<&Target> {
    let v: Vec<&Target> = measured(targets).collect();
    let n = v.len().max(1);
    (0..v.len()).map(|i| v[(i + r) % n]).collect()
}

fn pin_all(targets: &[Target], cpus: &str) {
    for t in targets {
        pin(&t.pids(), cpus);
    }
}

fn wrk(addr: SocketAddr, conc: usize, secs: u64, cpus: &str) -> Result<(f64, u64)> {
    let out = procs::run(Command::new("taskset").args([
        "-c",
        cpus,
        "wrk",
        "-t1",
        &format!("-c{conc}"),
        &format!("-d{secs}s"),
        "-H",
        &format!("x-node-id: {}", client::NODE),
        &format!("http://{addr}/fixed"),
    ]))?;
    let mut rps = None;
    let mut errors = 0u64;
    for line in out.lines() {
        let l = line.trim();
        if let Some(v) = l.strip_prefix("Requests/sec:") {
            rps = v.trim().parse::<f64>().ok();
        }
        if let Some(v) = l.strip_prefix("Non-2xx or 3xx responses:") {
            errors += v.trim().parse::<u64>().unwrap_or(0);
        }
        if let Some(v) = l.strip_prefix("Socket errors:") {
            // connect N, read N, write N, timeout N
            errors += v
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    Ok((
        rps.with_context(|| format!("no Requests/sec in wrk output: {out}"))?,
        errors,
    ))
}

async fn throughput(
    args: &RunArgs,
    cpu: &Cpus,
    targets: &[Target],
    rep: &mut report::Report,
) -> Result<()> {
    let use_wrk = args.loadgen == "wrk" && procs::have("wrk");
    if args.loadgen == "wrk" && !use_wrk {
        rep.note("wrk is not installed (apt-get install wrk): throughput used the harness's own load loop");
    }
    eprintln!(
        "== throughput: {} s per point after {} s of warm-up per target and level, loadgen {} on cpu {}, targets on cpu {}",
        args.seconds,
        args.warmup_seconds,
        if use_wrk { "wrk" } else { "internal" },
        cpu.load,
        cpu.sut
    );
    pin_all(targets, &cpu.sut);
    self_pin(&cpu.load);
    let concs: Vec<usize> = args
        .concurrency
        .split(',')
        .map(|c| c.trim().parse())
        .collect::<Result<_, _>>()?;
    // One load run: (req/s, errors).
    let load = |addr: SocketAddr, c: usize, secs: u64| async move {
        if use_wrk {
            wrk(addr, c, secs, &cpu.load)
        } else {
            let d = Duration::from_secs(secs);
            let (ok, e) = client::load(addr, c, d).await?;
            Ok((ok as f64 / d.as_secs_f64(), e))
        }
    };
    let mut out = serde_json::Map::new();
    for &c in &concs {
        if args.warmup_seconds > 0 {
            for t in targets {
                load(t.addr, c, args.warmup_seconds)
                    .await
                    .with_context(|| format!("warm-up of {} at c={c}", t.name))?;
            }
        }
        let mut per: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
        let mut errs: std::collections::BTreeMap<String, u64> = Default::default();
        for r in 0..args.reps {
            for t in rotated(targets, r) {
                let (rps, e) = load(t.addr, c, args.seconds).await?;
                eprintln!("   c={c:<4} {:<14} {rps:>10.0} req/s  errors {e}", t.name);
                per.entry(t.name.clone()).or_default().push(rps);
                *errs.entry(t.name.clone()).or_default() += e;
            }
        }
        let mut m = serde_json::Map::new();
        for (name, v) in per {
            m.insert(
                name.clone(),
                json!({"rps": median(v.clone()), "reps": v, "errors": errs[&name]}),
            );
        }
        out.insert(c.to_string(), Value::Object(m));
    }
    rep.set("throughput", Value::Object(out));
    Ok(())
}

async fn bulk(
    args: &RunArgs,
    cpu: &Cpus,
    targets: &[Target],
    rep: &mut report::Report,
) -> Result<()> {
    eprintln!(
        "== bulk: one {} MiB download and upload per target, unpinned",
        args.bulk_bytes >> 20
    );
    pin_all(targets, &cpu.all);
    self_pin(&cpu.all);
    let mut down: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    let mut up: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    let mb = args.bulk_bytes as f64 / 1e6;
    for r in 0..args.reps {
        for t in rotated(targets, r) {
            let d = client::download(t.addr, args.bulk_bytes)
                .await
                .with_context(|| format!("download via {}", t.name))?;
            let u = client::upload(t.addr, args.bulk_bytes)
                .await
                .with_context(|| format!("upload via {}", t.name))?;
            eprintln!(
                "   {:<14} down {:>8.1} MB/s  up {:>8.1} MB/s",
                t.name,
                mb / d,
                mb / u
            );
            down.entry(t.name.clone()).or_default().push(mb / d);
            up.entry(t.name.clone()).or_default().push(mb / u);
        }
    }
    let mut out = serde_json::Map::new();
    for (name, d) in down {
        let u = up[&name].clone();
        out.insert(
            name,
            json!({"download_MBps": median(d.clone()), "upload_MBps": median(u.clone()),
            "download_reps": d, "upload_reps": u}),
        );
    }
    rep.set("bulk", Value::Object(out));
    Ok(())
}

/// Fetches the relay's /api/nodes and counts connections.
async fn relay_connections(admin: SocketAddr) -> Result<usize> {
    use http_body_util::BodyExt;
    let mut s = client::h1(admin).await?;
    let req = http::Request::get("/api/nodes")
        .header("host", "admin")
        .body(http_body_util::Empty::new().boxed())?;
    let body = s
        .send_request(req)
        .await?
        .into_body()
        .collect()
        .await?
        .to_bytes();
    let v: Value = serde_json::from_slice(&body)?;
    Ok(v["nodes"].as_array().map_or(0, |nodes| {
        nodes
            .iter()
            .map(|n| n["connections"].as_array().map_or(0, Vec::len))
            .sum()
    }))
}

async fn scale(
    args: &RunArgs,
    env: &Env,
    pki: &std::path::Path,
    rep: &mut report::Report,
) -> Result<()> {
    let counts: Vec<usize> = args
        .scale
        .split(',')
        .map(|c| c.trim().parse())
        .collect::<Result<_, _>>()?;
    let max_nodes = counts.iter().copied().max().unwrap_or(1).min(100);
    let nodes: Vec<String> = (0..max_nodes).map(|i| format!("s{i}")).collect();
    eprintln!("== scale: {counts:?} idle agents over up to {max_nodes} node identities");
    peers::pki(env, pki, "scale", &nodes)?;
    let configs: Vec<quinn::ClientConfig> = nodes
        .iter()
        .map(|n| {
            agents::client_config(
                &pki.join("ca.pem"),
                &pki.join(format!("{n}.pem")),
                &pki.join(format!("{n}.key")),
                ALPN_TUNNEL,
            )
        })
        .collect::<Result<_>>()?;
    let mut out = Vec::new();
    for &n in &counts {
        let k = n.min(max_nodes);
        let per_node = n.div_ceil(k);
        let total = k * per_node;
        let p = RelayPorts {
            tunnel: port(args, 40),
            ingress: port(args, 41),
            admin: port(args, 42),
        };
        let mut relay = peers::relay(env, &format!("scale-relay-{n}"), pki, &p, &[])?;
        procs::wait_tcp(p.admin, Duration::from_secs(10))?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = procs::rss_kib(relay.pid())?;
        let t0 = Instant::now();
        let fleet = agents::connect(p.tunnel, &configs[..k], per_node, 64).await?;
        let connect_s = t0.elapsed().as_secs_f64();
        let connected = fleet.agents.len();
        let until = Instant::now() + Duration::from_secs(60);
        let mut registered = 0;
        while Instant::now() < until {
            registered = relay_connections(p.admin).await.unwrap_or(0);
            if registered >= connected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let registered_s = t0.elapsed().as_secs_f64();
        // Let keep-alives and allocator settle, then read the relay's memory.
        tokio::time::sleep(Duration::from_secs(if args.smoke { 1 } else { 3 })).await;
        let after = procs::rss_kib(relay.pid())?;
        let per_agent = (after.saturating_sub(before)) as f64 / connected.max(1) as f64;
        // Requests spread over every connection: per node, one sequential request per
        // connection (the relay round-robins ties across a node's connections).
        let t1 = Instant::now();
        let ok = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let bad = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..32.min(k) {
            let (ok, bad, next) = (ok.clone(), bad.clone(), next.clone());
            let nodes = nodes[..k].to_vec();
            let ingress = p.ingress;
            tasks.push(tokio::spawn(async move {
                use std::sync::atomic::Ordering::Relaxed;
                let Ok(mut s) = client::h1(ingress).await else {
                    bad.fetch_add(1, Relaxed);
                    return;
                };
                loop {
                    let i = next.fetch_add(1, Relaxed);
                    if i >= nodes.len() {
                        break;
                    }
                    for _ in 0..per_node {
                        use http_body_util::BodyExt;
                        let req = http::Request::get("/scale")
                            .header("host", "bench.local")
                            .header("x-node-id", nodes[i].as_str())
                            .body(http_body_util::Empty::new().boxed())
                            .expect("req");
                        let r = async {
                            s.ready().await?;
                            let resp = s.send_request(req).await?;
                            let st = resp.status();
                            let b = resp.into_body().collect().await?.to_bytes();
                            anyhow::ensure!(st == 200 && &b[..] == b"ok", "status {st}");
                            Ok(())
                        }
                        .await;
                        match r {
                            Ok(()) => ok.fetch_add(1, Relaxed),
                            Err(_) => bad.fetch_add(1, Relaxed),
                        };
                    }
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        let req_s = t1.elapsed().as_secs_f64();
        use std::sync::atomic::Ordering::Relaxed;
        let hit = fleet
            .agents
            .iter()
            .filter(|a| a.served.load(Relaxed) > 0)
            .count();
        let row = json!({"agents": total, "connected": connected, "nodes": k, "connect_all_s": connect_s,
            "handshake_retries": fleet.retries, "connect_failed": fleet.failed, "registered": registered,
            "registered_s": registered_s, "rss_before_kib": before, "rss_after_kib": after,
            "rss_per_agent_kib": per_agent, "requests_ok": ok.load(Relaxed), "requests_failed": bad.load(Relaxed),
            "requests_s": req_s, "connections_that_served": hit});
        eprintln!("   {row}");
        out.push(row);
        rep.set("scale", Value::Array(out.clone()));
        fleet.close().await;
        relay.stop();
    }
    rep.set("scale", Value::Array(out));
    Ok(())
}

async fn loss(
    args: &RunArgs,
    env: &Env,
    pki: &std::path::Path,
    rep: &mut report::Report,
) -> Result<()> {
    let missing: Vec<&str> = ["ip", "nginx"]
        .into_iter()
        .filter(|c| !procs::have(c))
        .collect();
    if !missing.is_empty() {
        rep.skip("loss", &format!("{} not installed", missing.join(", ")));
        return Ok(());
    }
    let ns = match loss::Netns::create(args.loss_percent, Duration::from_millis(args.loss_delay_ms))
    {
        Ok(ns) => ns,
        Err(e) => {
            rep.skip(
                "loss",
                &format!("cannot set up two network namespaces with a lossy link here: {e:#}"),
            );
            return Ok(());
        }
    };
    eprintln!(
        "== loss: netns {} <-{}% loss, {}ms delay each way-> {} ({})",
        loss::NS_RELAY,
        args.loss_percent,
        args.loss_delay_ms,
        loss::NS_AGENT,
        ns.describe()
    );
    let (nr, na) = (
        loss::Netns::exec(loss::NS_RELAY),
        loss::Netns::exec(loss::NS_AGENT),
    );
    let up: SocketAddr = "127.0.0.1:18501".parse()?;
    let relay_ip: std::net::IpAddr = loss::IP_RELAY.parse()?;
    let agent_ip: std::net::IpAddr = loss::IP_AGENT.parse()?;
    let p = RelayPorts {
        tunnel: SocketAddr::new(relay_ip, 18510),
        ingress: "127.0.0.1:18511".parse()?,
        admin: "127.0.0.1:18512".parse()?,
    };
    let h2_addr = SocketAddr::new(agent_ip, 18520);
    let _procs = vec![
        peers::upstream(env, "loss-upstream", up, &na)?,
        peers::nginx(env, "loss-nginx-h2c", h2_addr, up, true, &na)?,
        peers::relay(env, "loss-relay", pki, &p, &nr)?,
        peers::agent(env, "loss-agent", pki, "bench", p.tunnel, up, &na)?,
    ];
    let probe = |addr: SocketAddr, secs: u64| -> Result<Value> {
        let mut c = Command::new(&nr[0]);
        c.args(&nr[1..]).arg(&env.me).args([
            "h2-lat",
            "--addr",
            &addr.to_string(),
            "--concurrency",
            "64",
            "--seconds",
            &secs.to_string(),
        ]);
        let out = procs::run(&mut c)?;
        Ok(serde_json::from_str(out.trim())?)
    };
    let mut per: std::collections::BTreeMap<&str, Vec<Value>> = Default::default();
    for r in 0..args.reps {
        let order = if r % 2 == 0 {
            [("tether", p.ingress), ("h2-over-tcp", h2_addr)]
        } else {
            [("h2-over-tcp", h2_addr), ("tether", p.ingress)]
        };
        for (name, addr) in order {
            let v =
                probe(addr, args.loss_seconds).with_context(|| format!("loss probe via {name}"))?;
            eprintln!("   {name:<12} {v}");
            per.entry(name).or_default().push(v);
        }
    }
    let mut out = serde_json::Map::new();
    for (name, v) in per {
        let f = |k: &str| median(v.iter().map(|x| x[k].as_f64().unwrap_or(0.0)).collect());
        out.insert(
            name.to_owned(),
            json!({"p50_ms": f("p50_ms"), "p99_ms": f("p99_ms"),
            "requests": v.iter().map(|x| x["n"].as_u64().unwrap_or(0)).sum::<u64>(),
            "errors": v.iter().map(|x| x["errors"].as_u64().unwrap_or(0)).sum::<u64>(), "reps": v}),
        );
    }
    if let Some((forwarded, dropped, no_netem)) = ns.link_counts() {
        // The table already names the link; the note adds what it did and why.
        rep.note(&format!(
            "loss link: it forwarded {forwarded} packets and dropped {dropped} ({:.2} %); netem was not used: {no_netem}",
            100.0 * dropped as f64 / (forwarded + dropped).max(1) as f64,
        ));
    }
    out.insert("link".into(), json!(ns.describe()));
    out.insert("loss_percent".into(), json!(args.loss_percent));
    out.insert("delay_ms".into(), json!(args.loss_delay_ms));
    rep.set("loss", Value::Object(out));
    drop(_procs);
    drop(ns);
    Ok(())
}
