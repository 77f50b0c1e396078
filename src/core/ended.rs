//! The attempts that ended here, remembered so that a `start_job` for one of them is
//! refused (`already_run`) rather than run again: the last `ENDED_ATTEMPTS_KEPT`, kept
//! by the core and by the store alike.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;

use serde::{Deserialize, Serialize};

use crate::protocol::JobRef;

/// How many ended attempts the runner remembers, newest first, to refuse a `start_job`
/// for one of them (`already_run`). A count, not a time: the core has no clock. An API
/// sends such a start only by mistake, and soon after the attempt (a resend from a
/// restored backup, a race); 1,024 attempts cover hours to weeks of jobs and cost the
/// runner a few tens of KiB.
pub const ENDED_ATTEMPTS_KEPT: usize = 1024;

/// The last `ENDED_ATTEMPTS_KEPT` attempts that ended here, oldest first, with a count
/// per attempt's hash for the question every `start_job` asks (a scan of a thousand
/// job IDs per command was a third of the core's time in `benches/core_throughput.rs`,
/// and an ordered map's string comparisons a tenth). The hashes alone, not a second
/// copy of each ID: a `start_job` for a new attempt misses them (but for a collision
/// once in 2^64), and only a hit, a start the API should not have sent, scans the list
/// to be sure. Stored and traced as the list alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "VecDeque<JobRef>", into = "VecDeque<JobRef>")]
pub(crate) struct EndedAttempts {
    order: VecDeque<JobRef>,
    count: HashMap<u64, u32, FixedKeys>,
}

/// foldhash with a fixed seed: the core draws no random numbers, not even a hasher's
/// keys, so the map behaves the same in every run. Nothing depends on its order, and
/// a collision, whether by chance or made on purpose by an API this runner trusts,
/// costs a scan of the list, never a wrong answer.
type FixedKeys = foldhash::fast::FixedState;

impl EndedAttempts {
    pub(crate) fn remember(&mut self, job: JobRef) {
        *self
            .count
            .entry(hash_of(&job.job_id, job.attempt))
            .or_default() += 1;
        self.order.push_back(job);
        while self.order.len() > ENDED_ATTEMPTS_KEPT {
            if let Some(oldest) = self.order.pop_front() {
                let hash = hash_of(&oldest.job_id, oldest.attempt);
                if let Some(n) = self.count.get_mut(&hash) {
                    *n -= 1;
                    if *n == 0 {
                        self.count.remove(&hash);
                    }
                }
            }
        }
    }

    /// Whether attempt `attempt` of job `job_id` is among them (asked with the parts, so
    /// a `start_job` need not build a `JobRef` to ask).
    pub(crate) fn contains(&self, job_id: &str, attempt: u32) -> bool {
        self.count.contains_key(&hash_of(job_id, attempt))
            && self
                .order
                .iter()
                .any(|ended| ended.attempt == attempt && ended.job_id == job_id)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }
}

fn hash_of(job_id: &str, attempt: u32) -> u64 {
    FixedKeys::default().hash_one((job_id, attempt))
}

impl From<VecDeque<JobRef>> for EndedAttempts {
    fn from(list: VecDeque<JobRef>) -> Self {
        let mut ended = Self::default();
        for job in list {
            ended.remember(job);
        }
        ended
    }
}

impl From<EndedAttempts> for VecDeque<JobRef> {
    fn from(ended: EndedAttempts) -> Self {
        ended.order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An attempt remembered twice is still known while its newer copy is kept, and
    /// the list round-trips through its stored form (the list alone).
    #[test]
    fn an_attempt_remembered_twice_is_forgotten_with_its_last_copy() {
        let job = |n: usize| JobRef {
            job_id: format!("j-{n}"),
            attempt: 1,
        };
        let mut ended = EndedAttempts::default();
        ended.remember(job(0));
        for n in 1..ENDED_ATTEMPTS_KEPT {
            ended.remember(job(n));
        }
        ended.remember(job(0));
        ended.remember(job(ENDED_ATTEMPTS_KEPT));
        assert!(ended.contains("j-0", 1), "its newer copy is kept");
        let stored: VecDeque<JobRef> = ended.clone().into();
        assert_eq!(EndedAttempts::from(stored), ended);
        for n in 0..ENDED_ATTEMPTS_KEPT {
            ended.remember(job(ENDED_ATTEMPTS_KEPT + 1 + n));
        }
        assert!(!ended.contains("j-0", 1));
        assert_eq!(ended.len(), ENDED_ATTEMPTS_KEPT);
    }

    /// A hash that matches an attempt not in the list (a collision) is not taken for
    /// it: the list decides.
    #[test]
    fn a_colliding_hash_is_not_an_ended_attempt() {
        let mut ended = EndedAttempts::default();
        ended.remember(JobRef {
            job_id: "ran".into(),
            attempt: 1,
        });
        // As if "never-ran" attempt 1 hashed like an attempt in the list.
        ended.count.insert(hash_of("never-ran", 1), 1);
        assert!(!ended.contains("never-ran", 1));
        assert!(ended.contains("ran", 1));
    }
}
