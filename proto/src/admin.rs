//! The admin HTTP listener both binaries run (health, readiness, metrics, and on the
//! relay the registry API and status page). Plain HTTP/1.1 on a local address; what it
//! serves is up to the binary's handler.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// `[admin]` in both configs.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "enabled")]
    pub enabled: bool,
    pub listen: SocketAddr,
}

fn enabled() -> bool {
    true
}

impl AdminConfig {
    pub fn on(listen: SocketAddr) -> Self {
        AdminConfig {
            enabled: true,
            listen,
        }
    }
}

pub type AdminResponse = Response<Full<Bytes>>;

/// A response with a body and content type; never cached.
pub fn response(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> AdminResponse {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

pub fn json(status: StatusCode, v: serde_json::Value) -> AdminResponse {
    response(status, "application/json", v.to_string())
}

/// Content type of the Prometheus text format.
pub const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `handler` on `listener` until the task is dropped.
pub async fn serve<H, F>(listener: TcpListener, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = AdminResponse> + Send + 'static,
{
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let fut = handler(req);
                async move { Ok::<_, Infallible>(fut.await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await
            {
                tracing::debug!(error = %e, "admin connection failed");
            }
        });
    }
}
