//! Operability: metrics and admin API, graceful drain under load, hot reload, the status
//! page in a real browser.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tether_e2e::{client, get_text, Sample, World};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_registry_api() {
    let w = World::new();
    let a = w.site("node-a", "west", 2).await;
    for _ in 0..5 {
        let r = w.relay.get("x-cluster-id", "west", "/bytes/1000").await;
        assert_eq!(r.bytes().await.unwrap().len(), 1000);
    }
    let r = w.relay.get("x-node-id", "ghost", "/").await;
    assert_eq!(r.status(), 503);

    // One access-log line per request, logfmt-style, complete when the body was.
    let line = w
        .relay
        .proc
        .wait_for("path=/bytes/1000", Duration::from_secs(5));
    for field in [
        "request node=node-a cluster=west",
        "method=GET",
        "status=200",
        "bytes_out=1000",
        "complete=true",
    ] {
        assert!(line.contains(field), "missing {field} in {line}");
    }
    let line = w
        .relay
        .proc
        .wait_for("error=no-tunnel", Duration::from_secs(5));
    assert!(line.contains("status=503"), "{line}");

    assert_eq!(get_text(&w.relay.admin_url("/healthz")).await.0, 200);
    assert_eq!(get_text(&w.relay.admin_url("/readyz")).await.0, 200);
    let (status, metrics) = get_text(&w.relay.admin_url("/metrics")).await;
    assert_eq!(status, 200);
    for needle in [
        "tether_relay_agents{cluster=\"west\"} 1",
        "tether_relay_connections{cluster=\"west\"} 2",
        "tether_relay_streams_total{node=\"node-a\",cluster=\"west\"} 5",
        "tether_relay_request_duration_seconds_count{cluster=\"west\",class=\"2xx\"} 5",
        "tether_relay_body_bytes_total{cluster=\"west\",direction=\"out\"} 5000",
        "tether_relay_errors_total{code=\"no-tunnel\"} 1",
        "tether_relay_handshakes_total{result=\"Accepted\",reason=\"\"} 2",
        "tether_relay_pick_duration_seconds_count",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
    let (_, clusters) = get_text(&w.relay.admin_url("/api/clusters")).await;
    let v: serde_json::Value = serde_json::from_str(&clusters).unwrap();
    assert_eq!(v["clusters"][0]["cluster"], "west");
    assert_eq!(v["clusters"][0]["connections"], 2);
    let (_, nodes) = get_text(&w.relay.admin_url("/api/nodes")).await;
    let v: serde_json::Value = serde_json::from_str(&nodes).unwrap();
    let conn = &v["nodes"][0]["connections"][0];
    assert!(
        conn["rtt_ms"].as_f64().is_some() && conn["cert_serial"].as_str().unwrap().contains(':')
    );
    // The QUIC path: requests have been carried, none lost on loopback.
    let path = &conn["path"];
    assert!(path["sent_packets"].as_u64().unwrap() > 0, "{path}");
    assert!(path["cwnd_bytes"].as_u64().unwrap() > 0, "{path}");
    assert!(path["mtu"].as_u64().unwrap() >= 1200, "{path}");
    assert!(path["lost_packets"].as_u64().is_some(), "{path}");
    assert!(path["congestion_events"].as_u64().is_some(), "{path}");

    // The agent's own admin listener.
    let agent_admin = a.agent.proc.wait_for_addr("admin listening");
    let (status, body) = get_text(&format!("http://{agent_admin}/readyz")).await;
    assert_eq!(status, 200, "{body}");
    let (_, metrics) = get_text(&format!("http://{agent_admin}/metrics")).await;
    for needle in [
        "tether_agent_tunnel_up{slot=\"0\"} 1",
        "tether_agent_tunnel_up{slot=\"1\"} 1",
        "tether_agent_upstream_request_duration_seconds_count{route=\"/\",class=\"2xx\"} 5",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_one_agent_of_a_cluster_fails_no_request() {
    let w = World::new();
    let mut a = w.site("node-a", "west", 2).await;
    let _b = w.site("node-b", "west", 2).await;

    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(4);
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (ok, failed) = (ok.clone(), failed.clone());
            let http = client();
            let url = w.relay.url("/slow?ms=20");
            tokio::spawn(async move {
                for _ in 0..1000 {
                    if Instant::now() > deadline {
                        break;
                    }
                    let good = match http.get(&url).header("x-cluster-id", "west").send().await {
                        Ok(r) => r.status() == 200 && r.text().await.is_ok_and(|b| b == "slow"),
                        Err(_) => false,
                    };
                    if good { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let code = tokio::task::spawn_blocking(move || {
        let code = a.agent.proc.terminate();
        (code, a)
    })
    .await
    .unwrap();
    assert_eq!(code.0, Some(0), "agent exits 0 after draining");
    for wk in workers {
        wk.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during the drain",
        ok + failed
    );
    assert!(ok > 50, "only {ok} requests ran");
    code.1
        .agent
        .proc
        .wait_for("drained", Duration::from_secs(1));
    assert_eq!(w.relay.connections_of("node-a").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_drain_finishes_requests_in_flight_and_exits_zero() {
    let mut w = World::new();
    let a = w.site("node-a", "west", 1).await;
    // Twenty requests in flight when SIGTERM arrives: every one must complete.
    let in_flight: Vec<_> = (0..20)
        .map(|i| {
            let http = client();
            let url = w.relay.url(&format!("/slow?ms=1500&i={i}"));
            tokio::spawn(async move {
                let r = http.get(url).header("x-node-id", "node-a").send().await?;
                let status = r.status();
                Ok::<_, reqwest::Error>((status, r.text().await?))
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let relay = std::mem::replace(
        &mut w.relay.proc,
        tether_e2e::Proc::spawn("noop", &mut Command::new("true")),
    );
    let (code, relay) = tokio::task::spawn_blocking(move || {
        let mut relay = relay;
        (relay.terminate(), relay)
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0));
    for r in in_flight {
        let (status, body) = r.await.unwrap().expect("in-flight request completes");
        assert_eq!((status.as_u16(), body.as_str()), (200, "slow"));
    }
    relay.wait_for("telling agents", Duration::from_secs(1));
    a.agent
        .proc
        .wait_for("relay is draining", Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_changes_routes_and_routing_without_dropping_tunnels() {
    let w = World::new();
    let a = w.site("node-a", "west", 1).await;
    let other = Sample::start("svc-other");
    let conn_id = |nodes: serde_json::Value| nodes["nodes"][0]["connections"][0]["id"].clone();
    let before = conn_id(w.relay.nodes().await);

    // Agent: point "/" at another service.
    let cfg = std::fs::read_to_string(&a.agent.config).unwrap();
    let new = cfg.replace(&a.sample.url(), &other.url());
    assert_ne!(cfg, new);
    std::fs::write(&a.agent.config, &new).unwrap();
    a.agent.proc.signal(libc::SIGHUP);
    a.agent
        .proc
        .wait_for("configuration reloaded", Duration::from_secs(10));
    let r = w.relay.get("x-node-id", "node-a", "/info").await;
    assert_eq!(r.headers()["x-service"], "svc-other");

    // A broken config is refused and the running one stays.
    std::fs::write(&a.agent.config, "relay = [this is not toml").unwrap();
    a.agent.proc.signal(libc::SIGHUP);
    a.agent
        .proc
        .wait_for("configuration reload refused", Duration::from_secs(10));
    let r = w.relay.get("x-node-id", "node-a", "/info").await;
    assert_eq!(r.headers()["x-service"], "svc-other");

    // Relay: rename the node header, picked up from the file change alone.
    let cfg = std::fs::read_to_string(&w.relay.config).unwrap();
    std::fs::write(
        &w.relay.config,
        cfg.replace("[ingress]\n", "[ingress]\nnode_header = \"x-target\"\n"),
    )
    .unwrap();
    w.relay
        .proc
        .wait_for("configuration reloaded", Duration::from_secs(10));
    let r = w.relay.get("x-target", "node-a", "/info").await;
    assert_eq!(r.status(), 200);
    std::fs::write(&w.relay.config, "[ingress]\nlisten = 12").unwrap();
    w.relay.proc.signal(libc::SIGHUP);
    w.relay
        .proc
        .wait_for("configuration reload refused", Duration::from_secs(10));
    let r = w.relay.get("x-target", "node-a", "/info").await;
    assert_eq!(r.status(), 200);

    assert_eq!(
        conn_id(w.relay.nodes().await),
        before,
        "the tunnel was never re-established"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_renders_in_headless_chromium() {
    let Some(chromium) = ["chromium", "chromium-browser"].into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }) else {
        eprintln!("SKIP: chromium not installed (apt-get install chromium)");
        return;
    };
    let w = World::new();
    let _a = w.site("node-a", "west", 1).await;
    let profile = tempfile::tempdir().unwrap();
    let url = w.relay.admin_url("/");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--virtual-time-budget=5000",
                "--dump-dom",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .output()
            .expect("running chromium")
    })
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("cluster west"),
        "page did not list the cluster:\n{dom}"
    );
    assert!(
        dom.contains(">node-a<"),
        "page did not list the node:\n{dom}"
    );
    assert!(
        dom.contains("tunnels <b>1</b>"),
        "summary not rendered:\n{dom}"
    );
}
