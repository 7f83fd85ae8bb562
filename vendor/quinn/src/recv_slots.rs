//! Tether patch (see vendor/README.md at the repository root): how many receive slots the
//! endpoint offers the socket on its next read.
//!
//! Upstream prepared all [`BATCH_SIZE`] slots (an `IoSliceMut`, a `RecvMeta` and, in
//! quinn-udp, a `msghdr`) before every `recvmmsg`, about 1.3k instructions, though a
//! tunnel carrying one request at a time receives one datagram per read. The count now
//! follows what the socket delivered: twice the last batch, at least [`MIN_SLOTS`], and
//! doubling at once when a read fills every slot offered (the socket may hold more, and
//! the endpoint reads again straight away), so a burst gets all of them within a few
//! reads.

use crate::udp::BATCH_SIZE;

/// Fewest slots offered: a read that finds two or three datagrams still takes them in
/// one system call.
pub(crate) const MIN_SLOTS: usize = 4;

/// The slot count for the next read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecvSlots {
    next: usize,
}

impl RecvSlots {
    pub(crate) fn new() -> Self {
        Self { next: BATCH_SIZE }
    }

    /// Slots to offer on the next read, between [`MIN_SLOTS`] and [`BATCH_SIZE`].
    pub(crate) fn next(&self) -> usize {
        self.next
    }

    /// Records that a read offered `offered` slots and `got` were filled.
    pub(crate) fn record(&mut self, got: usize, offered: usize) {
        let want = if got >= offered { offered * 2 } else { got * 2 };
        self.next = want.clamp(MIN_SLOTS.min(BATCH_SIZE), BATCH_SIZE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_with_every_slot() {
        assert_eq!(RecvSlots::new().next(), BATCH_SIZE);
    }

    #[test]
    fn single_datagrams_shrink_it_to_the_minimum() {
        let mut s = RecvSlots::new();
        s.record(1, s.next());
        assert_eq!(s.next(), MIN_SLOTS);
        s.record(1, s.next());
        assert_eq!(s.next(), MIN_SLOTS);
        s.record(0, s.next());
        assert_eq!(s.next(), MIN_SLOTS);
    }

    #[test]
    fn a_full_read_doubles_it_up_to_the_batch_size() {
        let mut s = RecvSlots::new();
        s.record(1, s.next());
        let mut seen = vec![s.next()];
        for _ in 0..10 {
            let offered = s.next();
            s.record(offered, offered);
            seen.push(s.next());
        }
        assert!(seen.windows(2).all(|w| w[1] == (w[0] * 2).min(BATCH_SIZE)));
        assert_eq!(s.next(), BATCH_SIZE);
        s.record(BATCH_SIZE, BATCH_SIZE);
        assert_eq!(s.next(), BATCH_SIZE);
    }

    #[test]
    fn a_partial_read_offers_twice_what_came() {
        let mut s = RecvSlots::new();
        s.record(5, BATCH_SIZE);
        assert_eq!(s.next(), 10.min(BATCH_SIZE));
        s.record(3, s.next());
        assert_eq!(s.next(), 6.min(BATCH_SIZE).max(MIN_SLOTS));
    }
}
