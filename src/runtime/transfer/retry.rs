//! How often and how patiently a transfer is tried again after a transient failure: a
//! fixed number of attempts, each waiting twice as long as the one before, up to a cap.
//! No jitter: transfers of one runner are few and start at unrelated times, unlike the
//! reconnects of many runners after an API restart (which the core's backoff spreads).

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, the first included (at least 1).
    pub attempts: u32,
    /// The wait after the first failure.
    pub first_delay: Duration,
    /// No wait is longer.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// Six tries over about a minute (1, 2, 4, 8, 16 s between them): long enough for
    /// a store that restarts or a link that flaps, short enough that a job waiting on
    /// a dead URL fails within minutes.
    fn default() -> Self {
        Self {
            attempts: 6,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `n` (1-based), or `None` when it was the last.
    pub fn delay_after(&self, attempt: u32) -> Option<Duration> {
        if attempt >= self.attempts {
            return None;
        }
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        Some(self.first_delay.saturating_mul(factor).min(self.max_delay))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_stop_after_the_last_attempt() {
        let policy = RetryPolicy {
            attempts: 5,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(5),
        };
        let delays: Vec<Option<u64>> = (1..=5)
            .map(|n| policy.delay_after(n).map(|d| d.as_secs()))
            .collect();
        assert_eq!(delays, [Some(1), Some(2), Some(4), Some(5), None]);
        let huge = RetryPolicy {
            attempts: u32::MAX,
            ..policy
        };
        assert_eq!(huge.delay_after(100), Some(Duration::from_secs(5)));
    }
}
