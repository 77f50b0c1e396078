//! What a job reads with `kv get`: the pairs its spec carried, with its own writes on
//! top. The runner answers reads from this copy, so they work offline and never wait
//! for the API. Also where a job's writes are counted against the runner's bounds.

use std::collections::BTreeMap;

use crate::protocol::{MAX_KV_KEYS, validate_kv};

/// How much a job may write, in all, during one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLimits {
    /// Distinct keys, the spec's included.
    pub keys: usize,
    /// Writes.
    pub writes: u32,
    /// Bytes of keys and values written.
    pub bytes: u64,
}

impl Default for KvLimits {
    /// Generous for a job's own bookkeeping (checkpoints, counters, a status line every
    /// few seconds for days), and at most some 16 MiB of events to keep while offline.
    fn default() -> Self {
        Self {
            keys: MAX_KV_KEYS,
            writes: 100_000,
            bytes: 16 << 20,
        }
    }
}

/// The pairs a job sees, and what it wrote so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvView {
    from_spec: BTreeMap<String, String>,
    written: BTreeMap<String, String>,
    writes: u32,
    bytes: u64,
}

impl KvView {
    pub fn new(from_spec: BTreeMap<String, String>) -> Self {
        Self {
            from_spec,
            ..Self::default()
        }
    }

    /// A job's view after a runner restart: its spec's pairs, the last value it wrote
    /// to each key, and how many writes and bytes it spent on them.
    pub fn restored(
        from_spec: BTreeMap<String, String>,
        written: BTreeMap<String, String>,
        writes: u32,
        bytes: u64,
    ) -> Self {
        Self {
            from_spec,
            written,
            writes,
            bytes,
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.written
            .get(key)
            .or_else(|| self.from_spec.get(key))
            .map(String::as_str)
    }

    /// Whether the write may be made, and why not.
    pub fn check(&self, key: &str, value: &str, limits: &KvLimits) -> Result<(), String> {
        validate_kv(key, value)?;
        let new_key = !self.written.contains_key(key) && !self.from_spec.contains_key(key);
        let keys = self.from_spec.len()
            + self
                .written
                .keys()
                .filter(|k| !self.from_spec.contains_key(*k))
                .count();
        if new_key && keys >= limits.keys {
            return Err(format!(
                "this job already has {keys} keys, the most it may have"
            ));
        }
        if self.writes >= limits.writes {
            return Err(format!(
                "this job made {} key-value writes, the most it may make",
                self.writes
            ));
        }
        let size = (key.len() + value.len()) as u64;
        if self.bytes + size > limits.bytes {
            return Err(format!(
                "this job wrote {} bytes of key-value pairs; {size} more would pass its limit of {}",
                self.bytes, limits.bytes
            ));
        }
        Ok(())
    }

    /// Record a write the runner has taken.
    pub fn apply(&mut self, key: String, value: String) {
        self.writes = self.writes.saturating_add(1);
        self.bytes = self.bytes.saturating_add((key.len() + value.len()) as u64);
        self.written.insert(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_reads_its_spec_and_its_own_writes_win() {
        let mut view = KvView::new(BTreeMap::from([("a".into(), "spec".into())]));
        assert_eq!(view.get("a"), Some("spec"));
        assert_eq!(view.get("b"), None);
        view.apply("a".into(), "mine".into());
        view.apply("b".into(), "new".into());
        assert_eq!((view.get("a"), view.get("b")), (Some("mine"), Some("new")));
        let restored = KvView::restored(
            BTreeMap::from([("a".into(), "spec".into())]),
            BTreeMap::from([("a".into(), "mine".into()), ("b".into(), "new".into())]),
            2,
            9,
        );
        assert_eq!(restored, view);
    }

    #[test]
    fn writes_are_bounded_in_keys_count_and_bytes() {
        let limits = KvLimits {
            keys: 2,
            writes: 3,
            bytes: 20,
        };
        let mut view = KvView::new(BTreeMap::from([("a".into(), "1".into())]));
        assert!(view.check("bad key", "v", &limits).is_err());
        assert!(view.check("b", "1", &limits).is_ok());
        view.apply("b".into(), "1".into());
        let third_key = view.check("c", "1", &limits);
        assert!(third_key.is_err_and(|why| why.contains("2 keys")));
        assert!(view.check("a", "2", &limits).is_ok());
        view.apply("a".into(), "2".into());
        let too_big = view.check("a", &"x".repeat(20), &limits);
        assert!(too_big.is_err_and(|why| why.contains("bytes")));
        view.apply("a".into(), "3".into());
        let too_many = view.check("a", "4", &limits);
        assert!(too_many.is_err_and(|why| why.contains("3 key-value writes")));
    }
}
