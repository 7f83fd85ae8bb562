//! Dialling the relay: resolve its address afresh (it may move), connect a UDP socket of
//! the same family to it, and start the QUIC handshake. Used by tunnels and by enrollment.

use anyhow::{anyhow, Context, Result};
use tether_proto::udp_socket::connected_client_endpoint;

/// Starts a QUIC connection to `relay` (`host:port`). The endpoint must outlive the
/// connection, so both are returned.
pub async fn dial(
    relay: &str,
    server_name: &str,
    client: quinn::ClientConfig,
) -> Result<(quinn::Endpoint, quinn::Connecting)> {
    let addr = tokio::net::lookup_host(relay)
        .await
        .with_context(|| format!("resolving relay {relay}"))?
        .next()
        .ok_or_else(|| anyhow!("relay {relay} resolves to no address"))?;
    let endpoint = connected_client_endpoint(addr)
        .with_context(|| format!("opening a QUIC endpoint towards {addr}"))?;
    let connecting = endpoint
        .connect_with(client, addr, server_name)
        .with_context(|| format!("connecting to {addr}"))?;
    Ok((endpoint, connecting))
}
