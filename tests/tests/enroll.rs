//! Enrollment, renewal and revocation, end to end with the real binaries.

use std::process::Command;
use std::time::{Duration, Instant};

use tether_e2e::{bin, certs, client, enroll, enroll_with, Agent, Pki, Sample, World};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn state_dir_identity(dir: &std::path::Path) -> String {
    format!("state_dir = \"{}\"\n", dir.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_enrolls_an_agent_that_then_serves_requests() {
    let w = World::with_enrollment("");
    let token = w.token("node-e", "west", "10m");
    let state = w.dir.path().join("state");
    let out = enroll(w.relay.tunnel, &token, &state);
    assert!(out.status.success(), "enroll failed: {}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("spiffe://tether.local/cluster/west/node/node-e"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state.join("agent.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // The issued certificate carries the token's identity and the default 7-day life.
    let inspect = certs(&["inspect", state.join("agent.pem").to_str().unwrap()]);
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(text.contains("node/node-e"), "{text}");

    let sample = Sample::start("svc-e");
    let _agent = Agent::start_with_identity(
        w.dir.path(),
        "node-e",
        &state_dir_identity(&state),
        w.relay.tunnel,
        1,
        &[("/", &sample.url())],
    );
    w.relay
        .wait_connections("node-e", 1, Duration::from_secs(15))
        .await;
    let r = w.relay.get("x-node-id", "node-e", "/info").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-service"], "svc-e");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_enrollments_fail_clearly_and_write_nothing() {
    let w = World::with_enrollment("");
    let refused = |token: &str, name: &str, expect: &str| {
        let dir = w.dir.path().join(name);
        let out = enroll(w.relay.tunnel, token, &dir);
        assert!(!out.status.success(), "{name}: enrollment should fail");
        let err = stderr(&out);
        assert!(
            err.contains(expect),
            "{name}: expected {expect:?} in: {err}"
        );
        assert!(
            !dir.join("agent.key").exists() && !dir.join("agent.pem").exists(),
            "{name}: wrote files"
        );
    };

    // Reused token.
    let token = w.token("node-r", "west", "10m");
    assert!(enroll(w.relay.tunnel, &token, &w.dir.path().join("first"))
        .status
        .success());
    refused(&token, "reused", "token-used");

    // Expired token.
    let token = w.token("node-x", "west", "1s");
    std::thread::sleep(Duration::from_millis(1500));
    refused(&token, "expired", "token-expired");

    // Garbled token: refused before any network traffic.
    let mut garbled = w.token("node-g", "west", "10m");
    garbled.replace_range(20..21, if &garbled[20..21] == "A" { "B" } else { "A" });
    refused(&garbled, "garbled", "corrupted");
    refused("hello", "garbage", "malformed");

    // Token from another CA: the relay's CA does not match the token's pin.
    let other = Pki::new(&w.dir.path().join("other-pki"));
    let out = certs(&[
        "token",
        "create",
        "--dir",
        other.dir.to_str().unwrap(),
        "--node",
        "n",
        "--cluster",
        "c",
    ]);
    let foreign = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    refused(&foreign, "foreign", "does not match the token");

    // Revoked token.
    let token = w.token("node-v", "west", "10m");
    let list = certs(&["token", "list", "--dir", w.pki.dir.to_str().unwrap()]);
    let listing = String::from_utf8_lossy(&list.stdout).into_owned();
    let id = listing
        .lines()
        .find(|l| l.contains("node-v"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert!(
        certs(&["token", "revoke", "--dir", w.pki.dir.to_str().unwrap(), &id])
            .status
            .success()
    );
    refused(&token, "token-revoked", "unknown or revoked");

    // A revoked node cannot enroll either.
    assert!(certs(&[
        "revoke",
        "--dir",
        w.pki.dir.to_str().unwrap(),
        "--node",
        "node-z"
    ])
    .status
    .success());
    let token = w.token("node-z", "west", "10m");
    std::thread::sleep(Duration::from_millis(1500)); // the relay polls the list every second
    refused(&token, "revoked-node", "revoked");

    // An existing identity is never overwritten without --force.
    let token = w.token("node-r2", "west", "10m");
    let out = enroll(w.relay.tunnel, &token, &w.dir.path().join("first"));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));

    // A relay that is not the one the token pins (another CA): refused by the agent.
    let plain = World::new();
    let token = w.token("node-i", "west", "10m");
    let out = enroll(plain.relay.tunnel, &token, &w.dir.path().join("impostor"));
    assert!(
        stderr(&out).contains("does not match the token"),
        "{}",
        stderr(&out)
    );
    assert!(!w.dir.path().join("impostor").join("agent.key").exists());

    // Enrollment that is not enabled on the relay.
    let token = plain.token("node-p", "west", "10m");
    let out = enroll(plain.relay.tunnel, &token, &w.dir.path().join("plain"));
    assert!(stderr(&out).contains("disabled"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_skew_of_a_few_minutes_is_tolerated() {
    if Command::new("faketime")
        .arg("-f")
        .arg("-1m")
        .arg("true")
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        eprintln!("SKIP: faketime not installed (apt-get install faketime)");
        return;
    }
    let w = World::with_enrollment("");
    for (i, skew) in ["-3m", "+3m"].into_iter().enumerate() {
        let token = w.token(&format!("node-s{i}"), "west", "10m");
        let mut cmd = Command::new("faketime");
        cmd.arg("-f").arg(skew).arg(bin("tether-agent"));
        let out = enroll_with(
            cmd,
            w.relay.tunnel,
            &token,
            &w.dir.path().join(format!("skew{i}")),
        );
        assert!(out.status.success(), "agent clock {skew}: {}", stderr(&out));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_swaps_the_certificate_without_cutting_a_stream() {
    let mut w = World::with_enrollment("cert_lifetime = \"1m\"\n");
    let token = w.token("node-n", "west", "10m");
    let state = w.dir.path().join("state");
    assert!(enroll(w.relay.tunnel, &token, &state).status.success());
    let first_cert = std::fs::read(state.join("agent.pem")).unwrap();

    let sample = Sample::start("svc-n");
    let agent = Agent::start_with_identity(
        w.dir.path(),
        "node-n",
        &state_dir_identity(&state),
        w.relay.tunnel,
        1,
        &[("/", &sample.url())],
    );
    w.relay
        .wait_connections("node-n", 1, Duration::from_secs(15))
        .await;

    // A 55-second stream spanning the renewal (due 40 s after issuance).
    let mut r = client()
        .get(w.relay.url("/stream?chunks=55&interval_ms=1000&size=100"))
        .header("x-node-id", "node-n")
        .timeout(Duration::from_secs(90))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut got = 0;
    while let Some(c) = r.chunk().await.expect("stream cut during renewal") {
        got += c.len();
    }
    assert_eq!(got, 55 * 100);
    agent
        .proc
        .wait_for("certificate renewed", Duration::from_secs(30));
    assert_ne!(std::fs::read(state.join("agent.pem")).unwrap(), first_cert);

    // Past the first certificate's expiry, a fresh connection works with the new one.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(w.relay.proc.terminate(), Some(0));
    let relay = w.relay.restart_on_same_ports();
    w.relay = relay;
    w.relay
        .wait_connections("node-n", 1, Duration::from_secs(10))
        .await;
    let r = w.relay.get("x-node-id", "node-n", "/info").await;
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_kicks_every_live_tunnel_of_the_node_within_five_seconds() {
    let w = World::new();
    let sample = Sample::start("svc-k");
    let (cert, key) = w.pki.agent("node-k", "west");
    // Two agents with the same identity at once: HA of one node, both allowed.
    let agents: Vec<_> = (0..2)
        .map(|i| {
            Agent::start(
                &w.pki,
                w.dir.path(),
                &format!("node-k{i}"),
                (&cert, &key),
                w.relay.tunnel,
                1,
                &[("/", &sample.url())],
            )
        })
        .collect();
    w.relay
        .wait_connections("node-k", 2, Duration::from_secs(15))
        .await;

    let started = Instant::now();
    let out = certs(&[
        "revoke",
        "--dir",
        w.pki.dir.to_str().unwrap(),
        "--node",
        "node-k",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    w.relay
        .wait_connections("node-k", 0, Duration::from_secs(5))
        .await;
    assert!(started.elapsed() < Duration::from_secs(5));

    let r = w.relay.get("x-node-id", "node-k", "/info").await;
    assert_eq!(r.status(), 503);
    // Reconnecting is refused in the handshake, and the agent says why.
    w.relay.proc.wait_for("revoked", Duration::from_secs(10));
    agents[0]
        .proc
        .wait_for("authentication failed", Duration::from_secs(15));
}
