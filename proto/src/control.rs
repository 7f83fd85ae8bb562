//! The control stream: Tether's own signalling on a tunnel connection.
//!
//! HTTP/3's GOAWAY cannot be used with reversed roles (see the design notes), so each
//! tunnel carries one long-lived request that the relay opens first, at
//! [`CONTROL_PATH`]. Both bodies stay open: the relay writes [`Event`]s into its request
//! body, the agent into its response body, one per line.
//!
//! Drain, agent side: the agent sends `drain`; the relay stops picking that connection,
//! waits until its streams in flight are done, and answers `drained`; the agent then
//! closes the connection. Drain, relay side: the relay sends `drain` to every agent
//! before it shuts down.

/// Path of the control request (never routed to a local service).
pub const CONTROL_PATH: &str = "/.well-known/tether/control";

/// One control message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The sender is going away: stop sending it new requests.
    Drain,
    /// (relay → agent) No request is in flight on this connection any more, and no new
    /// one will be sent: it can be closed.
    Drained,
}

impl Event {
    pub fn as_line(self) -> &'static [u8] {
        match self {
            Event::Drain => b"drain\n",
            Event::Drained => b"drained\n",
        }
    }

    fn parse(line: &[u8]) -> Option<Event> {
        match line {
            b"drain" => Some(Event::Drain),
            b"drained" => Some(Event::Drained),
            _ => None,
        }
    }
}

/// Splits a byte stream into events; unknown lines are skipped (newer peers may add
/// events), and a partial line waits for the next chunk.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// Longest line kept; anything longer is garbage and dropped.
    const MAX_LINE: usize = 256;

    pub fn push(&mut self, chunk: &[u8], mut on_event: impl FnMut(Event)) {
        for &b in chunk {
            if b == b'\n' {
                if let Some(e) = Event::parse(&self.buf) {
                    on_event(e);
                }
                self.buf.clear();
            } else if self.buf.len() < Self::MAX_LINE {
                self.buf.push(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_survive_any_chunking_and_unknown_lines_are_skipped() {
        let wire = [
            Event::Drain.as_line(),
            b"future-thing\n",
            Event::Drained.as_line(),
        ]
        .concat();
        for split in 0..wire.len() {
            let mut d = Decoder::default();
            let mut got = Vec::new();
            d.push(&wire[..split], |e| got.push(e));
            d.push(&wire[split..], |e| got.push(e));
            assert_eq!(got, vec![Event::Drain, Event::Drained], "split at {split}");
        }
    }
}
