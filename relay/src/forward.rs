//! Carrying one caller request down a tunnel as an HTTP/3 request stream, and its
//! response back. Bodies and trailers stream both ways; nothing is buffered whole.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use http_body::Body as _;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tether_proto::h3body::{pump, BodyObserver, TunnelBody};
use tether_proto::headers::{strip_hop_by_hop, X_FORWARDED_FOR, X_FORWARDED_PROTO};
use tether_proto::ErrorCode;
use tracing::{debug, Instrument, Span};

use crate::access_log::AccessRecord;
use crate::metrics::Metrics;
use crate::registry::Lease;
use crate::tunnel::Link;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every response the ingress sends.
pub type RespBody = UnsyncBoxBody<Bytes, BoxError>;

/// A Tether-generated error response (JSON body, `x-tether-error`).
pub fn error_response(code: ErrorCode, detail: &str) -> Response<RespBody> {
    let r: Response<String> = code.response(detail);
    r.map(|s| {
        Full::new(Bytes::from(s))
            .map_err(|never| match never {})
            .boxed_unsync()
    })
}

/// Created when a request gets its tunnel and dropped when it is over (after the last
/// response byte, or with the error response): holds the stream's lease, so the stream
/// counts as outstanding exactly that long, and writes the request's one log line and
/// its metrics.
struct Completion {
    lease: Lease<Link>,
    method: http::Method,
    path: String,
    stream: Option<u64>,
    started: Instant,
    status: u16,
    error: Option<ErrorCode>,
    /// Request body bytes sent down the tunnel, stored by the upload task when it ends.
    /// None for a request without a body (most GETs): nothing to count, and no
    /// allocation for it.
    bytes_in: Option<Arc<AtomicU64>>,
    bytes_out: u64,
    complete: bool,
    /// Body bytes the response head announced (0 for HEAD, 204 and 304). hyper stops
    /// reading a body once it has written that many, so reaching it means complete.
    expected: Option<u64>,
    metrics: Arc<Metrics>,
}

impl Completion {
    /// Ends the request with a Tether error response.
    fn fail(mut self, code: ErrorCode, detail: &str) -> Response<RespBody> {
        self.status = code.status().as_u16();
        self.error = Some(code);
        error_response(code, detail)
    }
}

impl BodyObserver for Completion {
    fn finished(&mut self, bytes: u64, complete: bool) {
        self.bytes_out = bytes;
        self.complete = complete || self.expected == Some(bytes);
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.started);
        let m = &self.lease.tunnel().handle.metrics;
        let bytes_in = self
            .bytes_in
            .as_ref()
            .map_or(0, |b| b.load(Ordering::Relaxed));
        m.durations.observe(self.status, elapsed);
        m.bytes_in.inc_by(bytes_in);
        m.bytes_out.inc_by(self.bytes_out);
        if let Some(code) = self.error {
            self.metrics.error(code);
        }
        let t = self.lease.tunnel();
        AccessRecord {
            node: t.identity.node.clone(),
            cluster: t.identity.cluster.clone(),
            conn: t.conn_id,
            stream: self.stream,
            method: std::mem::take(&mut self.method),
            path: std::mem::take(&mut self.path),
            status: self.status,
            duration_ms: elapsed.as_micros() as f64 / 1e3,
            bytes_in,
            bytes_out: self.bytes_out,
            complete: self.complete,
            error: self.error.map(ErrorCode::as_str),
            at: now,
        }
        .log();
    }
}

/// Who sent a request: one per ingress connection, so the `x-forwarded-for` value is
/// built once per connection rather than once per request.
#[derive(Debug)]
pub struct Caller {
    pub addr: SocketAddr,
    /// `addr`'s IP as a header value.
    pub ip: HeaderValue,
}

impl Caller {
    pub fn new(addr: SocketAddr) -> Self {
        let ip = HeaderValue::try_from(addr.ip().to_string())
            .expect("an IP address is a valid header value");
        Caller { addr, ip }
    }
}

/// Rewrites the caller's request head for the tunnel: hop-by-hop headers out,
/// `x-forwarded-*` in, and an absolute URI (HTTP/3 needs `:authority`).
fn tunnel_head(parts: &mut http::request::Parts, caller: &Caller, fallback_host: &str) {
    strip_hop_by_hop(&mut parts.headers);
    // Host goes into the URI's authority. Taken out first, and room made for both
    // `x-forwarded-*` at once: hyper sizes the parsed map to the caller's headers, and
    // growing it once per insert rebuilt its index twice per request.
    let host = parts.headers.remove(HOST);
    parts.headers.reserve(2);
    let xff = match parts.headers.get(&X_FORWARDED_FOR) {
        Some(prev) => {
            let mut v = Vec::with_capacity(prev.len() + 2 + caller.ip.len());
            v.extend_from_slice(prev.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(caller.ip.as_bytes());
            HeaderValue::from_bytes(&v).ok()
        }
        None => Some(caller.ip.clone()),
    };
    if let Some(v) = xff {
        parts.headers.insert(X_FORWARDED_FOR, v);
    }
    parts
        .headers
        .insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));

    let authority = parts
        .uri
        .authority()
        .cloned()
        .or_else(|| Authority::try_from(host?.as_bytes()).ok())
        .or_else(|| Authority::try_from(fallback_host).ok());
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = authority;
    // The path is reused as parsed, not re-parsed from text.
    uri.path_and_query = Some(
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    parts.uri = Uri::from_parts(uri).unwrap_or_else(|_| Uri::from_static("http://tether/"));
    parts.version = Version::HTTP_3;
}

/// Sends `req` down the leased tunnel and returns the response to hand to the caller.
pub async fn forward(
    lease: Lease<Link>,
    caller: &Caller,
    req: Request<Incoming>,
    timeout: Duration,
    started: Instant,
    metrics: Arc<Metrics>,
) -> Response<RespBody> {
    let tunnel = lease.tunnel().clone();
    tunnel.handle.metrics.streams_total.inc();
    let mut done = Completion {
        lease,
        method: req.method().clone(),
        path: req.uri().path().to_owned(),
        stream: None,
        started,
        status: 0,
        error: None,
        bytes_in: None,
        bytes_out: 0,
        complete: false,
        expected: None,
        metrics,
    };
    let node = &tunnel.identity.node;
    let (mut parts, body) = req.into_parts();
    let caller_version = parts.version;
    tunnel_head(&mut parts, caller, node.as_str());

    let mut sender = tunnel.handle.sender.clone();
    let stream = match sender.send_request(Request::from_parts(parts, ())).await {
        Ok(s) => s,
        Err(e) => {
            return done.fail(
                ErrorCode::TunnelLost,
                &format!("could not open a stream to node {node}: {e}"),
            )
        }
    };
    let stream_id = stream.id().into_inner();
    Span::current().record("stream", stream_id);
    done.stream = Some(stream_id);
    let (mut send, mut recv) = stream.split();

    // A body-less request (most GETs) finishes inline; others stream from a task so
    // that the response can start before the upload ends.
    // The upload is cancelled (its stream reset) if `upload_ctl` is dropped before the
    // response head arrives, and left to finish once it is sent `()`. Merely dropping
    // the sending half would *finish* the stream, and the agent would take a truncated
    // body for a complete one.
    let upload_ctl = if body.is_end_stream() {
        if let Err(e) = send.finish().await {
            debug!(error = %e, "finishing request stream failed");
        }
        None
    } else {
        let (upload_ctl, upload_verdict) = tokio::sync::oneshot::channel::<()>();
        let bytes_in = done.bytes_in.insert(Arc::default()).clone();
        tokio::spawn(
            async move {
                let result = {
                    let upload = pump(body, &mut send);
                    tokio::pin!(upload);
                    tokio::select! {
                        r = &mut upload => Some(r),
                        verdict = upload_verdict => match verdict {
                            Ok(()) => Some(upload.await),
                            Err(_) => None,
                        },
                    }
                };
                match result {
                    Some(Ok(n)) => bytes_in.store(n, Ordering::Relaxed),
                    Some(Err(e)) => debug!(error = %e, "request body not fully sent"),
                    None => send.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED),
                }
            }
            .in_current_span(),
        );
        Some(upload_ctl)
    };

    // Counted from the request's arrival, which `started` already holds (no clock read).
    let deadline = tokio::time::Instant::from_std(started) + timeout;
    let head = match tokio::time::timeout_at(deadline, recv.recv_response()).await {
        Ok(Ok(head)) => head,
        Ok(Err(e)) => {
            drop(upload_ctl);
            return done.fail(
                ErrorCode::TunnelLost,
                &format!("tunnel to node {node} failed before the response: {e}"),
            );
        }
        Err(_) => {
            // Reset the stream both ways so the agent stops working on it. (Dropping
            // `recv` sends STOP_SENDING; upstream h3-quinn 0.0.10 panicked on an explicit
            // `stop_sending` during a read, which the vendored one no longer does.)
            drop(upload_ctl);
            return done.fail(
                ErrorCode::Timeout,
                &format!("no response head from node {node} within {timeout:?}"),
            );
        }
    };
    let (mut head, ()) = head.into_parts();
    strip_hop_by_hop(&mut head.headers);
    done.expected = expected_body_len(&done.method, &head);
    // hyper answers in the caller's protocol and insists the head says so.
    head.version = caller_version;
    done.status = head.status.as_u16();
    // Errors the agent generated (no-route, upstream-unreachable) count like ours.
    done.error = head
        .headers
        .get(tether_proto::error_code::ERROR_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(ErrorCode::from_code);
    done.complete = true;
    // The upload goes on while the response streams (an echo, say).
    if let Some(ctl) = upload_ctl {
        let _ = ctl.send(());
    }
    let body = TunnelBody::new(recv, done)
        .map_err(BoxError::from)
        .boxed_unsync();
    Response::from_parts(head, body)
}

/// The response body length the caller will get, when the head fixes it.
fn expected_body_len(method: &http::Method, head: &http::response::Parts) -> Option<u64> {
    use http::StatusCode;
    if method == http::Method::HEAD
        || head.status == StatusCode::NO_CONTENT
        || head.status == StatusCode::NOT_MODIFIED
    {
        return Some(0);
    }
    head.headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_length_comes_from_the_head() {
        let head = |status: u16, len: Option<&str>| {
            let mut b = Response::builder().status(status);
            if let Some(l) = len {
                b = b.header("content-length", l);
            }
            b.body(()).unwrap().into_parts().0
        };
        let get = http::Method::GET;
        assert_eq!(
            expected_body_len(&get, &head(200, Some("1024"))),
            Some(1024)
        );
        assert_eq!(expected_body_len(&get, &head(200, None)), None);
        assert_eq!(expected_body_len(&get, &head(200, Some("x"))), None);
        assert_eq!(expected_body_len(&get, &head(204, None)), Some(0));
        assert_eq!(expected_body_len(&get, &head(304, Some("99"))), Some(0));
        assert_eq!(
            expected_body_len(&http::Method::HEAD, &head(200, Some("1024"))),
            Some(0)
        );
    }

    #[test]
    fn head_gets_forwarding_headers_and_an_authority() {
        let req = Request::builder()
            .uri("/a/b?c=1")
            .header("host", "svc.example:8080")
            .header("connection", "keep-alive")
            .header("x-forwarded-for", "10.0.0.1")
            .body(())
            .unwrap();
        let (mut parts, ()) = req.into_parts();
        tunnel_head(
            &mut parts,
            &Caller::new("127.0.0.1:5555".parse().unwrap()),
            "node-a",
        );
        assert_eq!(parts.uri, "http://svc.example:8080/a/b?c=1");
        assert!(!parts.headers.contains_key("host"));
        assert!(!parts.headers.contains_key("connection"));
        assert_eq!(parts.headers["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(parts.headers["x-forwarded-proto"], "http");
    }

    #[test]
    fn missing_host_falls_back_to_the_node() {
        let (mut parts, ()) = Request::builder().uri("/").body(()).unwrap().into_parts();
        tunnel_head(
            &mut parts,
            &Caller::new("127.0.0.1:1".parse().unwrap()),
            "node-a",
        );
        assert_eq!(parts.uri, "http://node-a/");
    }
}
