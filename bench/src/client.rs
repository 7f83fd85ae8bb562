//! The harness's own HTTP clients: sequential latency, bulk transfers, a simple load
//! loop (CI smoke and fallback when wrk is missing) and an h2 multiplexed latency probe.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http::header::HOST;
use http::{Request, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::upstream::{Repeat, FIXED_LEN};

/// Every request carries this routing header; direct, nginx and rathole ignore it.
pub const NODE: &str = "bench";

pub type ReqBody = BoxBody<Bytes, Infallible>;

fn empty() -> ReqBody {
    Empty::new().boxed()
}

pub async fn h1(addr: SocketAddr) -> Result<http1::SendRequest<ReqBody>> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    let (send, conn) = http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

fn get(path: &str, node: &str) -> Request<ReqBody> {
    Request::get(path)
        .header(HOST, "bench.local")
        .header("x-node-id", node)
        .body(empty())
        .expect("valid request")
}

/// One GET of `/fixed` on an open connection; checks status and length.
async fn fixed(send: &mut http1::SendRequest<ReqBody>, node: &str) -> Result<()> {
    send.ready().await?;
    let resp = send.send_request(get("/fixed", node)).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if status != StatusCode::OK || body.len() != FIXED_LEN {
        bail!("unexpected response: {status}, {} bytes", body.len());
    }
    Ok(())
}

/// [`latency`] on a thread of its own, on a current-thread runtime, as a blocking call.
///
/// On the harness's two-worker runtime the connection task and the measuring task can
/// sit on different worker threads, so every response crossed threads twice (a futex
/// wake each way) before it was timed: about 15 µs added to every target's p50 here
/// (direct: 32 µs instead of 17), noise included, that no target causes. One thread
/// running both tasks is how `wrk` runs too.
///
/// Also returns the thread's CPU time per request, warm-up included (nanoseconds).
pub fn latency_on_own_thread(addr: SocketAddr, warmup: usize, n: usize) -> Result<(Vec<u64>, f64)> {
    std::thread::Builder::new()
        .name("latency-client".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building the latency client's runtime")?;
            let (samples, cpu) =
                crate::cpu::per_request(warmup + n, || rt.block_on(latency(addr, warmup, n)));
            Ok((samples?, cpu))
        })
        .context("starting the latency client's thread")?
        .join()
        .map_err(|_| anyhow::anyhow!("the latency client's thread panicked"))?
}

/// `n` sequential GETs (after `warmup`) on one keep-alive connection; nanoseconds each.
pub async fn latency(addr: SocketAddr, warmup: usize, n: usize) -> Result<Vec<u64>> {
    let mut send = h1(addr).await?;
    let mut out = Vec::with_capacity(n);
    for i in 0..warmup + n {
        let t = Instant::now();
        fixed(&mut send, NODE).await?;
        if i >= warmup {
            out.push(t.elapsed().as_nanos() as u64);
        }
    }
    Ok(out)
}

/// `conc` connections each sending GETs back to back for `dur`; (ok, errors) counts.
pub async fn load(addr: SocketAddr, conc: usize, dur: Duration) -> Result<(u64, u64)> {
    let ok = Arc::new(AtomicU64::new(0));
    let err = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + dur;
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (ok, err) = (ok.clone(), err.clone());
        tasks.push(tokio::spawn(async move {
            let mut send = None;
            while Instant::now() < deadline {
                if send.is_none() {
                    send = h1(addr).await.ok();
                }
                let Some(s) = send.as_mut() else {
                    err.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                match fixed(s, NODE).await {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => {
                        send = None;
                        err.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok((ok.load(Ordering::Relaxed), err.load(Ordering::Relaxed)))
}

/// Downloads `/bytes/n`; returns seconds from request to last byte.
pub async fn download(addr: SocketAddr, n: u64) -> Result<f64> {
    let mut send = h1(addr).await?;
    let t = Instant::now();
    let resp = send.send_request(get(&format!("/bytes/{n}"), NODE)).await?;
    if resp.status() != StatusCode::OK {
        bail!("download: status {}", resp.status());
    }
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(f) = body.frame().await {
        if let Some(d) = f?.data_ref() {
            got += d.len() as u64;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    if got != n {
        bail!("download: got {got} of {n} bytes");
    }
    Ok(secs)
}

/// Uploads `n` bytes to `/upload`; returns seconds until the response (which states the
/// byte count the upstream saw) is complete.
pub async fn upload(addr: SocketAddr, n: u64) -> Result<f64> {
    let mut send = h1(addr).await?;
    let req = Request::post("/upload")
        .header(HOST, "bench.local")
        .header("x-node-id", NODE)
        .header("content-length", n.to_string())
        .body(Repeat::new(n).boxed())?;
    let t = Instant::now();
    let resp = send.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    let secs = t.elapsed().as_secs_f64();
    if status != StatusCode::OK || body != n.to_string().as_bytes() {
        bail!(
            "upload: status {status}, body {:?}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(secs)
}

/// `conc` callers sharing ONE HTTP/2 (prior knowledge) connection, each sending GETs of
/// `url` back to back for `dur`; latency of every request in nanoseconds, and errors.
pub async fn h2_latency(
    addr: SocketAddr,
    url: &str,
    conc: usize,
    dur: Duration,
) -> Result<(Vec<u64>, u64)> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    let (send, conn) = http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(16 << 20)
        .handshake::<_, ReqBody>(TokioIo::new(tcp))
        .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let deadline = Instant::now() + dur;
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let mut send = send.clone();
        let url = url.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errs = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                let r = async {
                    send.ready().await?;
                    // HTTP/2 carries the authority in the URL; a Host header too is a
                    // duplicate nginx rejects with 400.
                    let req = Request::get(url.as_str())
                        .header("x-node-id", NODE)
                        .body(empty())?;
                    let resp = send.send_request(req).await?;
                    let st = resp.status();
                    let body = resp.into_body().collect().await?.to_bytes();
                    if st != StatusCode::OK || body.len() != FIXED_LEN {
                        bail!("status {st}");
                    }
                    Ok::<_, anyhow::Error>(())
                }
                .await;
                match r {
                    Ok(()) => lat.push(t.elapsed().as_nanos() as u64),
                    Err(_) => {
                        errs += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            (lat, errs)
        }));
    }
    let mut all = Vec::new();
    let mut errs = 0;
    for t in tasks {
        let (l, e) = t.await?;
        all.extend(l);
        errs += e;
    }
    Ok((all, errs))
}

/// Nearest-rank percentile of sorted values.
pub fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1]
}
