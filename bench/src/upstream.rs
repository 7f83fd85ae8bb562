//! The upstream every target forwards to: a tiny fixed-response hyper server (HTTP/1.1
//! and h2c), so that the numbers measure the path, not the backend.
//!
//! `GET /fixed` → 1 KiB; `GET /bytes/N` → N bytes in 256 KiB static chunks (no copies);
//! `POST /upload` → reads and discards the body, answers its length in decimal.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

pub const FIXED_LEN: usize = 1024;
static FIXED: [u8; FIXED_LEN] = [b'x'; FIXED_LEN];
pub const CHUNK: usize = 256 * 1024;
static CHUNK_BYTES: [u8; CHUNK] = [b'b'; CHUNK];

type ResBody = BoxBody<Bytes, Infallible>;

/// `n` bytes as static chunks.
pub struct Repeat {
    left: u64,
}

impl Repeat {
    pub fn new(n: u64) -> Self {
        Repeat { left: n }
    }
}

impl Body for Repeat {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(CHUNK as u64) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK_BYTES[..n])))))
    }
    fn is_end_stream(&self) -> bool {
        self.left == 0
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

fn full(status: StatusCode, b: Bytes) -> Response<ResBody> {
    let mut r = Response::new(Full::new(b).boxed());
    *r.status_mut() = status;
    r
}

async fn handle(req: Request<Incoming>) -> Response<ResBody> {
    let path = req.uri().path();
    if path == "/fixed" {
        return full(StatusCode::OK, Bytes::from_static(&FIXED));
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        return match n.parse::<u64>() {
            Ok(n) => Response::new(Repeat::new(n).boxed()),
            Err(_) => full(StatusCode::BAD_REQUEST, Bytes::from_static(b"bad N")),
        };
    }
    if path == "/upload" {
        let mut body = req.into_body();
        let mut n = 0u64;
        while let Some(f) = body.frame().await {
            match f {
                Ok(f) => {
                    if let Some(d) = f.data_ref() {
                        n += d.len() as u64;
                    }
                }
                Err(_) => return full(StatusCode::BAD_REQUEST, Bytes::from_static(b"cut")),
            }
        }
        return full(StatusCode::OK, Bytes::from(n.to_string()));
    }
    full(StatusCode::OK, Bytes::from_static(b"ok"))
}

pub async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    let builder = std::sync::Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(x) => x,
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let builder = builder.clone();
        tokio::spawn(async move {
            let svc = service_fn(|req| async move { Ok::<_, Infallible>(handle(req).await) });
            let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
        });
    }
}
