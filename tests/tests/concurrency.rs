//! Many concurrent requests share one QUIC connection as streams.

use futures_util::future::join_all;
use tether_e2e::{client, World};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_requests_over_one_connection() {
    let w = World::new();
    let _a = w.site("node-a", "west", 1).await;
    let http = client();

    let requests = (0..200).map(|i| {
        let http = http.clone();
        let url = w.relay.url(&format!("/slow?ms=200&i={i}"));
        async move {
            let r = http.get(url).header("x-node-id", "node-a").send().await?;
            let status = r.status();
            let body = r.text().await?;
            Ok::<_, reqwest::Error>((status, body))
        }
    });
    let results = join_all(requests).await;
    for r in &results {
        let (status, body) = r.as_ref().expect("request failed");
        assert_eq!(*status, 200);
        assert_eq!(body, "slow");
    }

    // The relay's view: still exactly one tunnel connection, which carried them all.
    let nodes = w.relay.nodes().await;
    let conns = nodes["nodes"][0]["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 1, "{nodes}");
    assert!(
        conns[0]["total_streams"].as_u64().unwrap() >= 200,
        "{nodes}"
    );
    assert_eq!(
        conns[0]["open_streams"], 0,
        "every stream released: {nodes}"
    );
}
