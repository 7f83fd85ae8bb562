//! The admin listener: liveness, readiness, Prometheus metrics, the registry as JSON, and
//! a small self-refreshing status page.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use tether_proto::admin::{json, response, AdminResponse, PROMETHEUS};
use tokio::net::TcpListener;

use crate::metrics::{ClusterLabels, Metrics, NodeLabels};
use crate::tunnel::TunnelRegistry;

/// What the admin API reads.
#[derive(Clone)]
pub struct Admin {
    pub registry: TunnelRegistry,
    pub metrics: Arc<Metrics>,
}

const STATUS_PAGE: &str = include_str!("status.html");

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Admin {
    /// Every node with its connections.
    pub fn nodes_json(&self) -> serde_json::Value {
        let nodes: Vec<_> = self
            .registry
            .nodes()
            .into_iter()
            .map(|node| {
                let conns: Vec<_> = node
                    .tunnels()
                    .iter()
                    .map(|t| {
                        // The QUIC path as the relay sees it: a lossy agent link shows
                        // here as lost packets and congestion events.
                        let path = t.handle.conn.stats().path;
                        json!({
                            "id": t.conn_id,
                            "remote": t.handle.remote.to_string(),
                            "connected_since_unix": unix_secs(t.handle.connected_at),
                            "rtt_ms": t.handle.conn.rtt().as_secs_f64() * 1e3,
                            "path": {
                                "cwnd_bytes": path.cwnd,
                                "mtu": path.current_mtu,
                                "sent_packets": path.sent_packets,
                                "lost_packets": path.lost_packets,
                                "congestion_events": path.congestion_events,
                            },
                            "open_streams": t.open_streams(),
                            "total_streams": t.total_streams(),
                            "draining": t.is_draining(),
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

    /// Every cluster with its nodes and totals.
    pub fn clusters_json(&self) -> serde_json::Value {
        let mut clusters: BTreeMap<String, (Vec<String>, usize, usize)> = BTreeMap::new();
        for node in self.registry.nodes() {
            let e = clusters.entry(node.cluster.to_string()).or_default();
            e.0.push(node.id.to_string());
            for t in node.tunnels().iter() {
                e.1 += 1;
                e.2 += t.open_streams();
            }
        }
        let list: Vec<_> = clusters
            .into_iter()
            .map(|(cluster, (nodes, connections, open_streams))| {
                json!({ "cluster": cluster, "nodes": nodes, "connections": connections, "open_streams": open_streams })
            })
            .collect();
        json!({ "clusters": list })
    }

    /// Sets the gauges that mirror the registry, then encodes every metric.
    fn metrics_text(&self) -> String {
        let m = &self.metrics;
        m.agents.clear();
        m.connections.clear();
        m.streams_open.clear();
        for node in self.registry.nodes() {
            let cluster = ClusterLabels {
                cluster: node.cluster.to_string(),
            };
            m.agents.get_or_create(&cluster).inc();
            let tunnels = node.tunnels();
            m.connections
                .get_or_create(&cluster)
                .inc_by(tunnels.len() as i64);
            let open: usize = tunnels.iter().map(|t| t.open_streams()).sum();
            m.streams_open
                .get_or_create(&NodeLabels {
                    node: node.id.to_string(),
                    cluster: node.cluster.to_string(),
                })
                .set(open as i64);
        }
        m.encode()
    }

    async fn handle(&self, req: Request<Incoming>) -> AdminResponse {
        if req.method() != Method::GET {
            return json(StatusCode::METHOD_NOT_ALLOWED, json!({"error": "GET only"}));
        }
        match req.uri().path() {
            "/" => response(StatusCode::OK, "text/html; charset=utf-8", STATUS_PAGE),
            // Both listeners are bound before the admin listener starts.
            "/healthz" | "/readyz" => json(StatusCode::OK, json!({"status": "ok"})),
            "/metrics" => response(StatusCode::OK, PROMETHEUS, self.metrics_text()),
            "/api/nodes" => json(StatusCode::OK, self.nodes_json()),
            "/api/clusters" => json(StatusCode::OK, self.clusters_json()),
            _ => json(StatusCode::NOT_FOUND, json!({"error": "not found"})),
        }
    }
}

/// Serves the admin API until the task is dropped.
pub async fn serve(listener: TcpListener, admin: Admin) {
    tether_proto::admin::serve(listener, move |req| {
        let admin = admin.clone();
        async move { admin.handle(req).await }
    })
    .await
}
