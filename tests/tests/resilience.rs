//! Failure handling: agents dying mid-response, relays restarting, slow and unreachable
//! upstreams. Every wait is bounded; nothing here may hang.

use std::time::{Duration, Instant};

use tether_e2e::{client, Agent, World};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_mid_response_cuts_that_body_and_others_keep_working() {
    let w = World::new();
    let mut a = w.site("node-a", "west", 1).await;
    let _b = w.site("node-b", "west", 1).await;

    let mut r = w
        .relay
        .get(
            "x-node-id",
            "node-a",
            "/stream?chunks=200&interval_ms=50&size=1024",
        )
        .await;
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.unwrap().expect("first chunk");
    assert!(!first.is_empty());

    a.agent.proc.kill(); // SIGKILL: no goodbye on the wire

    // The body must end (error or short) well before the full 10 s stream would have,
    // bounded by the tunnel's idle timeout.
    let started = Instant::now();
    let mut got = first.len();
    let outcome = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match r.chunk().await {
                Ok(Some(c)) => got += c.len(),
                Ok(None) => return "ended",
                Err(_) => return "error",
            }
        }
    })
    .await
    .expect("the caller must never hang");
    assert!(got < 200 * 1024, "body was cut ({outcome}, {got} bytes)");
    assert!(started.elapsed() < Duration::from_secs(15));

    // Other agents are unaffected, and new requests for the dead node fail fast.
    let r = w.relay.get("x-node-id", "node-b", "/info").await;
    assert_eq!(r.status(), 200);
    let r = w.relay.get("x-node-id", "node-a", "/info").await;
    assert!(r.status() == 502 || r.status() == 503, "{}", r.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reconnects_after_relay_restart() {
    let mut w = World::new();
    let _a = w.site("node-a", "west", 2).await;
    let r = w.relay.get("x-node-id", "node-a", "/info").await;
    assert_eq!(r.status(), 200);

    assert_eq!(
        w.relay.proc.terminate(),
        Some(0),
        "relay exits cleanly on SIGTERM"
    );
    let relay = w.relay.restart_on_same_ports();
    w.relay = relay;
    let restarted = Instant::now();

    let deadline = restarted + Duration::from_secs(5);
    loop {
        let r = w.relay.get("x-node-id", "node-a", "/info").await;
        if r.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no tunnel within 5s of the relay restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_recovers_from_a_relay_crash() {
    let mut w = World::new();
    let _a = w.site("node-a", "west", 1).await;
    w.relay.proc.kill(); // no CONNECTION_CLOSE: the agent learns from a stateless reset
    let relay = w.relay.restart_on_same_ports();
    w.relay = relay;
    w.relay
        .wait_connections("node-a", 1, Duration::from_secs(8))
        .await;
    let r = w.relay.get("x-node-id", "node-a", "/info").await;
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_unreachable_upstreams_get_their_own_errors() {
    let w = World::with_ingress("request_timeout = \"1s\"");
    let _a = w.site("node-a", "west", 1).await;

    let started = Instant::now();
    let r = w.relay.get("x-node-id", "node-a", "/slow?ms=5000").await;
    assert_eq!(r.status(), 504);
    assert_eq!(r.headers()["x-tether-error"], "timeout");
    assert!(started.elapsed() < Duration::from_secs(4));

    // Route to a port where nothing listens.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (cert, key) = w.pki.agent("node-dead", "west");
    let _agent = Agent::start(
        &w.pki,
        w.dir.path(),
        "node-dead",
        (&cert, &key),
        w.relay.tunnel,
        1,
        &[("/", &format!("http://{closed}"))],
    );
    w.relay
        .wait_connections("node-dead", 1, Duration::from_secs(15))
        .await;
    let r = w.relay.get("x-node-id", "node-dead", "/x").await;
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-tether-error"], "upstream-unreachable");
    let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains(&closed.to_string()) && detail.contains("tcp connect error: "),
        "{body}"
    );

    // The tunnel itself is fine afterwards.
    let r = w.relay.get("x-node-id", "node-a", "/info").await;
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_the_relay_gives_up_on_never_reaches_the_service_as_complete() {
    let w = World::with_ingress("request_timeout = \"1s\"");
    let a = w.site("node-a", "west", 1).await;
    // One chunk, then silence for longer than the request timeout.
    let chunks = futures_util::stream::unfold(0u8, |i| async move {
        match i {
            0 => Some((Ok::<_, std::io::Error>(vec![1u8; 1024]), 1)),
            1 => {
                tokio::time::sleep(Duration::from_secs(4)).await;
                Some((Ok(vec![2u8; 1024]), 2))
            }
            _ => None,
        }
    });
    let r = client()
        .post(w.relay.url("/upload"))
        .header("x-node-id", "node-a")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    // The relay reset the request stream: the agent's upload to the service fails
    // instead of ending cleanly with 1 KiB of a longer body.
    a.agent
        .proc
        .wait_for("upstream failed", Duration::from_secs(5));
}
