//! Randomness and wall-clock time, kept in one place so the rest of the dev-server
//! reads them through two small functions.

use std::time::{SystemTime, UNIX_EPOCH};

/// `bytes` random bytes as lowercase hex. Used for nonces, tokens and IDs: all of
/// them must be unguessable, not merely unique.
pub(crate) fn random_hex(bytes: usize) -> Result<String, getrandom::Error> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Milliseconds since the Unix epoch. Stored as the runners' `last_seen`, so it must
/// survive a restart, which `Instant` would not.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
