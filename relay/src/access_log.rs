//! The relay's one log line per request, at info.
//!
//! Handed to the log writer's thread as its fields, and made into text there in a batch
//! ([`tether_proto::log_direct::defer`]): through `tracing` this line was 7 % of the
//! relay's instructions on a small request, and written directly on the request path
//! still 4 %. The `tracing` event below stays as the path for every other case (a span
//! current at debug level, output not installed), and a test holds both paths to the
//! same bytes.

use std::time::Instant;

use tether_proto::identity::Id;
use tether_proto::log_direct::{self, DeferredFields, Line};
use tracing::{info, Level};

/// The line's target and message, as the `tracing` event below has them.
const TARGET: &str = module_path!();
const MESSAGE: &str = "request";

/// One request's line, owning what it says, for the log writer to make later: the one
/// place that knows the fields' names and order, for both paths.
#[derive(Debug)]
pub struct AccessRecord {
    pub node: Id,
    pub cluster: Id,
    pub conn: u64,
    pub stream: Option<u64>,
    pub method: http::Method,
    pub path: String,
    pub status: u16,
    /// Whole microseconds over 1,000, so the line reads 0.412, not 0.41200000000000003.
    pub duration_ms: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub complete: bool,
    pub error: Option<&'static str>,
    /// When the request ended: the line's timestamp.
    pub at: Instant,
}

impl AccessRecord {
    /// Logs the line, if info is enabled for this module.
    pub fn log(self) {
        if !tracing::enabled!(Level::INFO) {
            return;
        }
        if let Err(record) = log_direct::defer(Level::INFO, TARGET, MESSAGE, self) {
            record.event();
        }
    }

    /// The same line as a `tracing` event. Fields spelled out rather than inherited from
    /// the request's span: that span is debug-level, so the line costs one event, not a
    /// span too.
    fn event(&self) {
        info!(
            node = self.node.as_str(),
            cluster = self.cluster.as_str(),
            conn = self.conn,
            stream = self.stream,
            method = self.method.as_str(),
            path = self.path,
            status = self.status,
            duration_ms = self.duration_ms,
            bytes_in = self.bytes_in,
            bytes_out = self.bytes_out,
            complete = self.complete,
            error = self.error,
            "request"
        );
    }
}

impl DeferredFields for AccessRecord {
    fn at(&self) -> Instant {
        self.at
    }

    /// The fields, in the order [`AccessRecord::event`] records them.
    fn fields(&self, l: &mut Line) {
        l.str("node", self.node.as_str())
            .str("cluster", self.cluster.as_str())
            .u64("conn", self.conn);
        if let Some(stream) = self.stream {
            l.u64("stream", stream);
        }
        l.str("method", self.method.as_str())
            .str("path", &self.path)
            .u64("status", self.status.into())
            .f64("duration_ms", self.duration_ms)
            .u64("bytes_in", self.bytes_in)
            .u64("bytes_out", self.bytes_out)
            .bool("complete", self.complete);
        if let Some(error) = self.error {
            l.str("error", error);
        }
    }
}

#[cfg(test)]
mod tests {
    use tether_proto::log_capture::Capture;
    use tether_proto::logging::{subscriber, LogFormat};

    use super::*;

    /// A line with its timestamp cut out (two lines never share one).
    fn untimed(line: &str) -> String {
        let ts = "2026-11-27T06:59:12.123456Z".len();
        match line.strip_prefix("{\"timestamp\":\"") {
            Some(rest) => format!("{{\"timestamp\":\"{}", &rest[ts..]),
            None => line[ts..].to_owned(),
        }
    }

    /// The record's line through `tracing` and as the log writer makes it.
    fn both_ways(r: &AccessRecord, format: LogFormat) -> (String, String) {
        let out = Capture::default();
        let info = tracing_subscriber::EnvFilter::new("info");
        tracing::dispatcher::with_default(&subscriber(format, info, out.clone()), || r.event());
        let theirs = out.text();
        let mut line = Line::new(format, Level::INFO, TARGET, MESSAGE);
        r.fields(&mut line);
        (untimed(&line.into_text()), untimed(&theirs))
    }

    fn id(s: &str) -> Id {
        Id::new(s).unwrap()
    }

    #[test]
    fn the_deferred_line_is_the_tracing_line() {
        let ok = AccessRecord {
            node: id("edge-1"),
            cluster: id("plant-a"),
            conn: 3,
            stream: Some(412),
            method: http::Method::GET,
            path: "/api/v1/items".into(),
            status: 200,
            duration_ms: 0.412,
            bytes_in: 0,
            bytes_out: 1024,
            complete: true,
            error: None,
            at: Instant::now(),
        };
        let failed = AccessRecord {
            node: id("edge-1"),
            cluster: id("plant-a"),
            stream: None,
            method: http::Method::from_bytes(b"PURGE").unwrap(),
            path: "/a path/with \"quotes\"".into(),
            status: 502,
            duration_ms: 30_000.0,
            complete: false,
            error: Some("unreachable"),
            ..ok
        };
        for format in [LogFormat::Pretty, LogFormat::Json] {
            for a in [&ok, &failed] {
                let (ours, theirs) = both_ways(a, format);
                assert_eq!(ours, theirs, "{format:?}");
            }
        }
        let (pretty, _) = both_ways(&ok, LogFormat::Pretty);
        assert_eq!(
            pretty,
            "  INFO tether_relay::access_log: request node=edge-1 cluster=plant-a conn=3 \
             stream=412 method=GET path=/api/v1/items status=200 duration_ms=0.412 \
             bytes_in=0 bytes_out=1024 complete=true\n"
        );
    }
}
