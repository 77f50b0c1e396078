//! The core's timers as tokio sleeps. A timer that is re-armed replaces the old one; a
//! cancelled or replaced timer is never delivered (its generation no longer matches).
//! What a timer means, and how long it runs, is the core's business, not this module's.
//!
//! Must not import the driver: a timer that fires sends its own small type
//! ([`TimerFired`]) down whatever channel it was given.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tokio::task::AbortHandle;

use crate::core::TimerKind;

/// A timer ran out; deliver it only if [`Timers::accept`] says it is still armed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimerFired {
    pub timer: TimerKind,
    pub generation: u64,
}

pub struct Timers<T> {
    armed: HashMap<TimerKind, (u64, AbortHandle)>,
    next_generation: u64,
    inputs: UnboundedSender<T>,
}

impl<T: From<TimerFired> + Send + 'static> Timers<T> {
    pub fn new(inputs: UnboundedSender<T>) -> Self {
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
            let _ = inputs.send(T::from(TimerFired {
                timer: fired,
                generation,
            }));
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

/// The seed of this process's backoff jitter, from the OS generator: the one random
/// draw of a run, made once at start and recorded in the trace header (with the core's
/// config), so the core stays deterministic and replay exact. Without an OS generator
/// the process id stands in: the jitter is then less random, never unbounded.
pub fn jitter_seed() -> u64 {
    let mut bytes = [0u8; 8];
    match getrandom::fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => u64::from(std::process::id()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_differ_between_draws() {
        let seeds: std::collections::HashSet<u64> = (0..8).map(|_| jitter_seed()).collect();
        assert!(seeds.len() > 1, "the OS generator gives new seeds");
    }

    #[tokio::test(start_paused = true)]
    async fn a_replaced_timer_is_never_delivered() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<TimerFired>();
        let mut timers = Timers::new(tx);
        let started = tokio::time::Instant::now();
        timers.start(TimerKind::Heartbeat, Duration::from_secs(5));
        timers.start(TimerKind::Heartbeat, Duration::from_secs(10));
        timers.start(TimerKind::Ack, Duration::from_secs(1));
        timers.cancel(&TimerKind::Ack);
        let Some(TimerFired { timer, generation }) = rx.recv().await else {
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
