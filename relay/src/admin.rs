//! The admin listener: liveness, readiness and the registry as JSON.

use std::convert::Infallible;
use std::time::SystemTime;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tracing::debug;

use crate::tunnel::TunnelRegistry;

fn json_response(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(v.to_string())))
        .expect("static response parts are valid")
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Every node with its connections.
pub fn nodes_json(registry: &TunnelRegistry) -> serde_json::Value {
    let nodes: Vec<_> = registry
        .nodes()
        .into_iter()
        .map(|node| {
            let conns: Vec<_> = node
                .tunnels()
                .iter()
                .map(|t| {
                    json!({
                        "id": t.conn_id,
                        "remote": t.handle.remote.to_string(),
                        "connected_since_unix": unix_secs(t.handle.connected_at),
                        "rtt_ms": t.handle.conn.rtt().as_secs_f64() * 1e3,
                        "open_streams": t.open_streams(),
                        "total_streams": t.total_streams(),
                        "cert_serial": t.handle.cert_serial,
                        "cert_not_after": t.handle.cert_not_after,
                    })
                })
                .collect();
            json!({ "node": node.id, "cluster": node.cluster, "connections": conns })
        })
        .collect();
    json!({ "nodes": nodes })
}

async fn handle(registry: TunnelRegistry, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return json_response(StatusCode::METHOD_NOT_ALLOWED, json!({"error": "GET only"}));
    }
    match req.uri().path() {
        "/healthz" | "/readyz" => json_response(StatusCode::OK, json!({"status": "ok"})),
        "/api/nodes" => json_response(StatusCode::OK, nodes_json(&registry)),
        _ => json_response(StatusCode::NOT_FOUND, json!({"error": "not found"})),
    }
}

/// Serves the admin API until the task is dropped.
pub async fn serve(listener: TcpListener, registry: TunnelRegistry) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(handle(registry, req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await
            {
                debug!(error = %e, "admin connection failed");
            }
        });
    }
}
