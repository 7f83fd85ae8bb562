//! Metric pieces both binaries use: request durations split by status class, and the
//! Prometheus text encoding.

use std::time::Duration;

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Status classes, in the order [`StatusClassDurations`] keeps them.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Buckets from 100 µs to about 100 s.
pub fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// One histogram per status class, looked up once (label lookups lock the family) and
/// then observed from the request path without any lookup.
#[derive(Clone, Debug)]
pub struct StatusClassDurations([Histogram; 5]);

impl StatusClassDurations {
    /// `histogram(class)` returns the family member for that class label.
    pub fn new(histogram: impl FnMut(&'static str) -> Histogram) -> Self {
        StatusClassDurations(STATUS_CLASSES.map(histogram))
    }

    pub fn observe(&self, status: u16, d: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.0[class].observe(d.as_secs_f64());
    }
}

/// The Prometheus text exposition of `registry`.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}
