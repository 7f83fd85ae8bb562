//! A peer may split an HTTP/3 frame header across QUIC packets, and h3 must wait for the
//! rest. Tether's vendored h3 once read a varint from past the last buffered byte when a
//! frame's type had arrived without its length: the relay panicked on a download whose
//! packets happened to break there (`vendor/README.md`, sixth patch).
//!
//! The peer here is raw QUIC, so the test decides where the packets break: it writes a
//! request's HEADERS frame in three pieces (type, length, field section) with a pause
//! after each, and h3 on the other end must serve the request whole.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

fn configs() -> (quinn::ServerConfig, quinn::ClientConfig) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let provider = tether_proto::tls::provider();
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    server.alpn_protocols = vec![b"h3".to_vec()];
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"h3".to_vec()];
    (
        quinn::ServerConfig::with_crypto(Arc::new(
            quinn::crypto::rustls::QuicServerConfig::try_from(server).unwrap(),
        )),
        quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(client).unwrap(),
        )),
    )
}

#[tokio::test]
async fn a_frame_header_split_across_packets_is_waited_for() {
    let (server_config, client_config) = configs();
    let server = quinn::Endpoint::server(server_config, (Ipv4Addr::LOCALHOST, 0).into()).unwrap();
    let addr = server.local_addr().unwrap();
    let mut client = quinn::Endpoint::client((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
    client.set_default_client_config(client_config);

    let serving = tokio::spawn(async move {
        let conn = server.accept().await.unwrap().await.unwrap();
        let mut h3 = h3::server::builder()
            .build::<_, Bytes>(h3_quinn::Connection::new(conn))
            .await
            .unwrap();
        let resolver = h3.accept().await.unwrap().unwrap();
        let (req, mut stream) = resolver.resolve_request().await.unwrap();
        stream.send_response(http::Response::new(())).await.unwrap();
        stream.finish().await.unwrap();
        // Keep the connection until the client has read the response.
        tokio::time::sleep(Duration::from_millis(500)).await;
        (req.method().clone(), req.uri().to_string())
    });

    let conn = client.connect(addr, "localhost").unwrap().await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    // QPACK field section (RFC 9204): no dynamic table (0x00 0x00), then static-table
    // lines `:method GET` (17), `:scheme http` (22), `:path /` (1), and `:authority` (0)
    // with the literal value "a".
    let section = [0x00, 0x00, 0xc0 | 17, 0xc0 | 22, 0xc0 | 1, 0x50, 0x01, b'a'];
    let pieces: [&[u8]; 3] = [&[0x01], &[section.len() as u8], &section];
    for piece in pieces {
        send.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    send.finish().unwrap();

    let (method, uri) = tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("the request was never served")
        .expect("the HTTP/3 server failed (panicked) on the split frame header");
    assert_eq!(method, http::Method::GET);
    assert_eq!(uri, "http://a/");
    // The response's HEADERS frame (type 0x01) comes back on the stream.
    let response = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1024))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.first(), Some(&0x01), "{response:?}");
}
