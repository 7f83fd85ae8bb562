//! One tunnel connection carries more requests over its life than the number of streams
//! the agent lets the relay open at once: as requests finish, the agent gives the relay
//! new stream credit (QUIC MAX_STREAMS), and nothing waits for a new connection.

use futures_util::stream::{self, StreamExt};
use tether_e2e::{client, World};
use tether_proto::wire::MAX_CONCURRENT_REQUESTS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_requests_than_the_stream_limit_over_one_connection() {
    let w = World::new();
    let _a = w.site("node-a", "west", 1).await;
    let http = client();
    let total = MAX_CONCURRENT_REQUESTS as usize + 904;
    let url = w.relay.url("/fixed");

    // Bounded: `total` requests, 16 at a time, each with the client's own timeout.
    let failures: Vec<String> = stream::iter(0..total)
        .map(|i| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let r = http
                    .get(&url)
                    .header("x-node-id", "node-a")
                    .send()
                    .await
                    .map_err(|e| format!("request {i}: {e}"))?;
                let status = r.status();
                let body = r.bytes().await.map_err(|e| format!("request {i}: {e}"))?;
                if status != 200 || body.len() != 1024 {
                    return Err(format!("request {i}: {status}, {} bytes", body.len()));
                }
                Ok(())
            }
        })
        .buffer_unordered(16)
        .filter_map(|r| async move { r.err() })
        .collect()
        .await;
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    let nodes = w.relay.nodes().await;
    let conns = nodes["nodes"][0]["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 1, "still the one connection: {nodes}");
    assert!(
        conns[0]["total_streams"].as_u64().unwrap() >= total as u64,
        "{nodes}"
    );
    assert_eq!(
        conns[0]["open_streams"], 0,
        "every stream released: {nodes}"
    );
}
