//! The tunnel's UDP socket on tokio: quinn's own tokio socket, minus two system calls per
//! datagram each way.
//!
//! quinn's tokio wrapper registers the socket for read *and* write readiness. A UDP socket
//! reports "writable" each time the kernel frees a datagram it sent, so under
//! edge-triggered epoll every send costs the runtime one more `epoll_wait` that wakes
//! nothing. And it reads until `EAGAIN`, so every wake-up also costs an empty `recvmmsg`.
//! At one request at a time that is four wasted system calls per request across the relay
//! and the agent, on the path a caller waits for.
//!
//! Here the socket is registered for reads only. quinn asks whether the socket is
//! writable before every send; the answer is yes until a send has returned `WouldBlock`
//! (a full send buffer: never on loopback, rare elsewhere). Only then does a sender wait,
//! on a duplicate of the descriptor registered for writes for as long as that one wait
//! lasts. A read that returns fewer datagrams than it asked for has emptied the queue, so
//! the read readiness is cleared there and then: under edge-triggered epoll a datagram
//! that arrives later raises a new edge, and tokio's readiness ticks keep an edge seen
//! meanwhile from being cleared.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use quinn::udp::{RecvMeta, Transmit, UdpSocketState, BATCH_SIZE};
use quinn::{AsyncTimer, AsyncUdpSocket, Runtime, TokioRuntime, UdpPoller};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// quinn's tokio runtime with [`UdpSocket`] for its sockets; timers and tasks are
/// tokio's, as in [`TokioRuntime`].
#[derive(Debug)]
pub struct TunnelRuntime;

impl Runtime for TunnelRuntime {
    fn new_timer(&self, t: Instant) -> Pin<Box<dyn AsyncTimer>> {
        TokioRuntime.new_timer(t)
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        TokioRuntime.spawn(future)
    }

    fn wrap_udp_socket(&self, sock: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        Ok(Arc::new(UdpSocket::new(sock)?))
    }

    fn now(&self) -> Instant {
        TokioRuntime.now()
    }
}

/// A QUIC endpoint on a UDP socket bound to `bind`, on [`TunnelRuntime`]: how the relay
/// listens for agents (`server` set).
pub fn endpoint(
    bind: SocketAddr,
    config: quinn::EndpointConfig,
    server: Option<quinn::ServerConfig>,
) -> io::Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind(bind)?;
    quinn::Endpoint::new(config, server, socket, Arc::new(TunnelRuntime))
}

/// A client-only [`endpoint`]: how agents dial the relay.
pub fn client_endpoint(bind: SocketAddr) -> io::Result<quinn::Endpoint> {
    endpoint(bind, quinn::EndpointConfig::default(), None)
}

/// A UDP socket registered with tokio for read readiness only.
#[derive(Debug)]
struct UdpSocket {
    io: AsyncFd<std::net::UdpSocket>,
    state: UdpSocketState,
    /// A send returned `WouldBlock` and no wait for writability has ended since.
    blocked: AtomicBool,
}

impl UdpSocket {
    fn new(sock: std::net::UdpSocket) -> io::Result<UdpSocket> {
        // Sets the socket options quinn relies on (and non-blocking mode).
        let state = UdpSocketState::new((&sock).into())?;
        sock.set_nonblocking(true)?;
        Ok(UdpSocket {
            io: register(sock, Interest::READABLE)?,
            state,
            blocked: AtomicBool::new(false),
        })
    }
}

impl AsyncUdpSocket for UdpSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Writable {
            socket: self,
            wait: None,
        })
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let sent = self.state.send(self.io.get_ref().into(), transmit);
        if matches!(&sent, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            self.blocked.store(true, Ordering::Relaxed);
        }
        sent
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let asked = bufs.len().min(BATCH_SIZE);
        loop {
            let mut guard = ready!(self.io.poll_read_ready(cx))?;
            match self.state.recv(self.io.get_ref().into(), bufs, meta) {
                Ok(n) => {
                    if n < asked {
                        guard.clear_ready();
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.get_ref().local_addr()
    }

    fn may_fragment(&self) -> bool {
        self.state.may_fragment()
    }

    fn max_transmit_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.state.gro_segments()
    }
}

fn register(
    sock: std::net::UdpSocket,
    interest: Interest,
) -> io::Result<AsyncFd<std::net::UdpSocket>> {
    // SAFETY: a std UdpSocket owns its descriptor and always reports that same one; the
    // AsyncFd owns the socket, so the descriptor stays open while it is registered.
    Ok(unsafe { AsyncFd::register_with_interest(sock, interest) }?)
}

type WaitWritable = Pin<Box<dyn Future<Output = io::Result<()>> + Send + Sync>>;

/// Answers quinn's "writable?" before each send: at once, unless a send has found the
/// buffer full. Then it waits for the socket to take datagrams again, on a duplicate
/// descriptor registered for write readiness during the wait only. Registering reports
/// the current state, so space freed before the wait began is not missed.
struct Writable {
    socket: Arc<UdpSocket>,
    wait: Option<WaitWritable>,
}

impl fmt::Debug for Writable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writable")
            .field("waiting", &self.wait.is_some())
            .finish()
    }
}

impl UdpPoller for Writable {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.wait.is_none() {
            if !this.socket.blocked.load(Ordering::Relaxed) {
                return Poll::Ready(Ok(()));
            }
            let dup = this.socket.io.get_ref().try_clone()?;
            this.wait = Some(Box::pin(async move {
                let fd = register(dup, Interest::WRITABLE)?;
                fd.writable().await?.retain_ready();
                Ok(())
            }));
        }
        let wait = this.wait.as_mut().expect("set above");
        let result = ready!(wait.as_mut().poll(cx));
        this.wait = None;
        this.socket.blocked.store(false, Ordering::Relaxed);
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::IoSliceMut;

    fn bound() -> Arc<UdpSocket> {
        Arc::new(UdpSocket::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap())
    }

    async fn recv(s: &UdpSocket, bufs: &mut [Vec<u8>]) -> Vec<Vec<u8>> {
        let mut meta = vec![RecvMeta::default(); bufs.len()];
        let mut iovs: Vec<IoSliceMut> = bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let n = std::future::poll_fn(|cx| s.poll_recv(cx, &mut iovs, &mut meta))
            .await
            .unwrap();
        (0..n).map(|i| iovs[i][..meta[i].len].to_vec()).collect()
    }

    fn transmit(to: SocketAddr, data: &[u8]) -> Transmit<'_> {
        Transmit {
            destination: to,
            ecn: None,
            contents: data,
            segment_size: None,
            src_ip: None,
        }
    }

    /// A short read clears readiness, and a datagram sent afterwards still wakes the
    /// reader: the edge-triggered contract this socket relies on.
    #[tokio::test(flavor = "current_thread")]
    async fn datagrams_after_a_draining_read_still_wake_the_reader() {
        let (a, b) = (bound(), bound());
        let to = b.local_addr().unwrap();
        let mut bufs = vec![vec![0u8; 2048]; BATCH_SIZE];
        for round in 0..50u8 {
            a.try_send(&transmit(to, &[round; 100])).unwrap();
            let got = tokio::time::timeout(std::time::Duration::from_secs(5), recv(&b, &mut bufs))
                .await
                .expect("the datagram wakes the reader");
            assert_eq!(got, vec![vec![round; 100]]);
        }
        // Several queued at once come back in one read, in order.
        for i in 0..3u8 {
            a.try_send(&transmit(to, &[i; 10])).unwrap();
        }
        let mut got = Vec::new();
        while got.len() < 3 {
            got.extend(recv(&b, &mut bufs).await);
        }
        assert_eq!(got, vec![vec![0; 10], vec![1; 10], vec![2; 10]]);
    }

    /// quinn's check before each send answers at once while no send has blocked. After
    /// one has, the wait goes through the duplicate descriptor registered for writes,
    /// whose registration reports the free socket as writable, and ends the blocked state.
    #[tokio::test(flavor = "current_thread")]
    async fn writable_waits_only_after_a_blocked_send() {
        let s = bound();
        let mut poller = s.clone().create_io_poller();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(matches!(
            poller.as_mut().poll_writable(&mut cx),
            Poll::Ready(Ok(()))
        ));
        for _ in 0..3 {
            s.blocked.store(true, Ordering::Relaxed);
            tokio::time::timeout(
                std::time::Duration::from_secs(5),
                std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx)),
            )
            .await
            .expect("a free socket is reported writable")
            .unwrap();
            assert!(!s.blocked.load(Ordering::Relaxed));
        }
    }
}
