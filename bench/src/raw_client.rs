//! The latency scenario's second client: sequential GETs written and read with plain
//! blocking socket calls, one thread, no runtime.
//!
//! Why a second client: at one caller every process of a target shares one core, and the
//! measuring client's own CPU time (about 3 µs per request for the hyper client on its
//! tokio runtime, against under 1 µs here) is inside every sample. That time is not
//! fixed: it grows with what the target's processes leave in the core's caches, so part of
//! what the hyper client reports as a target's added latency is the client slowing down.
//! This client leaves less of itself in the number. Both are reported side by side.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::client::NODE;
use crate::cpu::per_request;
use crate::upstream::FIXED_LEN;

/// `n` sequential GETs of `/fixed` (after `warmup`) on one keep-alive connection, on a
/// thread of its own (created by the caller's thread, so it inherits its CPU pinning):
/// each one's nanoseconds, and the thread's CPU time per request, warm-up included
/// (nanoseconds), as the hyper client returns them.
pub fn latency_on_own_thread(addr: SocketAddr, warmup: usize, n: usize) -> Result<(Vec<u64>, f64)> {
    std::thread::Builder::new()
        .name("raw-latency-client".into())
        .spawn(move || {
            let (samples, cpu) = per_request(warmup + n, || latency(addr, warmup, n));
            Ok((samples?, cpu))
        })
        .context("starting the raw latency client's thread")?
        .join()
        .map_err(|_| anyhow::anyhow!("the raw latency client's thread panicked"))?
}

fn latency(addr: SocketAddr, warmup: usize, n: usize) -> Result<Vec<u64>> {
    let mut conn = Conn::open(addr)?;
    let mut nanos = Vec::with_capacity(n);
    for i in 0..warmup + n {
        let t = Instant::now();
        conn.get_fixed()
            .with_context(|| format!("request {i} to {addr}"))?;
        if i >= warmup {
            nanos.push(t.elapsed().as_nanos() as u64);
        }
    }
    Ok(nanos)
}

/// Room for one response: the fixed one is about 1.1 KB.
const BUF: usize = 64 * 1024;

/// One keep-alive HTTP/1.1 connection and its read buffer (`len` bytes filled).
struct Conn {
    tcp: TcpStream,
    request: Vec<u8>,
    buf: Box<[u8]>,
    len: usize,
}

impl Conn {
    fn open(addr: SocketAddr) -> Result<Conn> {
        let tcp = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        tcp.set_nodelay(true)?;
        // A bound on a stuck target: the scenario fails instead of hanging.
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
        // The same head the hyper client sends.
        let request =
            format!("GET /fixed HTTP/1.1\r\nhost: bench.local\r\nx-node-id: {NODE}\r\n\r\n");
        Ok(Conn {
            tcp,
            request: request.into_bytes(),
            buf: vec![0; BUF].into_boxed_slice(),
            len: 0,
        })
    }

    /// Writes the request and reads one whole response; checks status and length.
    fn get_fixed(&mut self) -> Result<()> {
        self.tcp.write_all(&self.request)?;
        self.len = 0;
        let (head_len, body_len) = loop {
            self.fill()?;
            if let Some(parsed) = parse_head(&self.buf[..self.len])? {
                break parsed;
            }
        };
        if body_len != FIXED_LEN {
            bail!("unexpected body: {body_len} bytes");
        }
        while self.len < head_len + body_len {
            self.fill()?;
        }
        if self.len != head_len + body_len {
            bail!("bytes after the response: the target pipelined or over-answered");
        }
        Ok(())
    }

    /// One `read` into the buffer's free room.
    fn fill(&mut self) -> Result<()> {
        if self.len == self.buf.len() {
            bail!("a response larger than {BUF} bytes");
        }
        match self.tcp.read(&mut self.buf[self.len..]) {
            Ok(0) => bail!("connection closed mid-response"),
            Ok(n) => self.len += n,
            Err(e) => return Err(e).context("reading the response"),
        }
        Ok(())
    }
}

/// `Some((head length, content-length))` once the head is complete and says `200`.
fn parse_head(buf: &[u8]) -> Result<Option<(usize, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf).context("parsing the response head")? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    if resp.code != Some(200) {
        bail!("unexpected status {:?}", resp.code);
    }
    let len = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .context("no content-length in the response")?;
    let len: usize = std::str::from_utf8(len.value)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .context("a content-length that is not a number")?;
    Ok(Some((head_len, len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_parsed_once_complete() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 1024\r\ndate: x\r\n\r\n";
        assert_eq!(parse_head(&head[..20]).unwrap(), None);
        assert_eq!(parse_head(head).unwrap(), Some((head.len(), 1024)));
    }

    #[test]
    fn a_bad_head_is_an_error() {
        assert!(parse_head(b"HTTP/1.1 503 Busy\r\ncontent-length: 2\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
        assert!(parse_head(b"not http\r\n\r\n").is_err());
    }
}

#[cfg(test)]
mod against_a_server {
    use std::net::TcpListener;

    use super::*;

    /// A one-connection server on 127.0.0.1 that answers each request with `FIXED_LEN`
    /// bytes, its head and body in separate writes (as a proxy may deliver them).
    fn serve(responses: usize) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut tcp, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            for _ in 0..responses {
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = tcp.read(&mut buf).unwrap();
                    assert!(n > 0, "client closed early");
                    got.extend_from_slice(&buf[..n]);
                }
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {FIXED_LEN}\r\n\r\n");
                tcp.write_all(head.as_bytes()).unwrap();
                tcp.write_all(&vec![b'x'; FIXED_LEN]).unwrap();
            }
        });
        addr
    }

    #[test]
    fn sequential_requests_on_one_connection() {
        let (nanos, _) = latency_on_own_thread(serve(12), 2, 10).unwrap();
        assert_eq!(nanos.len(), 10);
        assert!(nanos.iter().all(|&n| n > 0));
    }
}
