//! Carrying one caller request down a tunnel as an HTTP/3 request stream, and its
//! response back. Bodies and trailers stream both ways; nothing is buffered whole.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::{Request, Response, Uri, Version};
use http_body::Body as _;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tether_proto::h3body::{pump, TunnelBody};
use tether_proto::headers::{strip_hop_by_hop, X_FORWARDED_FOR, X_FORWARDED_PROTO};
use tether_proto::ErrorCode;
use tracing::{debug, info, Instrument, Span};

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

/// Lives as long as the response body: holds the stream's lease (so it counts as
/// outstanding until the last byte) and writes the one log line per request.
struct Completion {
    _lease: Lease<Link>,
    span: Span,
    status: u16,
    started: Instant,
}

impl Drop for Completion {
    fn drop(&mut self) {
        let ms = self.started.elapsed().as_secs_f64() * 1e3;
        info!(parent: &self.span, status = self.status, duration_ms = ms, "request done");
    }
}

/// Rewrites the caller's request head for the tunnel: hop-by-hop headers out,
/// `x-forwarded-*` in, and an absolute URI (HTTP/3 needs `:authority`).
fn tunnel_head(parts: &mut http::request::Parts, remote: SocketAddr, fallback_host: &str) {
    strip_hop_by_hop(&mut parts.headers);
    let ip = remote.ip().to_string();
    let xff = match parts
        .headers
        .get(&X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
    {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip,
    };
    if let Ok(v) = HeaderValue::try_from(xff) {
        parts.headers.insert(X_FORWARDED_FOR, v);
    }
    parts
        .headers
        .insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));

    let host = parts.headers.remove(HOST);
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            host.as_ref()
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        });
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let build = |authority: &str| {
        Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(path)
            .build()
    };
    parts.uri = authority
        .and_then(|a| build(&a).ok())
        .or_else(|| build(fallback_host).ok())
        .unwrap_or_else(|| Uri::from_static("http://tether/"));
    parts.version = Version::HTTP_3;
}

/// Sends `req` down the leased tunnel and returns the response to hand to the caller.
pub async fn forward(
    lease: Lease<Link>,
    remote: SocketAddr,
    req: Request<Incoming>,
    timeout: Duration,
    started: Instant,
) -> Response<RespBody> {
    let (mut parts, body) = req.into_parts();
    let caller_version = parts.version;
    let tunnel = lease.tunnel().clone();
    tunnel_head(&mut parts, remote, tunnel.identity.node.as_str());

    let mut sender = tunnel.handle.sender.clone();
    let stream = match sender.send_request(Request::from_parts(parts, ())).await {
        Ok(s) => s,
        Err(e) => {
            return error_response(
                ErrorCode::TunnelLost,
                &format!(
                    "could not open a stream to node {}: {e}",
                    tunnel.identity.node
                ),
            )
        }
    };
    Span::current().record("stream", stream.id().into_inner());
    let (mut send, mut recv) = stream.split();

    // A body-less request (most GETs) finishes inline; others stream from a task so
    // that the response can start before the upload ends.
    let mut upload = None;
    if body.is_end_stream() {
        if let Err(e) = send.finish().await {
            debug!(error = %e, "finishing request stream failed");
        }
    } else {
        upload = Some(tokio::spawn(
            async move {
                if let Err(e) = pump(body, &mut send).await {
                    debug!(error = %e, "request body not fully sent");
                }
            }
            .in_current_span(),
        ));
    }
    let abort_upload = |upload: Option<tokio::task::JoinHandle<()>>| {
        if let Some(task) = upload {
            task.abort();
        }
    };

    let head = match tokio::time::timeout(timeout, recv.recv_response()).await {
        Ok(Ok(head)) => head,
        Ok(Err(e)) => {
            abort_upload(upload);
            return error_response(
                ErrorCode::TunnelLost,
                &format!(
                    "tunnel to node {} failed before the response: {e}",
                    tunnel.identity.node
                ),
            );
        }
        Err(_) => {
            // Dropping both halves resets the stream, so the agent stops working on it.
            // (Not `stop_sending`: h3-quinn 0.0.10 panics if a read was in progress.)
            abort_upload(upload);
            return error_response(
                ErrorCode::Timeout,
                &format!(
                    "no response head from node {} within {timeout:?}",
                    tunnel.identity.node
                ),
            );
        }
    };
    let (mut head, ()) = head.into_parts();
    strip_hop_by_hop(&mut head.headers);
    // hyper answers in the caller's protocol and insists the head says so.
    head.version = caller_version;
    debug!(status = head.status.as_u16(), "response head");
    let completion = Completion {
        _lease: lease,
        span: Span::current(),
        status: head.status.as_u16(),
        started,
    };
    let body = TunnelBody::new(recv, completion)
        .map_err(BoxError::from)
        .boxed_unsync();
    Response::from_parts(head, body)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        tunnel_head(&mut parts, "127.0.0.1:5555".parse().unwrap(), "node-a");
        assert_eq!(parts.uri, "http://svc.example:8080/a/b?c=1");
        assert!(!parts.headers.contains_key("host"));
        assert!(!parts.headers.contains_key("connection"));
        assert_eq!(parts.headers["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(parts.headers["x-forwarded-proto"], "http");
    }

    #[test]
    fn missing_host_falls_back_to_the_node() {
        let (mut parts, ()) = Request::builder().uri("/").body(()).unwrap().into_parts();
        tunnel_head(&mut parts, "127.0.0.1:1".parse().unwrap(), "node-a");
        assert_eq!(parts.uri, "http://node-a/");
    }
}
