//! Reconnect delays: exponential with jitter, so a relay restart is not met by every
//! agent at the same instant.

use std::time::Duration;

/// First retry waits at most this long.
pub const FIRST: Duration = Duration::from_secs(1);
/// No retry waits longer than this.
pub const CAP: Duration = Duration::from_secs(30);
/// After the relay refused our identity, wait at least this long: retrying fast cannot
/// help and only fills the relay's logs.
pub const AFTER_REFUSAL: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// The next delay: the nominal delay doubles per attempt up to [`CAP`]; the actual
    /// delay is uniformly random in its upper half ("equal jitter").
    pub fn next_delay(&mut self) -> Duration {
        let nominal = FIRST.saturating_mul(1u32 << self.attempt.min(16)).min(CAP);
        self.attempt = self.attempt.saturating_add(1);
        let half = nominal / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    /// Like [`Backoff::next_delay`] but never below [`AFTER_REFUSAL`].
    pub fn next_after_refusal(&mut self) -> Duration {
        self.next_delay().max(AFTER_REFUSAL)
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_from_at_most_a_second_to_the_cap() {
        for _ in 0..100 {
            let mut b = Backoff::default();
            let first = b.next_delay();
            assert!(first <= FIRST && first >= FIRST / 2, "{first:?}");
            let second = b.next_delay();
            assert!(second <= 2 * FIRST && second >= FIRST);
            for _ in 0..20 {
                assert!(b.next_delay() <= CAP);
            }
            assert!(b.next_delay() >= CAP / 2);
            b.reset();
            assert!(b.next_delay() <= FIRST);
            assert!(b.next_after_refusal() >= AFTER_REFUSAL);
        }
    }
}
