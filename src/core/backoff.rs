//! The reconnect backoff: exponential with full jitter, decided here so the trace
//! records every delay and replay checks it (time and chance are inputs: the seed is
//! boot data the runtime draws once and the trace header records).
//!
//! Attempt `n` (1 = the first retry after a loss) waits a uniform draw from
//! `[0, min(cap, base · 2^(n-1))]` milliseconds. The attempt count is reset only once
//! a session has proven healthy (Active, and one heartbeat acknowledged), so a failure
//! that strikes right after every handshake still backs off to the cap.

use serde::{Deserialize, Serialize};

/// The operator's bounds on the reconnect delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackoffPolicy {
    /// The ceiling of the first retry's delay.
    pub base_ms: u64,
    /// No delay is ever longer.
    pub cap_ms: u64,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            base_ms: 500,
            cap_ms: 60_000,
        }
    }
}

impl BackoffPolicy {
    /// The longest delay attempt `attempt` may draw: `min(cap, base · 2^(attempt-1))`.
    pub fn ceiling_ms(&self, attempt: u32) -> u64 {
        let doublings = attempt.saturating_sub(1).min(62);
        self.base_ms
            .saturating_mul(1u64 << doublings)
            .min(self.cap_ms)
    }
}

/// The jitter source: SplitMix64 over a seed from the boot data.
///
/// Written out rather than taken from a crate: the core takes no dependency that could
/// reach the OS generator, and replay needs this exact sequence to stay the same
/// across dependency upgrades; six lines are easier to pin than a crate version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jitter {
    state: u64,
}

impl Jitter {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform draw from `0..=max` (multiply-shift: no modulo bias worth the name).
    pub fn up_to(&mut self, max: u64) -> u64 {
        let span = u128::from(max) + 1;
        let scaled = (u128::from(self.next_u64()) * span) >> 64;
        u64::try_from(scaled).unwrap_or(max)
    }

    /// The delay for `attempt` under `policy`: full jitter below the ceiling.
    pub fn delay_ms(&mut self, policy: &BackoffPolicy, attempt: u32) -> u64 {
        self.up_to(policy.ceiling_ms(attempt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_doubles_to_the_cap() {
        let policy = BackoffPolicy {
            base_ms: 500,
            cap_ms: 60_000,
        };
        assert_eq!(policy.ceiling_ms(1), 500);
        assert_eq!(policy.ceiling_ms(3), 2_000);
        assert_eq!(policy.ceiling_ms(8), 60_000);
        assert_eq!(policy.ceiling_ms(u32::MAX), 60_000);
        assert_eq!(policy.ceiling_ms(0), 500);
    }

    #[test]
    fn draws_stay_below_the_ceiling_and_repeat_for_a_seed() {
        let policy = BackoffPolicy::default();
        let mut a = Jitter::new(7);
        let mut b = Jitter::new(7);
        let mut seen_high = false;
        for attempt in 1..200 {
            let delay = a.delay_ms(&policy, attempt);
            assert!(delay <= policy.ceiling_ms(attempt));
            assert_eq!(
                delay,
                b.delay_ms(&policy, attempt),
                "same seed, same delays"
            );
            seen_high |= delay > policy.cap_ms / 2;
        }
        assert!(seen_high, "the draws spread over the whole range");
        assert_eq!(Jitter::new(1).up_to(0), 0);
        assert!(Jitter::new(1).up_to(u64::MAX) > 0);
    }
}
