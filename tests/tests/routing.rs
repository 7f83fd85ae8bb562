//! Routing: node header, cluster balancing, agent path routes, routing errors.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tether_e2e::{client, Agent, Sample, World};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_header_reaches_that_node_and_cluster_spreads_over_both() {
    let w = World::new();
    let a = w.site("node-a", "west", 1).await;
    let _b = w.site("node-b", "west", 1).await;
    let http = client();

    for _ in 0..10 {
        let r = w.relay.get("x-node-id", "node-a", "/info").await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-service"], "svc-node-a");
    }
    // The node header wins over the cluster header.
    let r = http
        .get(w.relay.url("/info"))
        .header("x-node-id", "node-a")
        .header("x-cluster-id", "nowhere")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-service"], "svc-node-a");

    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..100 {
        let r = w.relay.get("x-cluster-id", "west", "/info").await;
        assert_eq!(r.status(), 200);
        let svc = r.headers()["x-service"].to_str().unwrap().to_owned();
        *seen.entry(svc).or_default() += 1;
    }
    assert_eq!(seen.values().sum::<usize>(), 100);
    assert!(
        seen.get("svc-node-a").copied().unwrap_or(0) >= 10,
        "{seen:?}"
    );
    assert!(
        seen.get("svc-node-b").copied().unwrap_or(0) >= 10,
        "{seen:?}"
    );

    // The service sees who called, through which proxy hop, with the caller's Host.
    let r = w.relay.get("x-node-id", "node-a", "/info?q=1").await;
    let info: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(info["path"], "/info?q=1");
    assert_eq!(info["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(info["headers"]["x-forwarded-proto"], "http");
    assert_eq!(info["headers"]["host"], w.relay.ingress.to_string());
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_path_routes_pick_the_service_and_unmatched_paths_reach_nothing() {
    let w = World::new();
    let downstream = Sample::start("downstream");
    let api = Sample::start("api");
    let (cert, key) = w.pki.agent("node-r", "west");
    let _agent = Agent::start(
        &w.pki,
        w.dir.path(),
        "node-r",
        (&cert, &key),
        w.relay.tunnel,
        1,
        &[
            ("/api/", &api.url()),
            ("/downstream_service/", &downstream.url()),
        ],
    );
    w.relay
        .wait_connections("node-r", 1, Duration::from_secs(15))
        .await;
    let http = client();
    let get = |path: &str| {
        http.get(w.relay.url(path))
            .header("x-node-id", "node-r")
            .send()
    };

    let r = get("/downstream_service/api/status").await.unwrap();
    assert_eq!(r.headers()["x-service"], "downstream");
    let info: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(
        info["path"], "/downstream_service/api/status",
        "path passed on unchanged"
    );

    let r = get("/api/info").await.unwrap();
    assert_eq!(r.headers()["x-service"], "api");

    let r = get("/admin/secret").await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-tether-error"], "no-route");
    assert!(
        r.headers().get("x-service").is_none(),
        "nothing behind the agent was reached"
    );
    let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "no-route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_errors_are_immediate_and_explained() {
    let w = World::new();
    let http = client();

    let started = Instant::now();
    let r = w.relay.get("x-node-id", "ghost", "/").await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "no-tunnel must answer at once"
    );
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-tether-error"], "no-tunnel");
    let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "no-tunnel");
    assert!(body["detail"].as_str().unwrap().contains("ghost"));

    let r = w.relay.get("x-cluster-id", "ghosts", "/").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-tether-error"], "no-tunnel");

    let r = http.get(w.relay.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["x-tether-error"], "no-route-header");

    for bad in ["Node-A", "a_b", "x".repeat(64).as_str(), "a/b"] {
        let r = w.relay.get("x-node-id", bad, "/").await;
        assert_eq!(r.status(), 400, "{bad}");
        assert_eq!(r.headers()["x-tether-error"], "bad-id", "{bad}");
    }
    let r = w.relay.get("x-cluster-id", "", "/").await;
    assert_eq!(r.headers()["x-tether-error"], "bad-id");
}
