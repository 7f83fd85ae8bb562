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
//!
//! A datagram goes out with no control message whenever it can: one datagram (no
//! segmentation offload), no source address to pick, and an ECN codepoint the socket's
//! own `IP_TOS` (or `IPV6_TCLASS`) option can give it. quinn-udp passes the codepoint as a
//! control message on every datagram, and the kernel parses it each time; worse, Linux's
//! `udp_sendmsg` treats a connected socket as unconnected for any datagram that carries
//! one, and looks the route up again.
//!
//! - An agent's socket is connected to its relay ([`connected_client_endpoint`]). Its
//!   datagrams go out through `send`, with neither an address nor a control message,
//!   over the route cached at `connect`. The option follows quinn's codepoint (it marks
//!   a path's packets alike, so it is set again only when ECN is switched on or off).
//!   The kernel also drops datagrams from anyone but the relay before they reach quinn.
//! - The relay's socket serves every agent, so its datagrams carry their address. The
//!   option is set once, from the first datagram; a datagram wanting another codepoint
//!   goes through quinn-udp, whose control message overrides the option.
//!
//! On loopback here (4 rounds of 100,000): a send and its receive took 3.1–3.2 µs
//! connected and without a control message, 3.4–3.8 µs with it; 3.4–3.5 µs with an
//! address and no control message, 3.5–3.6 µs with both.
//!
//! A socket connected to its peer or bound to one address does not ask the kernel for
//! each datagram's destination address (`IP_PKTINFO`): it is the socket's own. That is
//! one control message less on every receive (about 65 ns here), and quinn, not knowing
//! a local address to send from, leaves the source to the kernel, which takes the
//! bound one.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
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
    on_socket(std::net::UdpSocket::bind(bind)?, config, server)
}

/// A QUIC endpoint on `socket`, on [`TunnelRuntime`].
fn on_socket(
    socket: std::net::UdpSocket,
    config: quinn::EndpointConfig,
    server: Option<quinn::ServerConfig>,
) -> io::Result<quinn::Endpoint> {
    quinn::Endpoint::new(config, server, socket, Arc::new(TunnelRuntime))
}

/// A client-only [`endpoint`] on an unconnected socket, for connections to any number
/// of servers (the benchmark's fleet of agents).
pub fn client_endpoint(bind: SocketAddr) -> io::Result<quinn::Endpoint> {
    endpoint(bind, quinn::EndpointConfig::default(), None)
}

/// A client-only endpoint whose socket is connected to `peer`: how an agent dials its
/// relay. It talks to that one address only, for as long as it lives.
pub fn connected_client_endpoint(peer: SocketAddr) -> io::Result<quinn::Endpoint> {
    let any = match peer {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let socket = std::net::UdpSocket::bind(SocketAddr::new(any, 0))?;
    socket.connect(peer)?;
    on_socket(socket, quinn::EndpointConfig::default(), None)
}

/// A UDP socket registered with tokio for read readiness only.
#[derive(Debug)]
struct UdpSocket {
    io: AsyncFd<std::net::UdpSocket>,
    state: UdpSocketState,
    /// A send returned `WouldBlock` and no wait for writability has ended since.
    blocked: AtomicBool,
    /// The address the socket is connected to, if it is.
    peer: Option<SocketAddr>,
    /// An IPv6 socket, which takes IPv6 addresses only (IPv4 peers as IPv4-mapped).
    ipv6: bool,
    /// Datagrams go out without control messages when they can (see the module docs);
    /// cleared for good if the kernel rejects such a send (quinn-udp's path, with its own
    /// fallbacks, takes over).
    plain: AtomicBool,
    /// The ECN codepoint in the socket's `IP_TOS`/`IPV6_TCLASS` option, which marks the
    /// datagrams sent without control messages; [`TOS_UNSET`] until the first such send.
    tos: AtomicI32,
}

/// [`UdpSocket::tos`] before the option has been set.
const TOS_UNSET: i32 = -1;

impl UdpSocket {
    fn new(sock: std::net::UdpSocket) -> io::Result<UdpSocket> {
        // Sets the socket options quinn relies on (and non-blocking mode).
        let state = UdpSocketState::new((&sock).into())?;
        sock.set_nonblocking(true)?;
        let peer = sock.peer_addr().ok();
        let local = sock.local_addr()?;
        if peer.is_some() || !local.ip().is_unspecified() {
            skip_destination_addresses(sock.as_raw_fd(), local);
        }
        Ok(UdpSocket {
            io: register(sock, Interest::READABLE)?,
            state,
            blocked: AtomicBool::new(false),
            peer,
            ipv6: local.is_ipv6(),
            plain: AtomicBool::new(true),
            tos: AtomicI32::new(TOS_UNSET),
        })
    }

    /// Whether `transmit` can go out without control messages: one datagram (no
    /// segmentation offload) from whatever source address the kernel picks, to the
    /// connected peer or from an unconnected socket, with a codepoint the socket's
    /// option gives it. Sets the option when it may (see the module docs). IPv4 peers of
    /// an IPv6 socket stay with quinn-udp: the socket marks those from `IP_TOS`, not from
    /// the `IPV6_TCLASS` set here, and takes their addresses only in IPv4-mapped form.
    fn ready_for_plain(&self, transmit: &Transmit) -> bool {
        let ipv4_peer = match transmit.destination {
            SocketAddr::V4(_) => true,
            SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
        };
        if transmit.src_ip.is_some()
            || matches!(transmit.segment_size, Some(size) if size < transmit.contents.len())
            || (self.ipv6 && ipv4_peer)
            || !self.plain.load(Ordering::Relaxed)
        {
            return false;
        }
        let connected = match self.peer {
            Some(peer) if peer == transmit.destination => true,
            Some(_) => return false,
            None => false,
        };
        let ecn = transmit.ecn.map_or(0, |e| e as libc::c_int);
        let tos = self.tos.load(Ordering::Relaxed);
        if tos == ecn {
            return true;
        }
        if !connected && tos != TOS_UNSET {
            return false;
        }
        match set_tos(self.io.get_ref().as_raw_fd(), transmit.destination, ecn) {
            Ok(()) => {
                self.tos.store(ecn, Ordering::Relaxed);
                true
            }
            Err(_) => {
                self.plain.store(false, Ordering::Relaxed);
                false
            }
        }
    }

    fn send(&self, transmit: &Transmit) -> io::Result<()> {
        if self.ready_for_plain(transmit) {
            match self.send_plain(transmit) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
                // quinn-udp's answer to an MTU probe too large for the path: dropped.
                Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => return Ok(()),
                Err(e) => {
                    // An argument the kernel does not take: stop using this path. Other
                    // errors (an ICMP error reported late) consumed nothing but the
                    // error: quinn-udp resends and reports as it always does.
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL | libc::EIO | libc::EAFNOSUPPORT)
                    ) {
                        self.plain.store(false, Ordering::Relaxed);
                    }
                }
            }
        }
        self.state.send(self.io.get_ref().into(), transmit)
    }
}

impl UdpSocket {
    /// One datagram with no control message: `send` to the connected peer, `sendto`
    /// with its address otherwise. [`Self::ready_for_plain`] has said it may.
    fn send_plain(&self, transmit: &Transmit) -> io::Result<()> {
        let fd = self.io.get_ref().as_raw_fd();
        let (buf, len) = (transmit.contents.as_ptr().cast(), transmit.contents.len());
        let to = self
            .peer
            .is_none()
            .then(|| SockAddr::from(transmit.destination));
        loop {
            // SAFETY: the pointers and lengths describe the transmit's contents and `to`,
            // which outlive the call; `send` and `sendto` only read them.
            let sent = unsafe {
                match &to {
                    None => libc::send(fd, buf, len, 0),
                    Some(to) => libc::sendto(fd, buf, len, 0, to.as_ptr(), to.len),
                }
            };
            if sent >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// A socket address as the kernel takes it.
struct SockAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl SockAddr {
    fn as_ptr(&self) -> *const libc::sockaddr {
        std::ptr::from_ref(&self.storage).cast()
    }
}

impl From<SocketAddr> for SockAddr {
    fn from(addr: SocketAddr) -> SockAddr {
        // SAFETY: all-zero bytes are a valid `sockaddr_storage`.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: `sockaddr_storage` is larger than, and aligned for, `sockaddr_in`.
                unsafe { std::ptr::write(std::ptr::from_mut(&mut storage).cast(), sin) };
                std::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: `sockaddr_storage` is larger than, and aligned for, `sockaddr_in6`.
                unsafe { std::ptr::write(std::ptr::from_mut(&mut storage).cast(), sin6) };
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        SockAddr {
            storage,
            len: len as libc::socklen_t,
        }
    }
}

/// Stops the kernel from attaching each datagram's destination address (`IP_PKTINFO`,
/// `IPV6_RECVPKTINFO`, which quinn-udp switches on) to what the socket receives: for a
/// connected or bound-to-one-address socket it is always the socket's own. Best effort:
/// a kernel that refuses keeps sending it, as before.
fn skip_destination_addresses(fd: RawFd, local: SocketAddr) {
    let _ = set_int_option(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, 0);
    if local.is_ipv6() {
        let _ = set_int_option(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 0);
    }
}

/// Sets the traffic class that marks every datagram the socket sends without a control
/// message: `IP_TOS` for IPv4, `IPV6_TCLASS` for IPv6 (the ECN bits, DSCP zero, as
/// quinn-udp's control message has it).
fn set_tos(fd: RawFd, peer: SocketAddr, value: libc::c_int) -> io::Result<()> {
    match peer {
        SocketAddr::V4(_) => set_int_option(fd, libc::IPPROTO_IP, libc::IP_TOS, value),
        SocketAddr::V6(_) => set_int_option(fd, libc::IPPROTO_IPV6, libc::IPV6_TCLASS, value),
    }
}

/// `setsockopt` for an option whose value is a C `int`.
fn set_int_option(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value is a live `c_int` and its size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
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
        let sent = self.send(transmit);
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
                // A connected socket reports an ICMP "port unreachable" from its peer as
                // this error on the next read. Like quinn with ECONNRESET, ignore it:
                // anyone can forge one, and QUIC's timeouts decide when the peer is gone.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
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
    use quinn::udp::EcnCodepoint;
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

    /// The next datagram `s` receives, with what quinn-udp read about it.
    async fn recv_one(s: &UdpSocket) -> (Vec<u8>, RecvMeta) {
        let mut bufs = vec![vec![0u8; 2048]; BATCH_SIZE];
        let mut meta = vec![RecvMeta::default(); BATCH_SIZE];
        let mut iovs: Vec<IoSliceMut> = bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let n = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            std::future::poll_fn(|cx| s.poll_recv(cx, &mut iovs, &mut meta)),
        )
        .await
        .expect("the datagram arrives")
        .unwrap();
        assert_eq!(n, 1, "one datagram");
        (iovs[0][..meta[0].len].to_vec(), meta[0])
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

    /// Sends `payload` to `to` with codepoint `ecn`, checks that it took the plain path
    /// or not as `plain` says, and that `peer` got the payload with the codepoint; returns
    /// what else `peer` learned of it.
    async fn send_checked(
        from: &UdpSocket,
        peer: &UdpSocket,
        to: SocketAddr,
        ecn: Option<EcnCodepoint>,
        payload: &[u8],
        plain: bool,
    ) -> RecvMeta {
        let t = Transmit {
            ecn,
            ..transmit(to, payload)
        };
        assert_eq!(
            from.ready_for_plain(&t),
            plain,
            "plain path, {ecn:?} to {to}"
        );
        from.try_send(&t).unwrap();
        let (got, meta) = recv_one(peer).await;
        assert_eq!(got, payload);
        assert_eq!(meta.ecn, ecn, "codepoint on arrival, {ecn:?} to {to}");
        meta
    }

    fn connected_to(peer: SocketAddr) -> Arc<UdpSocket> {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.connect(peer).unwrap();
        Arc::new(UdpSocket::new(sock).unwrap())
    }

    /// Datagrams to the connected peer go out without an address and carry their ECN
    /// codepoint; the peer's replies come back, and a stranger's datagrams do not.
    #[tokio::test(flavor = "current_thread")]
    async fn a_connected_socket_talks_to_its_peer_only() {
        let peer = bound();
        let a = connected_to(peer.local_addr().unwrap());
        let a_addr = a.local_addr().unwrap();
        let mut bufs = vec![vec![0u8; 2048]; BATCH_SIZE];
        let wait = std::time::Duration::from_secs(5);
        // Every change of codepoint, both ways: each is the socket's option, set anew.
        let codepoints = [
            None,
            Some(EcnCodepoint::Ect0),
            Some(EcnCodepoint::Ect0),
            Some(EcnCodepoint::Ect1),
            None,
            Some(EcnCodepoint::Ce),
        ];
        for ecn in codepoints {
            let to = peer.local_addr().unwrap();
            let meta = send_checked(&a, &peer, to, ecn, b"ping", true).await;
            assert_eq!(meta.addr, a_addr);
        }
        assert!(a.plain.load(Ordering::Relaxed), "no send fell back");

        let stranger = bound();
        stranger.try_send(&transmit(a_addr, b"stranger")).unwrap();
        peer.try_send(&transmit(a_addr, b"pong")).unwrap();
        let got = tokio::time::timeout(wait, recv(&a, &mut bufs))
            .await
            .expect("the peer's datagram arrives");
        assert_eq!(got, vec![b"pong".to_vec()]);
    }

    /// An unconnected socket sends plain datagrams with their address. The first one's
    /// codepoint becomes the socket's option; one wanting another codepoint goes through
    /// quinn-udp, whose control message overrides the option, and the next plain one is
    /// marked by the option again. A socket bound to one address gets no destination
    /// address with what it receives.
    #[tokio::test(flavor = "current_thread")]
    async fn an_unconnected_socket_sends_plain_datagrams_with_their_codepoints() {
        let (a, b) = (bound(), bound());
        let to = b.local_addr().unwrap();
        let plain_or_not = [
            (Some(EcnCodepoint::Ect0), true),
            (None, false),
            (Some(EcnCodepoint::Ect1), false),
            (Some(EcnCodepoint::Ect0), true),
        ];
        for (i, (ecn, plain)) in plain_or_not.into_iter().enumerate() {
            let meta = send_checked(&a, &b, to, ecn, &[i as u8; 32], plain).await;
            assert_eq!(meta.addr, a.local_addr().unwrap());
            assert_eq!(
                meta.dst_ip, None,
                "no destination address for a bound socket"
            );
        }
        assert!(
            a.plain.load(Ordering::Relaxed),
            "no send fell back for good"
        );
    }

    /// A dual-stack IPv6 socket sends plain datagrams to IPv6 peers, their codepoint in
    /// `IPV6_TCLASS`, and leaves IPv4 peers (IPv4-mapped) to quinn-udp; every codepoint
    /// arrives. Skipped where the machine has no IPv6 loopback.
    #[tokio::test(flavor = "current_thread")]
    async fn an_ipv6_socket_sends_plain_to_ipv6_peers_only() {
        let (Ok(any6), Ok(lo6)) = (
            std::net::UdpSocket::bind("[::]:0"),
            std::net::UdpSocket::bind("[::1]:0"),
        ) else {
            eprintln!("skipped: no IPv6 loopback on this machine");
            return;
        };
        let a = Arc::new(UdpSocket::new(any6).unwrap());
        let b6 = Arc::new(UdpSocket::new(lo6).unwrap());
        let b4 = bound();
        let to6 = b6.local_addr().unwrap();
        let to4 = SocketAddr::new(
            IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()),
            b4.local_addr().unwrap().port(),
        );
        let sends = [
            (to6, &b6, Some(EcnCodepoint::Ect0), true),
            (to4, &b4, Some(EcnCodepoint::Ect1), false),
            (to6, &b6, Some(EcnCodepoint::Ect0), true),
        ];
        for (i, (to, peer, ecn, plain)) in sends.into_iter().enumerate() {
            send_checked(&a, peer, to, ecn, &[i as u8; 16], plain).await;
        }
        assert!(
            a.plain.load(Ordering::Relaxed),
            "no send fell back for good"
        );
    }

    /// The ICMP "port unreachable" a connected socket gets while its peer is gone comes
    /// back as an error on the next read. That is no error for quinn's receive loop
    /// (which would end the endpoint): the read goes on to the next datagram.
    #[tokio::test(flavor = "current_thread")]
    async fn an_unreachable_peer_is_no_receive_error() {
        let gone = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = gone.local_addr().unwrap();
        drop(gone);
        let a = connected_to(to);
        let a_addr = a.local_addr().unwrap();
        let mut bufs = vec![vec![0u8; 2048]; BATCH_SIZE];
        a.try_send(&transmit(to, b"anyone?")).unwrap();
        // On loopback the ICMP error is back before the send returns; allow some slack.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        // The peer is back on its port and answers; the read skips the error.
        let back = std::net::UdpSocket::bind(to).unwrap();
        back.send_to(b"back", a_addr).unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), recv(&a, &mut bufs))
            .await
            .expect("the datagram after the error arrives");
        assert_eq!(got, vec![b"back".to_vec()]);
    }
}
