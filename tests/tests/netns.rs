//! The deployment topology for real, with Linux network namespaces instead of Docker:
//!
//! ```text
//!   netns "cloud"  10.200.N.1/24            veth            10.200.N.2/24  netns "onprem"
//!   relay (tunnel udp, ingress tcp)  ◀══════ QUIC ═══════  agent ──▶ 127.0.0.1 sample service
//!   caller (curl)                         nftables in onprem: NEW inbound TCP/UDP dropped,
//!                                         established/related accepted
//! ```
//!
//! The test shows that the sample service answers the cloud directly *before* the
//! firewall goes up (so it really listens on the veth address), that a direct connection
//! from the cloud fails once the firewall is up (and that it is the firewall's drop rule
//! that stopped it), and that the same service is reached through the relay because the
//! agent dialled *out*.
//!
//! Needs root, `ip` (iproute2), `nft` (nftables; `iptables` is used if `nft` is missing)
//! and `curl`. Without root, or where `ip netns add` is refused (an unprivileged
//! container), it prints why and returns without failing. `.ci/run` installs the tools.
//! Every external command is bounded in time, and namespaces (with their veth pair and
//! firewall rules) are deleted on drop, even when the test panics.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tether_e2e::{bin, certs, Pki, Proc};

const NODE: &str = "node-onprem";
const CLUSTER: &str = "site-1";
const NFT_TABLE: &str = "tether_netns_test";

/// Runs `cmd` to completion, killing it after `timeout`. Returns its output (a killed
/// command gets a non-success status).
fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    // Drain both pipes on threads so a chatty command cannot block on a full pipe.
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for command") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().expect("reaping killed command");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

/// Runs `program args…` (bounded to 10 s) and panics with its stderr if it fails.
fn must(program: &str, args: &[&str]) -> String {
    let out = run(Command::new(program).args(args), Duration::from_secs(10));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Firewall {
    Nft,
    Iptables,
}

/// Two namespaces joined by a veth pair; deleted (with everything in them) on drop.
struct Topology {
    cloud: String,
    onprem: String,
    cloud_ip: String,
    onprem_ip: String,
    firewall: Firewall,
}

impl Topology {
    /// Creates the namespaces, or returns why it cannot (the caller skips).
    fn create(firewall: Firewall) -> Result<Topology, String> {
        let pid = std::process::id();
        let subnet = 10 + pid % 240;
        let cloud = format!("tth-cloud-{pid}");
        let onprem = format!("tth-onprem-{pid}");
        let out = run(
            Command::new("ip").args(["netns", "add", &cloud]),
            Duration::from_secs(10),
        );
        if !out.status.success() {
            return Err(format!(
                "`ip netns add` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        // From here on, Drop cleans up whatever was made.
        let topo = Topology {
            cloud,
            onprem,
            cloud_ip: format!("10.200.{subnet}.1"),
            onprem_ip: format!("10.200.{subnet}.2"),
            firewall,
        };
        must("ip", &["netns", "add", &topo.onprem]);
        let (vc, vo) = (format!("tthc{pid}"), format!("ttho{pid}"));
        must(
            "ip",
            &[
                "link",
                "add",
                &vc,
                "netns",
                &topo.cloud,
                "type",
                "veth",
                "peer",
                "name",
                &vo,
                "netns",
                &topo.onprem,
            ],
        );
        for (ns, dev, ip) in [
            (&topo.cloud, &vc, &topo.cloud_ip),
            (&topo.onprem, &vo, &topo.onprem_ip),
        ] {
            must(
                "ip",
                &["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", dev],
            );
            must("ip", &["-n", ns, "link", "set", dev, "up"]);
            must("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        Ok(topo)
    }

    /// A command that runs `program` inside namespace `ns`.
    fn exec(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(program);
        cmd
    }

    /// The "firewall" of the on-prem site: new inbound connections (TCP and UDP) are
    /// dropped, replies to connections that on-prem opened are let in, loopback is free.
    fn raise_firewall(&self) {
        match self.firewall {
            Firewall::Nft => {
                let rules = format!(
                    "table inet {NFT_TABLE} {{\n\
                     \tchain input {{\n\
                     \t\ttype filter hook input priority filter; policy accept;\n\
                     \t\tiif \"lo\" accept\n\
                     \t\tct state established,related counter accept comment \"replies\"\n\
                     \t\tct state invalid drop\n\
                     \t\tmeta l4proto {{ tcp, udp }} ct state new counter drop comment \"new-inbound\"\n\
                     \t}}\n\
                     }}\n"
                );
                let path =
                    std::env::temp_dir().join(format!("{NFT_TABLE}-{}.nft", std::process::id()));
                std::fs::write(&path, rules).unwrap();
                let out = run(
                    Topology::exec(&self.onprem, "nft").arg("-f").arg(&path),
                    Duration::from_secs(10),
                );
                let _ = std::fs::remove_file(&path);
                assert!(
                    out.status.success(),
                    "nft -f failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Firewall::Iptables => {
                for rule in [
                    &["-A", "INPUT", "-i", "lo", "-j", "ACCEPT"][..],
                    &[
                        "-A",
                        "INPUT",
                        "-m",
                        "conntrack",
                        "--ctstate",
                        "ESTABLISHED,RELATED",
                        "-j",
                        "ACCEPT",
                    ],
                    &[
                        "-A",
                        "INPUT",
                        "-m",
                        "conntrack",
                        "--ctstate",
                        "INVALID",
                        "-j",
                        "DROP",
                    ],
                    &[
                        "-A",
                        "INPUT",
                        "-p",
                        "tcp",
                        "-m",
                        "conntrack",
                        "--ctstate",
                        "NEW",
                        "-j",
                        "DROP",
                    ],
                    &[
                        "-A",
                        "INPUT",
                        "-p",
                        "udp",
                        "-m",
                        "conntrack",
                        "--ctstate",
                        "NEW",
                        "-j",
                        "DROP",
                    ],
                ] {
                    let mut args = vec!["netns", "exec", &self.onprem, "iptables", "-w", "5"];
                    args.extend_from_slice(rule);
                    must("ip", &args);
                }
            }
        }
    }

    /// Packets counted by the firewall rule that drops new inbound connections, and by
    /// the one that accepts replies.
    fn counters(&self) -> (u64, u64) {
        match self.firewall {
            Firewall::Nft => {
                let listing = must(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        &self.onprem,
                        "nft",
                        "list",
                        "table",
                        "inet",
                        NFT_TABLE,
                    ],
                );
                let packets = |comment: &str| -> u64 {
                    let line = listing
                        .lines()
                        .find(|l| l.contains(comment))
                        .unwrap_or_else(|| panic!("no rule {comment:?} in:\n{listing}"));
                    let mut words = line.split_whitespace();
                    words
                        .by_ref()
                        .find(|w| *w == "packets")
                        .expect("counter on rule");
                    words.next().unwrap().parse().unwrap()
                };
                (packets("\"new-inbound\""), packets("\"replies\""))
            }
            Firewall::Iptables => {
                let listing = must(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        &self.onprem,
                        "iptables",
                        "-w",
                        "5",
                        "-L",
                        "INPUT",
                        "-v",
                        "-n",
                        "-x",
                    ],
                );
                let (mut dropped, mut replies) = (0, 0);
                for line in listing.lines() {
                    let packets: Option<u64> =
                        line.split_whitespace().next().and_then(|w| w.parse().ok());
                    if let Some(p) = packets {
                        if line.contains("DROP") && line.contains("NEW") {
                            dropped += p;
                        } else if line.contains("ACCEPT") && line.contains("ESTABLISHED") {
                            replies += p;
                        }
                    }
                }
                (dropped, replies)
            }
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth pair (and so the pair) and its
        // firewall rules. Processes inside were killed before this runs.
        for ns in [&self.onprem, &self.cloud] {
            let _ = run(
                Command::new("ip").args(["netns", "del", ns]),
                Duration::from_secs(10),
            );
        }
    }
}

/// Deletes namespaces left by earlier runs of this test that were killed outright
/// (SIGKILL skips Drop); only ours, recognised by name and a dead pid.
fn remove_stale_namespaces() {
    let out = run(
        Command::new("ip").args(["netns", "list"]),
        Duration::from_secs(10),
    );
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let pid = name
            .strip_prefix("tth-cloud-")
            .or_else(|| name.strip_prefix("tth-onprem-"));
        if let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = run(
                    Command::new("ip").args(["netns", "del", name]),
                    Duration::from_secs(10),
                );
            }
        }
    }
}

/// One HTTP exchange made by curl inside a namespace.
struct CurlResult {
    ok: bool,
    exit: Option<i32>,
    status: u16,
    head: String,
    body: String,
    stderr: String,
    elapsed: Duration,
}

impl CurlResult {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

/// `curl` run in namespace `ns`; the connect attempt gives up after `connect` and the
/// whole exchange after `total`.
fn curl(ns: &str, url: &str, headers: &[&str], connect: u64, total: u64) -> CurlResult {
    let mut cmd = Topology::exec(ns, "curl");
    cmd.args(["-sS", "-i", "--noproxy", "*"])
        .args(["--connect-timeout", &connect.to_string()])
        .args(["-m", &total.to_string()]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.arg(url);
    let started = Instant::now();
    let out = run(&mut cmd, Duration::from_secs(total + 5));
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .map_or((text.clone(), String::new()), |(h, b)| {
            (h.to_owned(), b.to_owned())
        });
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    CurlResult {
        ok: out.status.success(),
        exit: out.status.code(),
        status,
        head,
        body,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed,
    }
}

/// The port in a `listening on <addr>` line.
fn listening_port(line: &str) -> u16 {
    line.trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"))
}

#[test]
fn caller_in_cloud_reaches_firewalled_onprem_service_only_through_the_tunnel() {
    // --- can this machine do it at all? ---
    // SAFETY: plain syscall without arguments.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED netns test: needs root to create network namespaces");
        return;
    }
    for tool in ["ip", "curl"] {
        if !have(tool) {
            eprintln!("SKIPPED netns test: `{tool}` is not installed (`.ci/run` installs it)");
            assert!(
                std::env::var_os("CI").is_none(),
                "`{tool}` missing under CI: .ci/run should have installed it"
            );
            return;
        }
    }
    let firewall = if have("nft") {
        Firewall::Nft
    } else if have("iptables") {
        Firewall::Iptables
    } else {
        eprintln!("SKIPPED netns test: neither `nft` nor `iptables` is installed");
        assert!(
            std::env::var_os("CI").is_none(),
            "no firewall tool under CI: .ci/run should have installed nftables"
        );
        return;
    };
    remove_stale_namespaces();
    let topo = match Topology::create(firewall) {
        Ok(t) => t,
        Err(why) => {
            eprintln!("SKIPPED netns test: {why}");
            return;
        }
    };
    eprintln!(
        "netns test: cloud={} ({}), onprem={} ({}), firewall={firewall:?}",
        topo.cloud, topo.cloud_ip, topo.onprem, topo.onprem_ip
    );

    // Declared after `topo`, so every process is killed before the namespaces go.
    let dir = tempfile::tempdir().unwrap();

    // --- the on-prem service, listening on every address of "onprem" ---
    let sample = Proc::spawn(
        "sample (onprem)",
        Topology::exec(&topo.onprem, bin("tether-sample-service")).args([
            "--listen",
            "0.0.0.0:0",
            "--name",
            "onprem-service",
        ]),
    );
    let service_port = listening_port(&sample.wait_for("listening on", Duration::from_secs(10)));
    let direct_url = format!("http://{}:{service_port}/info", topo.onprem_ip);

    // Control: with no firewall yet, the cloud *can* reach it directly, so what stops
    // it below is the firewall and nothing else.
    let before = curl(&topo.cloud, &direct_url, &[], 2, 5);
    assert!(
        before.ok && before.status == 200,
        "without the firewall the cloud should reach the service directly: exit {:?}, {}\n{}",
        before.exit,
        before.stderr,
        before.head
    );

    topo.raise_firewall();
    let (dropped_before, _) = topo.counters();

    // --- no direct path: a connection from the cloud dies in the firewall ---
    let direct = curl(&topo.cloud, &direct_url, &[], 2, 3);
    assert!(
        !direct.ok && direct.status == 0,
        "the cloud reached the on-prem service directly through the firewall: {}\n{}",
        direct.head,
        direct.body
    );
    assert!(
        direct.elapsed < Duration::from_secs(5),
        "the direct attempt was not bounded: {:?}",
        direct.elapsed
    );
    let (dropped_after, _) = topo.counters();
    assert!(
        dropped_after > dropped_before,
        "the direct attempt failed ({}) but the firewall's drop rule saw nothing",
        direct.stderr.trim()
    );
    eprintln!(
        "direct cloud → onprem connect failed as it should after {:?}: curl exit {:?}: {}",
        direct.elapsed,
        direct.exit,
        direct.stderr.trim()
    );

    // --- PKI: the relay's certificate names its cloud address ---
    let pki_dir = dir.path().join("pki");
    let d = pki_dir.to_str().unwrap();
    for args in [
        &["ca", "init", "--dir", d][..],
        &["issue", "relay", "--dir", d, "--san", &topo.cloud_ip],
    ] {
        let out = certs(args);
        assert!(
            out.status.success(),
            "tether-certs {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pki = Pki {
        dir: pki_dir.clone(),
    };
    let (agent_cert, agent_key) = pki.agent(NODE, CLUSTER);

    // --- relay in the cloud: tunnel and ingress on the cloud address ---
    let relay_toml = dir.path().join("relay.toml");
    std::fs::write(
        &relay_toml,
        format!(
            "[tunnel]\nlisten = \"{ip}:0\"\nca = \"{d}/ca.pem\"\ncert = \"{d}/relay.pem\"\n\
             key = \"{d}/relay.key\"\n\n[ingress]\nlisten = \"{ip}:0\"\nrequest_timeout = \"10s\"\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n",
            ip = topo.cloud_ip
        ),
    )
    .unwrap();
    let relay = Proc::spawn(
        "relay (cloud)",
        Topology::exec(&topo.cloud, bin("tether-relay"))
            .arg("--config")
            .arg(&relay_toml),
    );
    let tunnel = relay.wait_for_addr("tunnel listening");
    let ingress = relay.wait_for_addr("ingress listening");
    let admin = relay.wait_for_addr("admin listening");

    // --- agent on-prem: dials out to the relay, serves the local service ---
    let agent_toml = dir.path().join("agent.toml");
    std::fs::write(
        &agent_toml,
        format!(
            "relay = \"{tunnel}\"\nserver_name = \"{}\"\nca = \"{d}/ca.pem\"\ncert = \"{}\"\n\
             key = \"{}\"\nconnections = 2\n\n[[routes]]\nprefix = \"/\"\n\
             upstream = \"http://127.0.0.1:{service_port}\"\n",
            topo.cloud_ip,
            agent_cert.display(),
            agent_key.display()
        ),
    )
    .unwrap();
    let agent = Proc::spawn(
        "agent (onprem)",
        Topology::exec(&topo.onprem, bin("tether-agent"))
            .arg("--config")
            .arg(&agent_toml),
    );

    // Wait (bounded) until the relay holds both of the agent's connections.
    let nodes_url = format!("http://{admin}/api/nodes");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = curl(&topo.cloud, &nodes_url, &[], 2, 5);
        let connections = serde_json::from_str::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|v| {
                v["nodes"]
                    .as_array()?
                    .iter()
                    .find(|n| n["node"] == NODE)
                    .map(|n| n["connections"].as_array().map_or(0, Vec::len))
            })
            .unwrap_or(0);
        if connections == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent's tunnels never came up through the firewall; /api/nodes: {}\nagent log:\n{}",
            r.body,
            agent.log().join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // --- through the tunnel: caller in the cloud → relay ingress → agent → service ---
    let node_header = format!("x-node-id: {NODE}");
    let via = curl(
        &topo.cloud,
        &format!("http://{ingress}/info?via=tether"),
        &[&node_header],
        2,
        10,
    );
    assert!(
        via.ok && via.status == 200,
        "request through the relay failed: exit {:?} {}\n{}\n{}",
        via.exit,
        via.stderr,
        via.head,
        via.body
    );
    assert_eq!(via.header("x-service").as_deref(), Some("onprem-service"));
    let info: serde_json::Value = serde_json::from_str(&via.body).expect("service JSON");
    assert_eq!(info["service"], "onprem-service");
    assert_eq!(info["path"], "/info?via=tether");
    // The service sees the caller's cloud address, forwarded by the relay.
    assert_eq!(info["headers"]["x-forwarded-for"], topo.cloud_ip.as_str());

    // By cluster too, and a body large enough to need many packets each way.
    let cluster_header = format!("x-cluster-id: {CLUSTER}");
    let big = run(
        Topology::exec(&topo.cloud, "curl")
            .args(["-sS", "-f", "--noproxy", "*", "-m", "20", "-o", "/dev/null"])
            .args(["-w", "%{http_code} %{size_download}", "-H", &cluster_header])
            .arg(format!("http://{ingress}/bytes/4194304")),
        Duration::from_secs(25),
    );
    assert_eq!(
        String::from_utf8_lossy(&big.stdout),
        "200 4194304",
        "4 MiB through the tunnel by cluster: {}",
        String::from_utf8_lossy(&big.stderr)
    );

    // The tunnel rode on replies the firewall let in; the direct path is still shut.
    let (_, replies) = topo.counters();
    assert!(
        replies > 0,
        "the firewall let no replies in, yet the tunnel works?"
    );
    let again = curl(&topo.cloud, &direct_url, &[], 2, 3);
    assert!(
        !again.ok && again.status == 0,
        "direct path opened while the tunnel was up"
    );
    eprintln!(
        "through the relay: {} from {:?}; direct path still closed (curl exit {:?})",
        via.status,
        via.header("x-service"),
        again.exit
    );

    drop(agent);
    drop(relay);
    drop(sample);
}
