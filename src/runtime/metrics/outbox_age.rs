//! The age of the oldest event the API has not acknowledged.
//!
//! Owns: when each stretch of outbox indexes was appended. Indexes and appends are
//! both monotonic, so the ages are a queue of `(first index, appended at)` stretches:
//! an acknowledgement pops from the front, an append pushes at the back. The queue is
//! capped ([`MAX_STRETCHES`]): past it, neighbouring stretches merge and keep the
//! earlier time, so the reported age can only err towards older (an alert fires early,
//! never late), and memory stays bounded through any outage.
//!
//! Must not: read the clock itself; the instants come from the caller.

use std::collections::VecDeque;
use std::time::Instant;

/// Stretches kept. In a healthy session acknowledgements arrive within a heartbeat
/// and the queue holds a handful; the cap matters only in a long outage.
const MAX_STRETCHES: usize = 1024;

#[derive(Debug, Default)]
pub(super) struct OutboxAge {
    /// `(first index, appended at)`, oldest first; a stretch runs to the next one's
    /// first index.
    stretches: VecDeque<(u64, Instant)>,
    /// The highest index acknowledged.
    acked: u64,
    /// The highest index appended.
    last: u64,
}

impl OutboxAge {
    /// Start from what the store held: events an earlier process appended and the API
    /// has not acknowledged count from `now` (their own time is not recorded).
    pub(super) fn boot(acked: u64, last: u64, now: Instant) -> Self {
        let mut age = Self {
            stretches: VecDeque::new(),
            acked,
            last: last.max(acked),
        };
        if last > acked {
            age.stretches.push_back((acked + 1, now));
        }
        age
    }

    pub(super) fn appended(&mut self, index: u64, now: Instant) {
        self.last = self.last.max(index);
        if index <= self.acked {
            return;
        }
        self.stretches.push_back((index, now));
        if self.stretches.len() > MAX_STRETCHES {
            self.merge_halves();
        }
    }

    pub(super) fn acknowledged(&mut self, up_to: u64) {
        self.acked = self.acked.max(up_to);
        // A stretch is gone once the next one starts at or below the acknowledged
        // index + 1 (all of its own indexes are then acknowledged).
        while let Some(&(first, _)) = self.stretches.get(1)
            && first <= self.acked + 1
        {
            self.stretches.pop_front();
        }
        if self.acked >= self.last {
            self.stretches.clear();
        } else if let Some(front) = self.stretches.front_mut() {
            front.0 = front.0.max(self.acked + 1);
        }
    }

    /// Events after `sent_up_to` moved up to follow `api_last` (see
    /// `Durable::OutboxRenumbered`).
    pub(super) fn renumbered(&mut self, sent_up_to: u64, api_last: u64) {
        let shift = api_last.saturating_sub(sent_up_to);
        for stretch in &mut self.stretches {
            if stretch.0 > sent_up_to {
                stretch.0 += shift;
            }
        }
        if self.last > sent_up_to {
            self.last += shift;
        }
    }

    /// Seconds since the oldest unacknowledged event was appended; 0 when none is.
    pub(super) fn oldest_age(&self, now: Instant) -> f64 {
        self.stretches.front().map_or(0.0, |(_, at)| {
            now.saturating_duration_since(*at).as_secs_f64()
        })
    }

    /// Merge each pair of neighbours, keeping the earlier one's start and time.
    fn merge_halves(&mut self) {
        let merged: VecDeque<(u64, Instant)> = self.stretches.iter().step_by(2).copied().collect();
        self.stretches = merged;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.stretches.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_oldest_unacknowledged_event_sets_the_age() {
        let t0 = Instant::now();
        let mut age = OutboxAge::boot(0, 0, t0);
        assert_eq!(age.oldest_age(t0 + Duration::from_secs(9)), 0.0);
        age.appended(1, t0);
        age.appended(2, t0 + Duration::from_secs(5));
        age.appended(3, t0 + Duration::from_secs(8));
        let now = t0 + Duration::from_secs(10);
        assert_eq!(age.oldest_age(now), 10.0);
        age.acknowledged(1);
        assert_eq!(age.oldest_age(now), 5.0);
        age.acknowledged(2);
        assert_eq!(age.oldest_age(now), 2.0);
        age.acknowledged(3);
        assert_eq!(age.oldest_age(now), 0.0);
        assert_eq!(age.len(), 0);
    }

    #[test]
    fn events_left_by_an_earlier_process_count_from_the_start() {
        let t0 = Instant::now();
        let mut age = OutboxAge::boot(4, 7, t0);
        assert_eq!(age.oldest_age(t0 + Duration::from_secs(3)), 3.0);
        age.acknowledged(7);
        assert_eq!(age.oldest_age(t0 + Duration::from_secs(3)), 0.0);
    }

    #[test]
    fn renumbered_events_keep_their_times() {
        let t0 = Instant::now();
        let mut age = OutboxAge::boot(0, 2, t0);
        age.appended(3, t0 + Duration::from_secs(4));
        // The API holds up to 10: events 1 and 2 were sent; 3 moves up to 11.
        age.renumbered(2, 10);
        age.acknowledged(10);
        assert_eq!(age.oldest_age(t0 + Duration::from_secs(5)), 1.0);
        age.acknowledged(11);
        assert_eq!(age.oldest_age(t0 + Duration::from_secs(5)), 0.0);
    }

    #[test]
    fn a_long_outage_stays_bounded_and_never_reports_younger() {
        let t0 = Instant::now();
        let mut age = OutboxAge::boot(0, 0, t0);
        for i in 1..=100_000u64 {
            age.appended(i, t0 + Duration::from_millis(i));
        }
        assert!(age.len() <= MAX_STRETCHES);
        let now = t0 + Duration::from_secs(200);
        for acked in [1u64, 500, 50_000, 99_999] {
            age.acknowledged(acked);
            let truth = now
                .saturating_duration_since(t0 + Duration::from_millis(acked + 1))
                .as_secs_f64();
            assert!(age.oldest_age(now) >= truth, "at {acked}");
        }
    }
}
