//! Starting the targets: the upstream, Tether (relay + one agent), the quic-raw floor,
//! nginx and rathole.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::procs::{self, Proc};

/// Where binaries and scratch files live.
pub struct Env {
    /// `target/release` (tether-relay, tether-agent, tether-certs).
    pub bin: PathBuf,
    /// This harness's own binary (the upstream subcommand).
    pub me: PathBuf,
    /// rathole, if installed.
    pub rathole: Option<PathBuf>,
    pub work: PathBuf,
    pub logs: PathBuf,
}

/// `prefix` runs a command inside a network namespace (`ip netns exec NS`), or nothing.
fn command(prefix: &[String], program: &Path) -> Command {
    if prefix.is_empty() {
        Command::new(program)
    } else {
        let mut c = Command::new(&prefix[0]);
        c.args(&prefix[1..]).arg(program);
        c
    }
}

pub fn upstream(env: &Env, name: &str, listen: SocketAddr, ns: &[String]) -> Result<Proc> {
    let mut c = command(ns, &env.me);
    c.args(["upstream", "--listen", &listen.to_string()]);
    Proc::spawn(name, c, &env.logs)
}

pub fn certs(env: &Env, args: &[&str]) -> Result<()> {
    procs::run(Command::new(env.bin.join("tether-certs")).args(args))?;
    Ok(())
}

/// A fresh CA, the relay certificate and agent certificates for `nodes` in `cluster`.
pub fn pki(env: &Env, dir: &Path, cluster: &str, nodes: &[String]) -> Result<()> {
    let d = dir.to_str().context("utf-8 path")?;
    if !dir.join("ca.pem").exists() {
        certs(env, &["ca", "init", "--dir", d])?;
        certs(
            env,
            &[
                "issue",
                "relay",
                "--dir",
                d,
                "--san",
                "localhost",
                "--san",
                "127.0.0.1",
            ],
        )?;
    }
    for n in nodes {
        if !dir.join(format!("{n}.pem")).exists() {
            certs(
                env,
                &[
                    "issue",
                    "agent",
                    "--dir",
                    d,
                    "--node",
                    n,
                    "--cluster",
                    cluster,
                ],
            )?;
        }
    }
    Ok(())
}

pub struct RelayPorts {
    pub tunnel: SocketAddr,
    pub ingress: SocketAddr,
    pub admin: SocketAddr,
}

pub fn relay(env: &Env, name: &str, pki: &Path, p: &RelayPorts, ns: &[String]) -> Result<Proc> {
    let cfg = env.work.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[tunnel]\nlisten = \"{}\"\nca = \"{pki}/ca.pem\"\ncert = \"{pki}/relay.pem\"\nkey = \"{pki}/relay.key\"\n\n\
             [ingress]\nlisten = \"{}\"\n\n[admin]\nlisten = \"{}\"\n",
            p.tunnel,
            p.ingress,
            p.admin,
            pki = pki.display()
        ),
    )?;
    let mut c = command(ns, &env.bin.join("tether-relay"));
    c.arg("--config").arg(&cfg);
    Proc::spawn(name, c, &env.logs)
}

pub fn agent(
    env: &Env,
    name: &str,
    pki: &Path,
    node: &str,
    relay: SocketAddr,
    upstream: SocketAddr,
    ns: &[String],
) -> Result<Proc> {
    let cfg = env.work.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "relay = \"{relay}\"\nserver_name = \"localhost\"\nca = \"{pki}/ca.pem\"\n\
             cert = \"{pki}/{node}.pem\"\nkey = \"{pki}/{node}.key\"\nconnections = 1\n\n\
             [[routes]]\nprefix = \"/\"\nupstream = \"http://{upstream}\"\n",
            pki = pki.display()
        ),
    )?;
    let mut c = command(ns, &env.bin.join("tether-agent"));
    c.arg("--config").arg(&cfg);
    Proc::spawn(name, c, &env.logs)
}

/// The `quic-raw` floor (bench/src/quic_raw.rs): its relay takes callers on `tcp` and the
/// agent on `quic`; the agent carries each stream to `upstream`.
pub fn quic_raw(
    env: &Env,
    pki: &Path,
    quic: SocketAddr,
    tcp: SocketAddr,
    upstream: SocketAddr,
) -> Result<Vec<Proc>> {
    // `tether-bench <side> --quic QUIC --pki PKI <flag> <addr>`, logging to <side>.log.
    let side = |name: &str, flag: &str, addr: SocketAddr| {
        let mut c = Command::new(&env.me);
        c.args([name, "--quic", &quic.to_string(), flag, &addr.to_string()])
            .arg("--pki")
            .arg(pki);
        Proc::spawn(name, c, &env.logs)
    };
    let relay = side("quic-raw-relay", "--tcp", tcp)?;
    procs::wait_tcp(tcp, Duration::from_secs(10))?;
    let agent = side("quic-raw-agent", "--upstream", upstream)?;
    Ok(vec![relay, agent])
}

/// nginx as a plain reverse proxy to `upstream` (one worker, keep-alive upstream pool,
/// no buffering so bulk transfers stream). `h2c` serves HTTP/2 with prior knowledge.
pub fn nginx(
    env: &Env,
    name: &str,
    listen: SocketAddr,
    upstream: SocketAddr,
    h2c: bool,
    ns: &[String],
) -> Result<Proc> {
    let nginx = procs::which("nginx").context("nginx is not installed (apt-get install nginx)")?;
    let dir = env.work.join(name);
    std::fs::create_dir_all(dir.join("tmp"))?;
    let d = dir.display();
    let user = if unsafe { libc::geteuid() } == 0 {
        "user root;"
    } else {
        ""
    };
    let http2 = if h2c { " http2" } else { "" };
    let conf = format!(
        "{user}\nworker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 8192; }}\n\
         http {{\n  access_log {d}/access.log;\n\
           client_body_temp_path {d}/tmp/body; proxy_temp_path {d}/tmp/proxy;\n\
           fastcgi_temp_path {d}/tmp/fcgi; uwsgi_temp_path {d}/tmp/uwsgi; scgi_temp_path {d}/tmp/scgi;\n\
           keepalive_requests 1000000;\n\
           upstream up {{ server {upstream}; keepalive 256; keepalive_requests 1000000; }}\n\
           server {{\n    listen {listen}{http2};\n    client_max_body_size 0;\n\
             location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\";\n\
               proxy_buffering off; proxy_request_buffering off; }}\n  }}\n}}\n"
    );
    let cfg = dir.join("nginx.conf");
    std::fs::write(&cfg, conf)?;
    let mut c = command(ns, &nginx);
    c.arg("-p").arg(&dir).arg("-e").arg(dir.join("error.log"));
    c.arg("-c").arg(&cfg);
    Proc::spawn(name, c, &env.logs)
}

/// Noise keypair from `rathole --genkey`: (private, public).
fn rathole_keys(rathole: &Path) -> Result<(String, String)> {
    let out = procs::run(Command::new(rathole).arg("--genkey"))?;
    let mut lines = out.lines().map(str::trim).filter(|l| !l.is_empty());
    let (mut private, mut public) = (None, None);
    while let Some(l) = lines.next() {
        if l.starts_with("Private Key") {
            private = lines.next().map(str::to_owned);
        } else if l.starts_with("Public Key") {
            public = lines.next().map(str::to_owned);
        }
    }
    match (private, public) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => bail!("cannot parse `rathole --genkey` output: {out}"),
    }
}

/// rathole server + client exposing `upstream` at `service`; `noise` turns on its Noise
/// encryption (Noise_NK_25519_ChaChaPoly_BLAKE2s).
pub fn rathole(
    env: &Env,
    name: &str,
    control: SocketAddr,
    service: SocketAddr,
    upstream: SocketAddr,
    noise: bool,
) -> Result<Vec<Proc>> {
    let rathole = env
        .rathole
        .clone()
        .context("rathole is not installed (bench/run.sh installs it)")?;
    let (st, ct) = if noise {
        let (private, public) = rathole_keys(&rathole)?;
        (
            format!("[server.transport]\ntype = \"noise\"\n[server.transport.noise]\nlocal_private_key = \"{private}\"\n"),
            format!("[client.transport]\ntype = \"noise\"\n[client.transport.noise]\nremote_public_key = \"{public}\"\n"),
        )
    } else {
        (String::new(), String::new())
    };
    let s = env.work.join(format!("{name}-server.toml"));
    std::fs::write(
        &s,
        format!("[server]\nbind_addr = \"{control}\"\n{st}\n[server.services.bench]\ntoken = \"bench-token\"\nbind_addr = \"{service}\"\n"),
    )?;
    let c = env.work.join(format!("{name}-client.toml"));
    std::fs::write(
        &c,
        format!("[client]\nremote_addr = \"{control}\"\n{ct}\n[client.services.bench]\ntoken = \"bench-token\"\nlocal_addr = \"{upstream}\"\n"),
    )?;
    let mut sc = Command::new(&rathole);
    sc.arg("--server").arg(&s).env("RUST_LOG", "warn");
    let server = Proc::spawn(&format!("{name}-server"), sc, &env.logs)?;
    procs::wait_tcp(control, Duration::from_secs(10))?;
    let mut cc = Command::new(&rathole);
    cc.arg("--client").arg(&c).env("RUST_LOG", "warn");
    let client = Proc::spawn(&format!("{name}-client"), cc, &env.logs)?;
    Ok(vec![server, client])
}

/// Waits until a GET of /fixed at `addr` succeeds (the whole path is up).
pub async fn wait_ready(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let until = Instant::now() + timeout;
    loop {
        match crate::client::latency(addr, 0, 1).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > until => {
                return Err(e.context(format!("{addr} not ready after {timeout:?}")))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
