//! The relay's metrics, as one struct (iroh-relay's shape), exposed at `/metrics` in the
//! Prometheus text format.
//!
//! Label lookups take the metric family's lock, so the request path never does them:
//! each tunnel caches its node's and cluster's handles ([`TunnelMetrics`]) when it
//! registers, and a request only touches atomics (and one histogram's short lock).

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tether_proto::metrics::{duration_histogram, StatusClassDurations};
use tether_proto::{ErrorCode, Identity};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub node: String,
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum HandshakeResult {
    Accepted,
    Refused,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    pub result: HandshakeResult,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub cluster: String,
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub cluster: String,
    pub direction: String,
}

fn pick_histogram() -> Histogram {
    // 100 ns … ~3 ms
    Histogram::new(exponential_buckets(1e-7, 2.0, 15))
}

pub struct Metrics {
    registry: Registry,
    pub agents: Family<ClusterLabels, Gauge>,
    pub connections: Family<ClusterLabels, Gauge>,
    pub handshakes: Family<HandshakeLabels, Counter>,
    pub streams_open: Family<NodeLabels, Gauge>,
    pub streams_total: Family<NodeLabels, Counter>,
    pub request_duration: Family<RequestLabels, Histogram, fn() -> Histogram>,
    pub bytes: Family<DirectionLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub pick_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tether_relay");
        let m = Metrics {
            agents: Family::default(),
            connections: Family::default(),
            handshakes: Family::default(),
            streams_open: Family::default(),
            streams_total: Family::default(),
            request_duration: Family::new_with_constructor(duration_histogram),
            bytes: Family::default(),
            errors: Family::default(),
            pick_duration: pick_histogram(),
            registry: Registry::default(),
        };
        registry.register("agents", "Connected nodes by cluster", m.agents.clone());
        registry.register(
            "connections",
            "Live tunnel connections by cluster",
            m.connections.clone(),
        );
        registry.register(
            "handshakes",
            "Agent handshakes by result and reason",
            m.handshakes.clone(),
        );
        registry.register(
            "streams_open",
            "Request streams in flight by node",
            m.streams_open.clone(),
        );
        registry.register(
            "streams",
            "Request streams opened by node",
            m.streams_total.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to end of response body, by cluster and status class",
            m.request_duration.clone(),
        );
        registry.register(
            "body_bytes",
            "Body bytes by cluster and direction (in = from callers)",
            m.bytes.clone(),
        );
        registry.register(
            "errors",
            "Tether-generated errors by x-tether-error code",
            m.errors.clone(),
        );
        registry.register(
            "pick_duration_seconds",
            "Time to pick a tunnel",
            m.pick_duration.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        tether_proto::metrics::encode(&self.registry)
    }

    pub fn handshake(&self, result: HandshakeResult, reason: &str) {
        self.handshakes
            .get_or_create(&HandshakeLabels {
                result,
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn error(&self, code: ErrorCode) {
        self.errors
            .get_or_create(&ErrorLabels {
                code: code.as_str().to_owned(),
            })
            .inc();
    }

    pub fn observe_pick(&self, d: Duration) {
        self.pick_duration.observe(d.as_secs_f64());
    }

    /// The handles one tunnel's requests update.
    pub fn for_tunnel(&self, id: &Identity) -> TunnelMetrics {
        let node = NodeLabels {
            node: id.node.to_string(),
            cluster: id.cluster.to_string(),
        };
        let cluster = id.cluster.to_string();
        let class = |class: &str| {
            self.request_duration
                .get_or_create(&RequestLabels {
                    cluster: cluster.clone(),
                    class: class.to_owned(),
                })
                .clone()
        };
        let dir = |direction: &str| {
            self.bytes
                .get_or_create(&DirectionLabels {
                    cluster: cluster.clone(),
                    direction: direction.to_owned(),
                })
                .clone()
        };
        TunnelMetrics {
            streams_total: self.streams_total.get_or_create(&node).clone(),
            durations: StatusClassDurations::new(class),
            bytes_in: dir("in"),
            bytes_out: dir("out"),
        }
    }
}

/// One tunnel's cached metric handles (clones share the underlying atomics).
#[derive(Clone)]
pub struct TunnelMetrics {
    pub streams_total: Counter,
    pub durations: StatusClassDurations,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_proto::Id;

    #[test]
    fn exposition_names_what_operators_look_for() {
        let m = Metrics::default();
        let id = Identity::new(
            "tether.local",
            Id::new("west").unwrap(),
            Id::new("n1").unwrap(),
        )
        .unwrap();
        let t = m.for_tunnel(&id);
        t.streams_total.inc();
        t.durations.observe(200, Duration::from_millis(3));
        t.bytes_out.inc_by(10);
        m.connections
            .get_or_create(&ClusterLabels {
                cluster: "west".into(),
            })
            .inc();
        m.handshake(HandshakeResult::Refused, "bad-certificate");
        m.error(ErrorCode::NoTunnel);
        m.observe_pick(Duration::from_micros(2));
        let text = m.encode();
        for needle in [
            "tether_relay_connections{cluster=\"west\"} 1",
            "tether_relay_streams_total{node=\"n1\",cluster=\"west\"} 1",
            "tether_relay_request_duration_seconds_count{cluster=\"west\",class=\"2xx\"} 1",
            "tether_relay_handshakes_total{result=\"Refused\",reason=\"bad-certificate\"} 1",
            "tether_relay_errors_total{code=\"no-tunnel\"} 1",
            "tether_relay_body_bytes_total{cluster=\"west\",direction=\"out\"} 10",
            "tether_relay_pick_duration_seconds_count 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
