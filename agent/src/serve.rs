//! Serving one request stream from the relay: pick the route, forward to the local
//! service over one of the route's pooled HTTP/1.1 connections, and stream the response
//! back up the tunnel.

use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use h3::server::RequestResolver;
use h3_quinn::{Connection, SendStream};
use http::header::{HeaderValue, HOST};
use http::{Request, Response, Uri};
use tether_proto::control::CONTROL_PATH;
use tether_proto::error_chain::error_chain;
use tether_proto::h3body::{pump, TunnelBody};
use tether_proto::headers::strip_hop_by_hop;
use tether_proto::ErrorCode;
use tracing::{debug, debug_span, info, Instrument};

use crate::control::ConnControl;
use crate::routes::Routes;

type Send = h3::server::RequestStream<SendStream<Bytes>, Bytes>;
type Recv = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;
/// A request body on its way to a local service: streamed from the tunnel. Boxed: hyper's
/// client moves the whole request through its dispatch channel and back in a `Result`
/// (nine moves per request), and the body's stream is most of the request's size.
pub type UpstreamBody = Box<TunnelBody<Recv>>;

/// Shared by every request of every tunnel connection.
pub struct Service {
    /// Swapped whole on reload; a request keeps the table it started with.
    pub routes: ArcSwap<Routes>,
    pub connect_timeout: std::time::Duration,
}

/// Answers a Tether error (`x-tether-error` + JSON) on the stream.
async fn send_error(send: &mut Send, code: ErrorCode, detail: &str) {
    let resp: Response<String> = code.response(detail);
    let (head, body) = resp.into_parts();
    let r = async {
        send.send_response(Response::from_parts(head, ())).await?;
        send.send_data(Bytes::from(body)).await?;
        send.finish().await
    };
    if let Err(e) = r.await {
        debug!(error = %e, "could not send error response");
    }
}

/// Handles one request stream to completion (the control stream for as long as the
/// connection lives).
///
/// The task runs outside the connection's `tunnel` span: entering it on each of the
/// task's polls cost about 1.8k instructions per request (callgrind, one caller), more
/// than the request's own log lines. Those lines carry the tunnel's `slot` as a field
/// instead, and the control stream enters the span itself.
pub async fn handle(
    service: Arc<Service>,
    resolver: RequestResolver<Connection, Bytes>,
    control: Arc<ConnControl>,
    slot: usize,
) {
    let (req, stream) = match resolver.resolve_request().await {
        Ok(x) => x,
        Err(e) => {
            debug!(slot, error = %e, "could not read request head");
            return;
        }
    };
    if req.uri().path() == CONTROL_PATH {
        // The head's values share the buffer its packet arrived in (vendored h3): let it
        // go rather than hold it for the connection's life.
        drop(req);
        // Boxed, like every path here that is not a plain request's: a future holds room
        // for the largest thing it awaits, and every request's future is copied whole
        // when it is spawned (`-Zprint-type-sizes` shows the layout: bench/RESULTS.md).
        return Box::pin(control.serve(stream)).await;
    }
    let span = debug_span!(
        "request",
        stream = stream.id().into_inner(),
        method = %req.method(),
        path = %req.uri().path(),
    );
    // The span is debug-level: when it is off, the request future is awaited as it is,
    // not moved once more into an `Instrumented` wrapper (a 650-byte copy per request).
    if span.is_disabled() {
        serve(service, req, stream, slot).await
    } else {
        Box::pin(serve(service, req, stream, slot).instrument(span)).await
    }
}

async fn serve(
    service: Arc<Service>,
    req: Request<()>,
    stream: h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
    slot: usize,
) {
    let started = std::time::Instant::now();
    let (mut send, recv) = stream.split();
    let (mut parts, ()) = req.into_parts();
    let routes = service.routes.load_full();
    let Some(route) = routes.find(parts.uri.path()) else {
        info!(slot, status = 404, "no route");
        let detail = format!("no agent route matches {}", parts.uri.path());
        return Box::pin(send_error(&mut send, ErrorCode::NoRoute, &detail)).await;
    };
    // The caller's Host travels as :authority; give it to the local service unchanged
    // (the upstream's own host:port when there is none).
    let host = parts.uri.authority().unwrap_or(&route.authority);
    if let Ok(v) = HeaderValue::from_str(host.as_str()) {
        parts.headers.insert(HOST, v);
    }
    strip_hop_by_hop(&mut parts.headers);
    // hyper writes the URI as given, and a server wants origin-form: path and query.
    parts.uri = parts
        .uri
        .path_and_query()
        .cloned()
        .map_or_else(|| Uri::from_static("/"), Uri::from);
    parts.version = http::Version::HTTP_11;
    let mut body = TunnelBody::new(recv, ());
    // A GET's end usually arrives with its head: then send it upstream with no body,
    // not as an open-ended chunked one that hyper would wait on.
    body.ended_already();
    let upstream_req = Request::from_parts(parts, Box::new(body));

    let sent = route
        .pool
        .send(upstream_req, service.connect_timeout, started)
        .await;
    let (resp, conn) = match sent {
        Ok(r) => r,
        Err(e) => {
            route.metrics.unreachable.inc();
            let detail = format!("{} unreachable: {}", route.upstream, error_chain(&e));
            info!(slot, status = 502, upstream = %route.upstream, detail, "upstream failed");
            return Box::pin(send_error(
                &mut send,
                ErrorCode::UpstreamUnreachable,
                &detail,
            ))
            .await;
        }
    };
    let (mut head, body) = resp.into_parts();
    strip_hop_by_hop(&mut head.headers);
    let status = head.status.as_u16();
    if let Err(e) = send.send_response(Response::from_parts(head, ())).await {
        debug!(error = %e, "relay went away before the response head");
        return;
    }
    let result = pump(body, &mut send).await;
    // One clock read for the pool and the metrics: each is ~25 ns on this path.
    let finished = std::time::Instant::now();
    if result.is_ok() {
        // The response was read to its end: the connection can carry the next request.
        conn.release(finished);
    }
    let elapsed = finished - started;
    route.metrics.durations.observe(status, elapsed);
    match result {
        Ok(bytes) => debug!(
            slot,
            status,
            bytes,
            duration_ms = elapsed.as_secs_f64() * 1e3,
            upstream = %route.upstream,
            "request done"
        ),
        Err(e) => info!(slot, status, error = %e, upstream = %route.upstream, "response cut"),
    }
}
