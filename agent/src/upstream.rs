//! Connections to a local service: a pool of keep-alive HTTP/1.1 connections per route.
//!
//! Why not hyper-util's pooled `Client`: on the agent it was 16 % of the user CPU of a
//! small request (its checkout races a pool wait against a lazy connect, with a future
//! and a lock per step). Here a request takes the most recently used idle connection (one
//! short lock), sends on it with hyper's own connection API, and the caller gives the
//! connection back once it has read the response body to its end. A connection whose
//! exchange failed or was cut is dropped, never reused. A request that an idle connection
//! refuses unsent (the service closed it at its keep-alive timeout) goes to the next one
//! or to a new connection: no byte of it was written, so retrying is safe for any method.
//! Connections idle for longer than [`IDLE_TIMEOUT`] are closed by a reaper task that
//! lives as long as the pool.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

/// Idle connections kept per route; more are closed when they come back.
const MAX_IDLE: usize = 1024;
/// An idle connection older than this is closed instead of reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Why a request did not get a response head from the service. The cause is the
/// `source()`, so an error chain reads "tcp connect error: Connection refused".
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("tcp connect error")]
    Connect(#[source] std::io::Error),
    #[error("tcp connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("HTTP/1.1 handshake failed")]
    Handshake(#[source] hyper::Error),
    #[error("HTTP/1.1 exchange failed")]
    Http(#[source] hyper::Error),
}

struct Idle<B> {
    sender: http1::SendRequest<B>,
    since: Instant,
}

impl<B> Idle<B> {
    /// Still open on both ends and, at `now`, idle no longer than `timeout`.
    fn fresh(&self, timeout: Duration, now: Instant) -> bool {
        !self.sender.is_closed() && now.saturating_duration_since(self.since) <= timeout
    }
}

/// The connections of one route's upstream (`authority` is its `host:port`).
pub struct Pool<B> {
    authority: Authority,
    /// Most recently used last.
    idle: Mutex<Vec<Idle<B>>>,
    idle_timeout: Duration,
    /// Started with the first connection (pools are built outside the runtime).
    reaper: std::sync::Once,
}

impl<B> Pool<B> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle<B>>> {
        // A panic while holding the lock leaves at worst a missing idle connection.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes idle connections past the timeout, and ones the service closed.
    fn prune(&self) {
        let timeout = self.idle_timeout;
        let now = Instant::now();
        self.lock().retain(|i| i.fresh(timeout, now));
    }
}

impl<B> std::fmt::Debug for Pool<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

/// A connection in use; [`Conn::release`] gives it back to its pool.
pub struct Conn<B> {
    sender: http1::SendRequest<B>,
    pool: Arc<Pool<B>>,
}

impl<B> Conn<B> {
    /// Back to the pool, for a connection whose response body was read to its end at
    /// `now` (the caller has the time at hand; a clock read is not free on this path).
    pub fn release(self, now: Instant) {
        let Conn { sender, pool } = self;
        if sender.is_closed() {
            return;
        }
        // Expiry is the reaper's job (and `take_idle` skips stale ones).
        let mut idle = pool.lock();
        if idle.len() < MAX_IDLE {
            idle.push(Idle { sender, since: now });
        }
    }
}

impl<B> Pool<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub fn new(authority: Authority) -> Arc<Self> {
        Self::with_idle_timeout(authority, IDLE_TIMEOUT)
    }

    fn with_idle_timeout(authority: Authority, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Pool {
            authority,
            idle: Mutex::new(Vec::new()),
            idle_timeout,
            reaper: std::sync::Once::new(),
        })
    }

    /// Prunes the idle list every half timeout for as long as the pool exists (a reload
    /// drops the old pools, and their reapers end at the next tick).
    fn start_reaper(self: &Arc<Self>) {
        self.reaper.call_once(|| {
            let pool = Arc::downgrade(self);
            let every = self.idle_timeout / 2;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    match pool.upgrade() {
                        Some(p) => p.prune(),
                        None => return,
                    }
                }
            });
        });
    }

    /// The most recently used idle connection that is still fresh at `now`.
    fn take_idle(&self, now: Instant) -> Option<http1::SendRequest<B>> {
        let mut idle = self.lock();
        while let Some(i) = idle.pop() {
            if i.fresh(self.idle_timeout, now) {
                return Some(i.sender);
            }
        }
        None
    }

    /// Sends `req` (origin-form URI, `Host` set) and returns the response head with the
    /// connection it arrived on. `now` is the caller's recent clock reading, to judge
    /// idle connections by.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<B>,
        connect_timeout: Duration,
        now: Instant,
    ) -> Result<(Response<Incoming>, Conn<B>), UpstreamError> {
        while let Some(mut sender) = self.take_idle(now) {
            if sender.ready().await.is_err() {
                continue; // closed while idle
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, self.conn(sender))),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(UpstreamError::Http(e.into_error())),
                },
            }
        }
        let mut sender = self.connect(connect_timeout).await?;
        match sender.send_request(req).await {
            Ok(resp) => Ok((resp, self.conn(sender))),
            Err(e) => Err(UpstreamError::Http(e)),
        }
    }

    fn conn(self: &Arc<Self>, sender: http1::SendRequest<B>) -> Conn<B> {
        Conn {
            sender,
            pool: self.clone(),
        }
    }

    async fn connect(
        self: &Arc<Self>,
        timeout: Duration,
    ) -> Result<http1::SendRequest<B>, UpstreamError> {
        self.start_reaper();
        let addr = (
            self.authority.host(),
            self.authority.port_u16().unwrap_or(80),
        );
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout(timeout))?
            .map_err(UpstreamError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(UpstreamError::Handshake)?;
        let authority = self.authority.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(upstream = %authority, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Full};
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    use super::*;

    type TestBody = Empty<Bytes>;

    /// A local service on 127.0.0.1 that counts the connections it accepts. With
    /// `keep_alive` off it closes each connection after one response.
    async fn service(keep_alive: bool) -> (Authority, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = service_fn(|req: Request<Incoming>| async move {
                        let body = format!("hello {}", req.uri().path());
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(body))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        (addr.to_string().parse().unwrap(), accepted)
    }

    fn get(path: &str, host: &Authority) -> Request<TestBody> {
        Request::builder()
            .uri(path)
            .header("host", host.as_str())
            .body(Empty::new())
            .unwrap()
    }

    async fn roundtrip(pool: &Arc<Pool<TestBody>>, path: &str) -> Result<String, UpstreamError> {
        let (resp, conn) = pool
            .send(
                get(path, &pool.authority),
                Duration::from_secs(2),
                Instant::now(),
            )
            .await?;
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        conn.release(Instant::now());
        Ok(String::from_utf8(body.to_vec()).unwrap())
    }

    /// `n` requests one after another, each answered with its own path.
    async fn sequential(pool: &Arc<Pool<TestBody>>, n: usize) {
        for i in 0..n {
            let path = format!("/{i}");
            assert_eq!(
                roundtrip(pool, &path).await.unwrap(),
                format!("hello {path}")
            );
        }
    }

    #[tokio::test]
    async fn sequential_requests_share_one_connection() {
        let (authority, accepted) = service(true).await;
        sequential(&Pool::new(authority), 20).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_service_closed_is_replaced() {
        let (authority, accepted) = service(false).await;
        sequential(&Pool::new(authority), 5).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn a_connection_not_given_back_is_not_reused() {
        let (authority, accepted) = service(true).await;
        let pool = Pool::new(authority);
        let (resp, conn) = pool
            .send(
                get("/a", &pool.authority),
                Duration::from_secs(2),
                Instant::now(),
            )
            .await
            .unwrap();
        drop(resp); // body never read: the exchange is cut
        drop(conn);
        assert_eq!(roundtrip(&pool, "/b").await.unwrap(), "hello /b");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn concurrent_requests_open_connections_as_needed() {
        let (authority, accepted) = service(true).await;
        let pool = Pool::new(authority);
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let pool = pool.clone();
                tokio::spawn(async move { roundtrip(&pool, &format!("/{i}")).await.unwrap() })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap(), format!("hello /{i}"));
        }
        let opened = accepted.load(Ordering::SeqCst);
        assert!((1..=8).contains(&opened), "{opened} connections");
        // They all came back: the next 8 sequential requests open nothing new.
        sequential(&pool, 8).await;
        assert_eq!(accepted.load(Ordering::SeqCst), opened);
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_timeout() {
        let (authority, accepted) = service(true).await;
        let pool = Pool::with_idle_timeout(authority, Duration::from_millis(200));
        roundtrip(&pool, "/a").await.unwrap();
        assert_eq!(pool.lock().len(), 1);
        // Bounded: 100 polls of 20 ms; the reaper runs every 100 ms.
        for _ in 0..100 {
            if pool.lock().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(pool.lock().is_empty(), "idle connection not reaped");
        roundtrip(&pool, "/b").await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn refused_connect_is_a_connect_error() {
        // Bind then drop, so the port is (almost certainly) closed.
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pool: Arc<Pool<TestBody>> = Pool::new(format!("127.0.0.1:{port}").parse().unwrap());
        let err = roundtrip(&pool, "/").await.unwrap_err();
        assert!(matches!(err, UpstreamError::Connect(_)), "{err}");
        let cause = std::error::Error::source(&err).map(ToString::to_string);
        assert!(cause.is_some_and(|c| c.contains("refused")), "{err:?}");
    }
}
