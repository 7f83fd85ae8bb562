//! The ingress listener: plain HTTP/1.1 and h2c (prior knowledge) from cloud callers.
//! Picks the tunnel from the routing headers and hands the request to [`forward`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header::HeaderName;
use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tether_proto::identity::validate_id;
use tether_proto::ErrorCode;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, debug_span, info, warn, Instrument};

use crate::config::IngressConfig;
use crate::forward::{error_response, forward, Caller, RespBody};
use crate::metrics::Metrics;
use crate::registry::Lease;
use crate::tunnel::{Link, TunnelRegistry};

/// Everything a request needs to be routed; shared by all connections.
pub struct Router {
    registry: TunnelRegistry,
    metrics: Arc<Metrics>,
    node_header: HeaderName,
    cluster_header: HeaderName,
    timeout: Duration,
}

impl Router {
    pub fn new(
        cfg: &IngressConfig,
        registry: TunnelRegistry,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let header = |name: &str, key: &str| {
            HeaderName::try_from(name.to_ascii_lowercase())
                .map_err(|_| anyhow::anyhow!("ingress.{key} {name:?} is not a valid header name"))
        };
        Ok(Router {
            registry,
            metrics,
            node_header: header(&cfg.node_header, "node_header")?,
            cluster_header: header(&cfg.cluster_header, "cluster_header")?,
            timeout: cfg.request_timeout,
        })
    }

    /// `x-node-id` wins; else `x-cluster-id`; else an error for the caller.
    fn route(&self, headers: &HeaderMap) -> Result<Lease<Link>, (ErrorCode, String)> {
        // Checked in place: routing a request allocates nothing.
        let parse = |name: &HeaderName| -> Result<Option<&str>, (ErrorCode, String)> {
            let Some(v) = headers.get(name) else {
                return Ok(None);
            };
            let s = v.to_str().map_err(|_| {
                (
                    ErrorCode::BadId,
                    format!("{name} is not a valid ID (non-ASCII bytes)"),
                )
            })?;
            let s = s.trim();
            validate_id(s).map_err(|e| (ErrorCode::BadId, format!("{name}: {e}")))?;
            Ok(Some(s))
        };
        if let Some(node) = parse(&self.node_header)? {
            return self.registry.pick_node(node).ok_or_else(|| {
                (
                    ErrorCode::NoTunnel,
                    format!("no live tunnel for node {node}"),
                )
            });
        }
        if let Some(cluster) = parse(&self.cluster_header)? {
            return self.registry.pick_cluster(cluster).ok_or_else(|| {
                (
                    ErrorCode::NoTunnel,
                    format!("no live tunnel for cluster {cluster}"),
                )
            });
        }
        Err((
            ErrorCode::NoRouteHeader,
            format!(
                "send {} or {} to choose the target",
                self.node_header, self.cluster_header
            ),
        ))
    }

    async fn handle(&self, caller: &Caller, req: Request<Incoming>) -> Response<RespBody> {
        let started = Instant::now();
        let routed = self.route(req.headers());
        self.metrics.observe_pick(started.elapsed());
        let lease = match routed {
            Ok(lease) => lease,
            Err((code, detail)) => {
                self.metrics.error(code);
                info!(
                    remote = %caller.addr,
                    status = code.status().as_u16(),
                    error = code.as_str(),
                    detail,
                    method = %req.method(),
                    path = %req.uri().path(),
                    "request"
                );
                return error_response(code, &detail);
            }
        };
        let t = lease.tunnel();
        let span = debug_span!(
            "request",
            node = %t.identity.node,
            cluster = %t.identity.cluster,
            conn = t.conn_id,
            stream = tracing::field::Empty,
            method = %req.method(),
            path = %req.uri().path(),
        );
        forward(
            lease,
            caller,
            req,
            self.timeout,
            started,
            self.metrics.clone(),
        )
        .instrument(span)
        .await
    }
}

/// Serves callers until `stop` is cancelled, then lets requests in flight finish for up
/// to `drain` before returning.
pub async fn serve(
    listener: TcpListener,
    router: Arc<ArcSwap<Router>>,
    stop: CancellationToken,
    drain: Duration,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "ingress accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let caller = Arc::new(Caller::new(remote));
        let svc = service_fn(move |req| {
            let router = router.clone();
            let caller = caller.clone();
            async move {
                // The router in force when the request arrives serves it to the end.
                let router = router.load_full();
                Ok::<_, Infallible>(router.handle(&caller, req).await)
            }
        });
        let conn = builder
            .serve_connection(TokioIo::new(tcp), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%remote, error = %e, "ingress connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(?drain, "drain timeout: cutting requests still in flight");
    }
}
