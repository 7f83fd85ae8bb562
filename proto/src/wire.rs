//! Wire settings: ALPN, QUIC transport parameters and application close codes.
//!
//! Both sides build their QUIC transport config from [`transport_config`] so that
//! keep-alive, idle timeout and flow-control windows never disagree.

use std::sync::Arc;
use std::time::Duration;

use crate::congestion::Congestion;

/// ALPN of the tunnel: HTTP/3 with reversed roles (agent = QUIC client + HTTP/3 server).
pub const ALPN_TUNNEL: &[u8] = b"tether-h3/1";

/// A connection silent for this long is dead. This bounds how long a request to an agent
/// that vanished without a word (power loss, SIGKILL, cable) can stall before it fails.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Keep-alive well inside [`IDLE_TIMEOUT`] so NAT bindings and the relay's view stay
/// fresh, and so an agent meets a restarted relay's stateless reset within seconds.
pub const KEEP_ALIVE: Duration = Duration::from_secs(2);

/// Concurrent request streams the agent lets the relay open on one connection. The relay
/// multiplexes every request for the node onto a few connections, so this is large.
pub const MAX_CONCURRENT_REQUESTS: u32 = 4096;

/// Per-stream receive window. Large enough for ≥2 Gbit/s at loopback RTTs.
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// Connection receive window: several streams at full speed.
const CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;

/// QUIC application close codes used by Tether (HTTP/3's own are 0x100..0x110).
pub mod close {
    /// Orderly close: the peer is shutting down or draining.
    pub const SHUTDOWN: u32 = 0x5400;
    /// The relay refused the identity after the handshake (for example, revoked).
    pub const REFUSED: u32 = 0x5401;
}

/// Which end of the tunnel a transport config is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Relay,
    Agent,
}

/// The QUIC transport settings for one side of the tunnel; `congestion` paces what this
/// side sends.
pub fn transport_config(side: Side, congestion: Congestion) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        IDLE_TIMEOUT.try_into().expect("idle timeout fits a VarInt"),
    ))
    .keep_alive_interval(Some(KEEP_ALIVE))
    .stream_receive_window(STREAM_WINDOW.into())
    .receive_window(CONNECTION_WINDOW.into())
    .send_window(CONNECTION_WINDOW as u64)
    .congestion_controller_factory(congestion.factory());
    match side {
        // The agent accepts the relay's request streams and the relay's h3 control
        // streams (control, QPACK encoder/decoder).
        Side::Agent => {
            t.max_concurrent_bidi_streams(MAX_CONCURRENT_REQUESTS.into())
                .max_concurrent_uni_streams(8u32.into());
        }
        // The agent must never open a bidirectional stream: the h3 client treats one as
        // H3_STREAM_CREATION_ERROR. Uni streams carry the agent's h3 control streams.
        Side::Relay => {
            t.max_concurrent_bidi_streams(0u32.into())
                .max_concurrent_uni_streams(8u32.into());
        }
    }
    Arc::new(t)
}
