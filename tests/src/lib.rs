//! Harness for Tether's end-to-end tests: real binaries, real certificates, 127.0.0.1,
//! ports chosen by the OS.
//!
//! Every process is started with `:0` listen addresses and reports what it bound in its
//! log; the harness reads those lines. Processes are killed when their handle drops, and
//! their logs are printed if the test is failing, so a red test explains itself.
//!
//! The binaries must be built first (`cargo build --workspace`, which the README's test
//! command does).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Path of a workspace binary next to the test executable (`target/<profile>/<name>`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build the binaries first with `cargo build --workspace`",
        path.display()
    );
    path
}

/// A running child process with its output captured line by line.
pub struct Proc {
    pub name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let mut child = cmd
            .env("RUST_LOG", "info")
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        for stream in [
            Box::new(out) as Box<dyn std::io::Read + Send>,
            Box::new(err),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Proc {
            name: name.to_owned(),
            child,
            lines,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Every line printed so far.
    pub fn log(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits (bounded) for a line containing `needle`; returns it.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: no log line containing {needle:?} within {timeout:?}; log:\n{}",
                    self.name,
                    self.log().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address in the `addr=` field of the first line containing `needle`.
    pub fn wait_for_addr(&self, needle: &str) -> SocketAddr {
        let line = self.wait_for(needle, Duration::from_secs(20));
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .unwrap_or_else(|| panic!("no addr= in {line:?}"));
        addr.parse()
            .unwrap_or_else(|e| panic!("bad addr in {line:?}: {e}"))
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit; returns its exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(15))
    }

    /// Sends a signal (e.g. `libc::SIGHUP`) without waiting.
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain syscall on our own child's pid.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits (bounded) for the process to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for child") {
                return status.code();
            }
            if Instant::now() > deadline {
                self.kill();
                panic!("{} did not exit within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the process vanishes without a word.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("----- {} log -----\n{}", self.name, self.log().join("\n"));
        }
    }
}

/// A throwaway CA with a relay certificate, made by the real `tether-certs`.
pub struct Pki {
    pub dir: PathBuf,
}

pub fn certs(args: &[&str]) -> std::process::Output {
    Command::new(bin("tether-certs"))
        .args(args)
        .output()
        .expect("running tether-certs")
}

fn certs_ok(args: &[&str]) {
    let out = certs(args);
    assert!(
        out.status.success(),
        "tether-certs {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        let d = dir.to_str().unwrap();
        certs_ok(&["ca", "init", "--dir", d]);
        certs_ok(&[
            "issue",
            "relay",
            "--dir",
            d,
            "--san",
            "localhost",
            "--san",
            "127.0.0.1",
        ]);
        Pki {
            dir: dir.to_owned(),
        }
    }

    /// Issues `<node>.pem` / `<node>.key` for an agent.
    pub fn agent(&self, node: &str, cluster: &str) -> (PathBuf, PathBuf) {
        let d = self.dir.to_str().unwrap();
        certs_ok(&[
            "issue",
            "agent",
            "--dir",
            d,
            "--node",
            node,
            "--cluster",
            cluster,
        ]);
        (
            self.dir.join(format!("{node}.pem")),
            self.dir.join(format!("{node}.key")),
        )
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// An agent's identity as config lines: this CA, and `cert`'s certificate and key.
    pub fn identity(&self, cert: (&Path, &Path)) -> String {
        format!(
            "ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            self.ca().display(),
            cert.0.display(),
            cert.1.display()
        )
    }
}

/// The sample on-prem service.
pub struct Sample {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl Sample {
    pub fn start(name: &str) -> Sample {
        let proc = Proc::spawn(
            &format!("sample {name}"),
            Command::new(bin("tether-sample-service")).args(["--name", name]),
        );
        let line = proc.wait_for("listening on", Duration::from_secs(10));
        let addr = line
            .trim_start_matches("listening on ")
            .trim()
            .parse()
            .expect("sample addr");
        Sample { proc, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A running relay and the addresses it bound.
pub struct Relay {
    pub proc: Proc,
    pub tunnel: SocketAddr,
    pub ingress: SocketAddr,
    pub admin: SocketAddr,
    /// Its config file (rewrite it and send SIGHUP to reload).
    pub config: PathBuf,
}

impl Relay {
    /// Starts a relay on OS-chosen ports; `extra_ingress` is appended to the `[ingress]`
    /// table and `tail` (more tables) to the file.
    pub fn start(pki: &Pki, work: &Path, extra_ingress: &str, tail: &str) -> Relay {
        Relay::start_with_tunnel(pki, work, "", extra_ingress, tail)
    }

    /// As [`Relay::start`], with `extra_tunnel` lines in the `[tunnel]` table too.
    pub fn start_with_tunnel(
        pki: &Pki,
        work: &Path,
        extra_tunnel: &str,
        extra_ingress: &str,
        tail: &str,
    ) -> Relay {
        let config = work.join("relay.toml");
        let pki_dir = pki.dir.display();
        std::fs::write(
            &config,
            format!(
                "[tunnel]\nlisten = \"127.0.0.1:0\"\nca = \"{pki_dir}/ca.pem\"\n\
                 cert = \"{pki_dir}/relay.pem\"\nkey = \"{pki_dir}/relay.key\"\n{extra_tunnel}\n\
                 [ingress]\nlisten = \"127.0.0.1:0\"\n{extra_ingress}\n\n\
                 [admin]\nlisten = \"127.0.0.1:0\"\n\n{tail}\n"
            ),
        )
        .unwrap();
        Relay::launch(config, None)
    }

    fn launch(config: PathBuf, ports: Option<(SocketAddr, SocketAddr, SocketAddr)>) -> Relay {
        let mut cmd = Command::new(bin("tether-relay"));
        cmd.arg("--config").arg(&config);
        if let Some((t, i, a)) = ports {
            cmd.args(["--tunnel-listen", &t.to_string()])
                .args(["--ingress-listen", &i.to_string()])
                .args(["--admin-listen", &a.to_string()]);
        }
        let proc = Proc::spawn("relay", &mut cmd);
        let tunnel = proc.wait_for_addr("tunnel listening");
        let ingress = proc.wait_for_addr("ingress listening");
        let admin = proc.wait_for_addr("admin listening");
        Relay {
            proc,
            tunnel,
            ingress,
            admin,
            config,
        }
    }

    /// Starts a new relay process on the same ports and config (after this one stopped).
    pub fn restart_on_same_ports(&self) -> Relay {
        Relay::launch(
            self.config.clone(),
            Some((self.tunnel, self.ingress, self.admin)),
        )
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.ingress)
    }

    /// `GET path` through the ingress, routed by `header: value` (`x-node-id`,
    /// `x-cluster-id`).
    pub async fn get(&self, header: &str, value: &str, path: &str) -> reqwest::Response {
        client()
            .get(self.url(path))
            .header(header, value)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} with {header}: {value}: {e}"))
    }

    /// URL on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// `GET /api/nodes` from the admin listener.
    pub async fn nodes(&self) -> serde_json::Value {
        let body = reqwest::get(format!("http://{}/api/nodes", self.admin))
            .await
            .expect("admin api")
            .text()
            .await
            .unwrap();
        serde_json::from_str(&body).expect("admin json")
    }

    /// Number of live tunnel connections the relay holds for `node`.
    pub async fn connections_of(&self, node: &str) -> usize {
        let nodes = self.nodes().await;
        nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == node)
            .map_or(0, |n| n["connections"].as_array().unwrap().len())
    }

    /// Waits (bounded) until `node` has `n` connections.
    pub async fn wait_connections(&self, node: &str, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let have = self.connections_of(node).await;
            if have == n {
                return;
            }
            if Instant::now() > deadline {
                panic!("node {node} has {have} connections, wanted {n}, after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// A running agent.
pub struct Agent {
    pub proc: Proc,
    /// Its config file (rewrite it and send SIGHUP to reload).
    pub config: PathBuf,
}

impl Agent {
    /// Starts an agent for `node` with `routes` as `(prefix, upstream URL)`.
    pub fn start(
        pki: &Pki,
        work: &Path,
        node: &str,
        cert: (&Path, &Path),
        relay: SocketAddr,
        connections: usize,
        routes: &[(&str, &str)],
    ) -> Agent {
        Agent::start_with_identity(work, node, &pki.identity(cert), relay, connections, routes)
    }

    /// Starts an agent whose identity is given as config lines (`state_dir = ...`, or
    /// `ca`/`cert`/`key`).
    pub fn start_with_identity(
        work: &Path,
        node: &str,
        identity: &str,
        relay: SocketAddr,
        connections: usize,
        routes: &[(&str, &str)],
    ) -> Agent {
        let mut toml = format!(
            "relay = \"{relay}\"\nserver_name = \"localhost\"\n{identity}connections = {connections}\n"
        );
        for (prefix, upstream) in routes {
            toml.push_str(&format!(
                "\n[[routes]]\nprefix = \"{prefix}\"\nupstream = \"{upstream}\"\n"
            ));
        }
        toml.push_str("\n[admin]\nlisten = \"127.0.0.1:0\"\n");
        let config = work.join(format!("agent-{node}.toml"));
        std::fs::write(&config, toml).unwrap();
        let proc = Proc::spawn(
            &format!("agent {node}"),
            Command::new(bin("tether-agent"))
                .arg("--config")
                .arg(&config),
        );
        Agent { proc, config }
    }
}

/// A node agent with its own sample service behind route `/`.
pub struct Site {
    pub sample: Sample,
    pub agent: Agent,
}

/// A relay plus the PKI and scratch directory everything lives in.
pub struct World {
    pub dir: tempfile::TempDir,
    pub pki: Pki,
    pub relay: Relay,
}

impl World {
    pub fn new() -> World {
        World::with_ingress("")
    }

    /// A world whose relay gets `extra_ingress` lines in its `[ingress]` table.
    pub fn with_ingress(extra_ingress: &str) -> World {
        World::with_relay_config(extra_ingress, "")
    }

    /// A world with enrollment on (`[enroll]` with the CA key, plus `extra_enroll` lines).
    pub fn with_enrollment(extra_enroll: &str) -> World {
        World::with_relay_config(
            "",
            &format!("[enroll]\nca_key = \"PKI/ca.key\"\n{extra_enroll}"),
        )
    }

    /// A world whose relay config gets `extra_ingress` in `[ingress]` and `tail` appended;
    /// `PKI` in `tail` stands for the PKI directory.
    pub fn with_relay_config(extra_ingress: &str, tail: &str) -> World {
        World::build("", extra_ingress, tail)
    }

    /// A world whose relay config gets `extra_tunnel` lines in its `[tunnel]` table.
    pub fn with_tunnel(extra_tunnel: &str) -> World {
        World::build(extra_tunnel, "", "")
    }

    fn build(extra_tunnel: &str, extra_ingress: &str, tail: &str) -> World {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(&dir.path().join("pki"));
        let tail = tail.replace("PKI", &pki.dir.display().to_string());
        let relay = Relay::start_with_tunnel(&pki, dir.path(), extra_tunnel, extra_ingress, &tail);
        World { dir, pki, relay }
    }

    /// `tether-certs token create` for `node` of `cluster`.
    pub fn token(&self, node: &str, cluster: &str, ttl: &str) -> String {
        let d = self.pki.dir.to_str().unwrap();
        let out = certs(&[
            "token",
            "create",
            "--dir",
            d,
            "--node",
            node,
            "--cluster",
            cluster,
            "--ttl",
            ttl,
        ]);
        assert!(
            out.status.success(),
            "token create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Starts a sample service named `svc-<node>` and an agent for it, and waits until
    /// the relay holds all of the agent's connections.
    pub async fn site(&self, node: &str, cluster: &str, connections: usize) -> Site {
        let sample = Sample::start(&format!("svc-{node}"));
        let (cert, key) = self.pki.agent(node, cluster);
        let agent = Agent::start(
            &self.pki,
            self.dir.path(),
            node,
            (&cert, &key),
            self.relay.tunnel,
            connections,
            &[("/", &sample.url())],
        );
        self.relay
            .wait_connections(node, connections, Duration::from_secs(15))
            .await;
        Site { sample, agent }
    }
}

impl Default for World {
    fn default() -> Self {
        World::new()
    }
}

/// An HTTP client for callers, with a bounded timeout so no test can hang.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Runs `tether-agent enroll` (bounded by its own 15 s exchange timeout).
pub fn enroll(relay: SocketAddr, token: &str, dir: &Path) -> std::process::Output {
    enroll_with(Command::new(bin("tether-agent")), relay, token, dir)
}

/// Runs `tether-agent enroll` through a prepared command (e.g. under `faketime`).
pub fn enroll_with(
    mut cmd: Command,
    relay: SocketAddr,
    token: &str,
    dir: &Path,
) -> std::process::Output {
    cmd.args([
        "enroll",
        "--relay",
        &relay.to_string(),
        "--server-name",
        "localhost",
        "--dir",
    ])
    .arg(dir)
    .env("TETHER_ENROLL_TOKEN", token)
    .env("RUST_BACKTRACE", "0")
    .output()
    .expect("running tether-agent enroll")
}

/// `GET url` → (status, body), for admin endpoints.
pub async fn get_text(url: &str) -> (u16, String) {
    let r = client()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}
