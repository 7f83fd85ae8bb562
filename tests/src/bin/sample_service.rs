//! `tether-sample-service`: the "on-prem service" that sits behind the agent in the
//! end-to-end tests, the demo and the benchmarks.
//!
//! A small, fast HTTP/1.1 (and h2c) server whose routes make tunnel behaviour easy to
//! observe: request echoing, large deterministic downloads, hashed uploads, streaming,
//! slow responses, arbitrary status codes and trailers.
//!
//! After binding it prints exactly one line, `listening on <addr>`, to stdout; tests read
//! it to learn the port. Every response carries `x-service: <name>`.
//!
//! Routes are matched on the end of the path, so `/info` and `/downstream_service/info`
//! are the same route:
//!
//! | route                                          | response                                   |
//! |------------------------------------------------|--------------------------------------------|
//! | any method `.../info`, and any unknown path    | JSON `{service, method, path, headers}`    |
//! | `GET .../bytes/N[?chunked=1]`                  | N bytes, byte i = i % 251, 64 KiB chunks   |
//! | `POST/PUT .../upload`                          | JSON `{bytes, sha256}` of the request body |
//! | `POST .../echo`                                | the request body and trailers, streamed    |
//! | `GET .../slow?ms=M`                            | `slow` after M ms                          |
//! | `GET .../stream?chunks=C&interval_ms=I&size=S` | C chunks of S bytes, one every I ms        |
//! | `GET .../status/CODE`                          | that status, body `status CODE`            |
//! | `GET .../trailers`                             | `body`, then trailer `x-trailer: done`     |
//! | `GET .../fixed`                                | a static 1 KiB body (benchmark endpoint)   |
//! | any method `.../reflect`                       | request fields named `x-reflect-*` sent    |
//! |                                                | back as response fields, byte for byte     |
//!
//! `GET` routes also answer `HEAD`; a known route with the wrong method gets 405, a bad
//! number in the path or query gets 400. Over HTTP/1.1, hyper sends response trailers
//! only if the request said `TE: trailers` and the response declares them in `trailer`.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use futures_util::stream;
use http::header::{HeaderName, HeaderValue, ALLOW, CONTENT_TYPE, TRAILER};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

/// Chunk size for generated bodies.
const CHUNK: usize = 64 * 1024;
/// Largest `size` accepted by `/stream` (one chunk is kept in memory).
const MAX_STREAM_CHUNK: usize = 64 * 1024 * 1024;
static FIXED_BODY: [u8; 1024] = [b'x'; 1024];
static X_SERVICE: HeaderName = HeaderName::from_static("x-service");

#[derive(Parser, Debug)]
#[command(
    name = "tether-sample-service",
    about = "Sample on-prem HTTP service for Tether tests and demos"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Value of the `x-service` header and the `service` field of `/info`.
    #[arg(long, default_value = "sample")]
    name: String,
}

struct Service {
    name: String,
    name_header: HeaderValue,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let service = Arc::new(Service {
        name_header: HeaderValue::from_str(&args.name)?,
        name: args.name,
    });

    let listener = TcpListener::bind(args.listen).await?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {}", listener.local_addr()?)?;
    stdout.flush()?;
    drop(stdout);

    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let (tcp, _peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // E.g. EMFILE under heavy load: back off briefly instead of exiting.
                eprintln!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let service = service.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let service = service.clone();
                async move { Ok::<_, Infallible>(service.handle(req).await) }
            });
            // Errors here are clients going away mid-request; nothing to do about them.
            let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
        });
    }
}

impl Service {
    async fn handle(&self, req: Request<Incoming>) -> Response<ResBody> {
        let mut res = match self.route(req).await {
            Ok(res) => res,
            Err(msg) => text(StatusCode::BAD_REQUEST, msg),
        };
        res.headers_mut()
            .insert(X_SERVICE.clone(), self.name_header.clone());
        res
    }

    /// Dispatches on the last path segment, or the last two for `bytes/N` and
    /// `status/CODE`; `Err` becomes a 400.
    async fn route(&self, req: Request<Incoming>) -> Result<Response<ResBody>, String> {
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        let mut segments = path.rsplit('/').filter(|s| !s.is_empty());
        let last = segments.next().unwrap_or("");
        let prev = segments.next().unwrap_or("");
        let method = req.method().clone();
        let is_get = method == Method::GET || method == Method::HEAD;

        let res = match (last, prev) {
            ("info", _) => self.info(req).await,
            ("upload", _) if method == Method::POST || method == Method::PUT => {
                upload(req.into_body()).await?
            }
            ("upload", _) => method_not_allowed("POST, PUT"),
            ("echo", _) if method == Method::POST => echo(req),
            ("echo", _) => method_not_allowed("POST"),
            ("reflect", _) => reflect(req),
            ("slow", _) if is_get => {
                let ms: u64 = param(&query, "ms", 0)?;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                text(StatusCode::OK, "slow")
            }
            ("stream", _) if is_get => stream_chunks(&query)?,
            ("trailers", _) if is_get => trailers(),
            ("fixed", _) if is_get => ok(full(Bytes::from_static(&FIXED_BODY))),
            (n, "bytes") if is_get => {
                let n: u64 = n.parse().map_err(|_| format!("bad byte count {n:?}"))?;
                let chunked = flag(&query, "chunked")?;
                ok(boxed(PatternBody::new(n, !chunked)))
            }
            (code, "status") if is_get => status(code)?,
            ("slow" | "stream" | "trailers" | "fixed", _) | (_, "bytes" | "status") => {
                method_not_allowed("GET, HEAD")
            }
            _ => self.info(req).await,
        };
        Ok(res)
    }

    /// Everything about the request except its body, which is drained so that the
    /// connection stays reusable.
    async fn info(&self, req: Request<Incoming>) -> Response<ResBody> {
        let (parts, mut body) = req.into_parts();
        while let Some(Ok(_)) = body.frame().await {}
        let mut headers = serde_json::Map::new();
        for (name, value) in &parts.headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            match headers.get_mut(name.as_str()) {
                // Repeated headers are joined the way a proxy would fold them.
                Some(serde_json::Value::String(prev)) => {
                    prev.push_str(", ");
                    prev.push_str(&value);
                }
                _ => {
                    headers.insert(name.as_str().to_owned(), value.into_owned().into());
                }
            }
        }
        let path = parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path(), |pq| pq.as_str());
        json_response(serde_json::json!({
            "service": self.name,
            "method": parts.method.as_str(),
            "path": path,
            "headers": headers,
        }))
    }
}

async fn upload(mut body: Incoming) -> Result<Response<ResBody>, String> {
    let mut hasher = Sha256::new();
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading request body: {e}"))?;
        if let Some(data) = frame.data_ref() {
            hasher.update(data);
            total += data.len() as u64;
        }
    }
    let json = serde_json::json!({ "bytes": total, "sha256": hex::encode(hasher.finalize()) });
    Ok(json_response(json))
}

/// Streams the request body (data and trailers) straight back.
fn echo(req: Request<Incoming>) -> Response<ResBody> {
    let (parts, body) = req.into_parts();
    let mut res = ok(ResBody::Echo(body));
    for name in [CONTENT_TYPE, TRAILER] {
        // HTTP/1.1 only forwards trailer fields that the `trailer` header declares.
        if let Some(value) = parts.headers.get(&name) {
            res.headers_mut().insert(name, value.clone());
        }
    }
    res
}

/// Sends the request's `x-reflect-*` fields back as response fields, every value of a
/// repeated one and in order, so a test can compare both directions byte for byte.
fn reflect(req: Request<Incoming>) -> Response<ResBody> {
    let mut res = text(StatusCode::OK, "reflected");
    for (name, value) in req.headers() {
        if name.as_str().starts_with("x-reflect-") {
            res.headers_mut().append(name.clone(), value.clone());
        }
    }
    res
}

fn status(code: &str) -> Result<Response<ResBody>, String> {
    let status = code
        .parse::<u16>()
        .ok()
        .filter(|c| (200..=999).contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| format!("bad status code {code:?} (want 200..=999)"))?;
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        let mut res = ok(full(Bytes::new()));
        *res.status_mut() = status;
        return Ok(res);
    }
    Ok(text(status, format!("status {}", status.as_u16())))
}

fn stream_chunks(query: &str) -> Result<Response<ResBody>, String> {
    let chunks: u64 = param(query, "chunks", 10)?;
    let interval = Duration::from_millis(param(query, "interval_ms", 100)?);
    let size: usize = param(query, "size", 1024)?;
    if size > MAX_STREAM_CHUNK {
        return Err(format!("size {size} is larger than {MAX_STREAM_CHUNK}"));
    }
    let chunk = pattern_bytes(0, size);
    let frames = stream::unfold(0u64, move |sent| {
        let chunk = chunk.clone();
        async move {
            if sent == chunks {
                return None;
            }
            if sent > 0 {
                tokio::time::sleep(interval).await;
            }
            Some((Ok::<_, Infallible>(Frame::data(chunk)), sent + 1))
        }
    });
    Ok(ok(boxed(StreamBody::new(frames))))
}

fn trailers() -> Response<ResBody> {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-trailer", HeaderValue::from_static("done"));
    let frames = stream::iter([
        Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"body"))),
        Ok(Frame::trailers(trailers)),
    ]);
    let mut res = ok(boxed(StreamBody::new(frames)));
    res.headers_mut()
        .insert(TRAILER, HeaderValue::from_static("x-trailer"));
    res
}

/// A body of `remaining` bytes where byte i is `i % 251`, handed out as slices of one
/// shared buffer so that even a 1 GiB body allocates nothing per chunk.
struct PatternBody {
    offset: u64,
    remaining: u64,
    /// Report the exact size, so hyper sends `content-length` rather than chunked.
    exact: bool,
}

impl PatternBody {
    fn new(len: u64, exact: bool) -> Self {
        Self {
            offset: 0,
            remaining: len,
            exact,
        }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let len = self.remaining.min(CHUNK as u64) as usize;
        let chunk = pattern_bytes(self.offset, len);
        self.offset += len as u64;
        self.remaining -= len as u64;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.remaining)
        } else {
            SizeHint::default()
        }
    }
}

/// `len` bytes of the pattern starting at stream offset `offset`; zero-copy up to
/// `CHUNK` bytes.
fn pattern_bytes(offset: u64, len: usize) -> Bytes {
    static PATTERN: OnceLock<Bytes> = OnceLock::new();
    let start = (offset % 251) as usize;
    if len > CHUNK {
        return (start..start + len).map(|i| (i % 251) as u8).collect();
    }
    let pattern = PATTERN.get_or_init(|| (0..CHUNK + 251).map(|i| (i % 251) as u8).collect());
    pattern.slice(start..start + len)
}

/// Reads `key` from a query string, falling back to `default` when it is absent.
/// Values are used as-is (no percent-decoding): they are all numbers.
fn param<T: FromStr>(query: &str, key: &str, default: T) -> Result<T, String> {
    let raw = query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find_map(|(k, v)| (k == key).then_some(v));
    match raw {
        None => Ok(default),
        Some(raw) => raw
            .parse()
            .map_err(|_| format!("bad value {raw:?} for query parameter {key:?}")),
    }
}

/// A boolean query flag: absent, `0` or `false` is off; `1`, `true` or empty is on.
fn flag(query: &str, key: &str) -> Result<bool, String> {
    match param::<String>(query, key, "0".into())?.as_str() {
        "0" | "false" => Ok(false),
        "1" | "true" | "" => Ok(true),
        raw => Err(format!("bad value {raw:?} for query parameter {key:?}")),
    }
}

fn ok(body: ResBody) -> Response<ResBody> {
    Response::new(body)
}

fn full(bytes: Bytes) -> ResBody {
    ResBody::Full(Full::new(bytes))
}

fn boxed<B>(body: B) -> ResBody
where
    B: Body<Data = Bytes, Error = Infallible> + Send + 'static,
{
    ResBody::Generated(body.boxed_unsync())
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<ResBody> {
    let mut res = ok(full(Bytes::from(body.into())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

fn json_response(json: serde_json::Value) -> Response<ResBody> {
    let mut res = ok(full(Bytes::from(json.to_string())));
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

fn method_not_allowed(allow: &'static str) -> Response<ResBody> {
    let mut res = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    res.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    res
}

/// Response body: fixed bodies stay unboxed (the benchmark path allocates nothing for
/// them), generated ones are boxed, and `/echo` passes the request body through.
/// The concrete error type keeps hyper's `Into<Box<dyn Error>>` bound easy on the
/// compiler (a boxed `dyn Error` trips a higher-ranked lifetime error in `spawn`).
enum ResBody {
    Full(Full<Bytes>),
    Generated(UnsyncBoxBody<Bytes, Infallible>),
    Echo(Incoming),
}

impl Body for ResBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ResBody::Full(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            ResBody::Generated(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            ResBody::Echo(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResBody::Full(body) => body.is_end_stream(),
            ResBody::Generated(body) => body.is_end_stream(),
            ResBody::Echo(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResBody::Full(body) => body.size_hint(),
            ResBody::Generated(body) => body.size_hint(),
            ResBody::Echo(body) => body.size_hint(),
        }
    }
}
