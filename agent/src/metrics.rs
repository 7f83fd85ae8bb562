//! The agent's metrics, as one struct, exposed at `/metrics` (Prometheus text format).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tether_proto::metrics::{duration_histogram, StatusClassDurations};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SlotLabels {
    pub slot: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteErrorLabels {
    pub route: String,
    pub code: String,
}

pub struct Metrics {
    registry: Registry,
    /// 1 while a connection slot's tunnel is up.
    pub tunnel_up: Family<SlotLabels, Gauge>,
    pub reconnects: Family<SlotLabels, Counter>,
    pub upstream_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub upstream_errors: Family<RouteErrorLabels, Counter>,
    /// Unix time the current certificate expires.
    pub cert_expiry: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tether_agent");
        let m = Metrics {
            registry: Registry::default(),
            tunnel_up: Family::default(),
            reconnects: Family::default(),
            upstream_duration: Family::new_with_constructor(duration_histogram),
            upstream_errors: Family::default(),
            cert_expiry: Gauge::default(),
        };
        registry.register(
            "tunnel_up",
            "1 while the connection slot's tunnel is up",
            m.tunnel_up.clone(),
        );
        registry.register(
            "reconnects",
            "Reconnection attempts by slot",
            m.reconnects.clone(),
        );
        registry.register(
            "upstream_request_duration_seconds",
            "Local service request duration by route and status class",
            m.upstream_duration.clone(),
        );
        registry.register(
            "upstream_errors",
            "Requests the agent answered with an error, by route and code",
            m.upstream_errors.clone(),
        );
        registry.register(
            "certificate_expiry_unix_seconds",
            "When the agent certificate expires",
            m.cert_expiry.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        tether_proto::metrics::encode(&self.registry)
    }

    pub fn slot(slot: usize) -> SlotLabels {
        SlotLabels {
            slot: slot.to_string(),
        }
    }

    /// Handles for one route, cached in the route table so requests skip label lookups.
    pub fn for_route(&self, prefix: &str) -> RouteMetrics {
        let class = |class: &str| {
            self.upstream_duration
                .get_or_create(&RouteLabels {
                    route: prefix.to_owned(),
                    class: class.to_owned(),
                })
                .clone()
        };
        let code = |code: &str| {
            self.upstream_errors
                .get_or_create(&RouteErrorLabels {
                    route: prefix.to_owned(),
                    code: code.to_owned(),
                })
                .clone()
        };
        RouteMetrics {
            durations: StatusClassDurations::new(class),
            unreachable: code(tether_proto::ErrorCode::UpstreamUnreachable.as_str()),
        }
    }
}

/// One route's metric handles.
#[derive(Clone, Debug)]
pub struct RouteMetrics {
    pub durations: StatusClassDurations,
    pub unreachable: Counter,
}
