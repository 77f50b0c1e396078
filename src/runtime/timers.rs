//! The core's timers as tokio sleeps. A timer that is re-armed replaces the old one; a
//! cancelled or replaced timer is never delivered (its generation no longer matches).
//! What a timer means is the core's business, not this module's.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tokio::task::AbortHandle;

use crate::core::TimerKind;

use super::driver::Input;

pub struct Timers {
    armed: HashMap<TimerKind, (u64, AbortHandle)>,
    next_generation: u64,
    inputs: UnboundedSender<Input>,
}

impl Timers {
    pub fn new(inputs: UnboundedSender<Input>) -> Self {
        Self {
            armed: HashMap::new(),
            next_generation: 0,
            inputs,
        }
    }

    pub fn start(&mut self, timer: TimerKind, after: Duration) {
        self.cancel(&timer);
        self.next_generation += 1;
        let generation = self.next_generation;
        let inputs = self.inputs.clone();
        let fired = timer.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(after).await;
            // The driver may be gone at shutdown; then nobody needs the timer.
            let _ = inputs.send(Input::Timer {
                timer: fired,
                generation,
            });
        });
        self.armed.insert(timer, (generation, task.abort_handle()));
    }

    pub fn cancel(&mut self, timer: &TimerKind) {
        if let Some((_, task)) = self.armed.remove(timer) {
            task.abort();
        }
    }

    /// Whether a fired timer is still the armed one; it is disarmed either way.
    pub fn accept(&mut self, timer: &TimerKind, generation: u64) -> bool {
        match self.armed.get(timer) {
            Some((armed, _)) if *armed == generation => {
                self.armed.remove(timer);
                true
            }
            _ => false,
        }
    }

    pub fn cancel_all(&mut self) {
        for (_, (_, task)) in self.armed.drain() {
            task.abort();
        }
    }
}

/// Exponential backoff with full jitter: a uniform draw from [0, min(max, min·2^(n-1))].
/// `unit` is a random number in [0, 1). The core counts attempts; this only shapes them.
pub fn backoff_delay(attempt: u32, min: Duration, max: Duration, unit: f64) -> Duration {
    let exponent = attempt.saturating_sub(1).min(30);
    let ceiling = min.saturating_mul(1u32 << exponent).min(max);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

/// A uniform number in [0, 1) from the OS generator (0.5 if it is unavailable, which
/// only makes the jitter less random, never the delay unbounded).
pub fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    match getrandom::fill(&mut bytes) {
        Ok(()) => (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_and_jitters_below_it() {
        let min = Duration::from_millis(500);
        let max = Duration::from_secs(60);
        assert_eq!(
            backoff_delay(1, min, max, 0.999_999),
            Duration::from_millis(500).mul_f64(0.999_999)
        );
        assert_eq!(backoff_delay(3, min, max, 0.5), Duration::from_millis(1000));
        assert_eq!(backoff_delay(40, min, max, 0.5), Duration::from_secs(30));
        assert_eq!(backoff_delay(2, min, max, 0.0), Duration::ZERO);
        for _ in 0..100 {
            let unit = random_unit();
            assert!((0.0..1.0).contains(&unit));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_replaced_timer_is_never_delivered() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut timers = Timers::new(tx);
        let started = tokio::time::Instant::now();
        timers.start(TimerKind::Heartbeat, Duration::from_secs(5));
        timers.start(TimerKind::Heartbeat, Duration::from_secs(10));
        timers.start(TimerKind::Ack, Duration::from_secs(1));
        timers.cancel(&TimerKind::Ack);
        let Some(Input::Timer { timer, generation }) = rx.recv().await else {
            panic!("a timer fires")
        };
        assert_eq!(timer, TimerKind::Heartbeat);
        assert!(timers.accept(&timer, generation));
        assert!(!timers.accept(&timer, generation), "delivered once");
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(10),
            "the replacement's delay counts"
        );
    }
}
