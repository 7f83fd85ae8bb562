//! The agent's end of a tunnel's control stream (see `tether_proto::control`).
//!
//! The relay opens the stream as a request to `CONTROL_PATH`; the agent answers 200 and
//! keeps both bodies open. On shutdown the agent says `drain` here and closes the
//! connection only after the relay answers `drained` (no request in flight, none to
//! come), so a drained agent fails no request.

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Buf, Bytes};
use h3::server::RequestStream;
use http::Response;
use tether_proto::control::{Decoder, Event};
use tokio::sync::Notify;
use tracing::{debug, info, Instrument, Span};

/// Per-connection state shared by the connection's slot and its control stream.
pub struct ConnControl {
    drain: Notify,
    drained: Notify,
    relay_draining: AtomicBool,
    /// The connection's `tunnel` span. Request tasks do not run inside it (entering it
    /// on every poll cost more than the rest of their logging), so the control stream,
    /// whose lines are about the tunnel, enters it itself.
    span: Span,
}

impl ConnControl {
    /// State for a connection served inside `span`.
    pub fn new(span: Span) -> Self {
        ConnControl {
            drain: Notify::new(),
            drained: Notify::new(),
            relay_draining: AtomicBool::new(false),
            span,
        }
    }

    /// Asks the relay to stop sending requests on this connection.
    pub fn request_drain(&self) {
        self.drain.notify_one();
    }

    /// Resolves once the relay confirms that the connection is drained.
    pub async fn drained(&self) {
        self.drained.notified().await
    }

    pub fn relay_is_draining(&self) -> bool {
        self.relay_draining.load(Ordering::Relaxed)
    }

    /// Serves the control stream until it or the connection ends.
    pub async fn serve(&self, stream: RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>) {
        let (mut send, mut recv) = stream.split();
        let result = async {
            send.send_response(Response::new(())).await?;
            let mut decoder = Decoder::default();
            loop {
                tokio::select! {
                    data = recv.recv_data() => {
                        let Some(mut chunk) = data? else { return Ok(()) };
                        let bytes = chunk.copy_to_bytes(chunk.remaining());
                        decoder.push(&bytes, |event| match event {
                            Event::Drain => {
                                self.relay_draining.store(true, Ordering::Relaxed);
                                info!("relay is draining; this connection will close");
                            }
                            Event::Drained => self.drained.notify_one(),
                        });
                    }
                    _ = self.drain.notified() => {
                        send.send_data(Bytes::from_static(Event::Drain.as_line())).await?;
                    }
                }
            }
        };
        async {
            if let Err(e) = result.await {
                let e: h3::error::StreamError = e;
                debug!(error = %e, "control stream ended");
            }
        }
        .instrument(self.span.clone())
        .await
    }
}
