//! Only agents with a valid certificate from our CA get a tunnel.

use std::time::Duration;

use tether_e2e::{certs, Agent, Pki, World};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_with_bad_certificates_are_refused_in_the_handshake() {
    let w = World::new();

    // Another CA, same node name.
    let other = Pki::new(&w.dir.path().join("other-pki"));
    let (cert, key) = other.agent("node-x", "west");
    let mut intruder = Agent::start(
        &w.pki,
        w.dir.path(),
        "node-x",
        (&cert, &key),
        w.relay.tunnel,
        1,
        &[("/", "http://127.0.0.1:9")],
    );
    w.relay
        .proc
        .wait_for("agent refused in handshake", Duration::from_secs(15));
    intruder
        .proc
        .wait_for("authentication failed", Duration::from_secs(15));

    // The relay's own (server-only) certificate is no agent identity either.
    let relay_cert = (w.pki.dir.join("relay.pem"), w.pki.dir.join("relay.key"));
    let mut server_only = Agent::start(
        &w.pki,
        w.dir.path(),
        "server-only",
        (&relay_cert.0, &relay_cert.1),
        w.relay.tunnel,
        1,
        &[("/", "http://127.0.0.1:9")],
    );
    server_only
        .proc
        .wait_for("client authentication", Duration::from_secs(15));

    assert_eq!(w.relay.nodes().await["nodes"].as_array().unwrap().len(), 0);
    let (_, metrics) = tether_e2e::get_text(&w.relay.admin_url("/metrics")).await;
    for reason in ["unknown-ca", "wrong-usage"] {
        let needle =
            format!("tether_relay_handshakes_total{{result=\"Refused\",reason=\"{reason}\"}}");
        assert!(metrics.contains(&needle), "missing {needle} in\n{metrics}");
    }
    let r = w.relay.get("x-node-id", "node-x", "/").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-tether-error"], "no-tunnel");
    intruder.proc.kill();
    server_only.proc.kill();
}

#[test]
fn tether_certs_refuses_bad_input_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let pki = Pki::new(dir.path());
    let ca_before = std::fs::read(pki.ca()).unwrap();

    let out = certs(&["ca", "init", "--dir", d]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_eq!(std::fs::read(pki.ca()).unwrap(), ca_before, "CA untouched");

    for (node, cluster) in [
        ("Node", "west"),
        ("a_b", "west"),
        ("ok", "WEST"),
        ("", "west"),
    ] {
        let out = certs(&[
            "issue",
            "agent",
            "--dir",
            d,
            "--node",
            node,
            "--cluster",
            cluster,
        ]);
        assert!(!out.status.success(), "{node}/{cluster} accepted");
        assert!(!dir.path().join(format!("{node}.pem")).exists());
    }

    let out = certs(&[
        "issue",
        "agent",
        "--dir",
        d,
        "--node",
        "n1",
        "--cluster",
        "west",
    ]);
    assert!(out.status.success());
    let out = certs(&["inspect", dir.path().join("n1.pem").to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("spiffe://tether.local/cluster/west/node/n1"),
        "{text}"
    );
    assert!(text.contains("client-auth"), "{text}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for key in ["ca.key", "relay.key", "n1.key"] {
            let mode = std::fs::metadata(dir.path().join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
    }

    let out = certs(&["inspect", dir.path().join("nope.pem").to_str().unwrap()]);
    assert!(!out.status.success());
}
