//! Bodies and trailers stream through the tunnel intact, over HTTP/1.1 and h2c.

use std::time::Duration;

use tether_e2e::{client, sha256_hex, Agent, Sample, World};

const TEN_MIB: usize = 10 * 1024 * 1024;

/// GETs `/bytes/{len}{query}` from `node`: the sample service's deterministic pattern,
/// every byte intact.
async fn assert_download(w: &World, node: &str, len: usize, query: &str) {
    let r = w
        .relay
        .get("x-node-id", node, &format!("/bytes/{len}{query}"))
        .await;
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.unwrap();
    assert_eq!(body.len(), len);
    let expected: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    assert_eq!(sha256_hex(&body), sha256_hex(&expected));
}

/// POSTs `body` to `/upload` on `node`: the service hashed every byte as it arrived.
async fn assert_upload(w: &World, node: &str, body: &[u8]) {
    let r = client()
        .post(w.relay.url("/upload"))
        .header("x-node-id", node)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["bytes"], body.len());
    assert_eq!(v["sha256"], sha256_hex(body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mib_up_and_down_keep_their_sha256() {
    let w = World::new();
    let _a = w.site("node-a", "west", 1).await;
    let http = client();

    // Download: the sample service's deterministic pattern.
    for chunked in ["", "?chunked=1"] {
        assert_download(&w, "node-a", TEN_MIB, chunked).await;
    }

    // Upload: random bytes, hashed by the service as they arrive.
    let upload: Vec<u8> = (0..TEN_MIB as u64)
        .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
        .collect();
    assert_upload(&w, "node-a", &upload).await;

    // Echo: streamed up and down at once.
    let r = http
        .post(w.relay.url("/echo"))
        .header("x-node-id", "node-a")
        .body(upload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(sha256_hex(&r.bytes().await.unwrap()), sha256_hex(&upload));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_callers_and_trailers_pass_through() {
    let w = World::new();
    let _a = w.site("node-a", "west", 1).await;

    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2
        .get(w.relay.url("/info"))
        .header("x-node-id", "node-a")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.headers()["x-service"], "svc-node-a");

    // Trailers need a raw look: HTTP/1.1 chunked with `te: trailers`.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(w.relay.ingress)
        .await
        .unwrap();
    tcp.write_all(
        b"GET /trailers HTTP/1.1\r\nhost: x\r\nx-node-id: node-a\r\nte: trailers\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tcp.read_to_end(&mut raw),
    )
    .await
    .expect("response within 10s")
    .unwrap();
    let raw = String::from_utf8_lossy(&raw).to_lowercase();
    assert!(raw.starts_with("http/1.1 200"), "{raw}");
    assert!(
        raw.contains("\r\n0\r\nx-trailer: done\r\n"),
        "trailer missing: {raw}"
    );
}

/// The loss-based controllers stay one setting away from the default BBR: a relay on
/// `cubic` and an agent on `newreno` still carry bodies both ways intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_congestion_controllers_carry_bodies_intact() {
    let w = World::with_tunnel("congestion = \"cubic\"");
    let sample = Sample::start("svc-node-c");
    let (cert, key) = w.pki.agent("node-c", "west");
    let identity = w.pki.identity((&cert, &key)) + "congestion = \"newreno\"\n";
    let _agent = Agent::start_with_identity(
        w.dir.path(),
        "node-c",
        &identity,
        w.relay.tunnel,
        1,
        &[("/", &sample.url())],
    );
    w.relay
        .wait_connections("node-c", 1, Duration::from_secs(15))
        .await;

    const ONE_MIB: usize = 1 << 20;
    assert_download(&w, "node-c", ONE_MIB, "").await;
    let upload: Vec<u8> = (0..ONE_MIB).map(|i| (i % 241) as u8).collect();
    assert_upload(&w, "node-c", &upload).await;
}
