//! Hardware collection for HardwareSync and the periodic re-check: collect (on a
//! blocking thread), compare with the cache, and hand the core the result as an event.

use std::path::Path;

use tracing::warn;

use crate::core::{Event, HardwareCache};

pub(crate) fn collect_and_compare(
    source: &super::settings::HardwareSource,
    state_dir: &Path,
    job_area: &Path,
) -> Event {
    if let Err(e) = std::fs::create_dir_all(job_area) {
        return Event::HardwareFailed {
            error: format!("cannot create {}: {e}", job_area.display()),
        };
    }
    let report = match source.collect(job_area) {
        Ok(report) => report,
        Err(error) => return Event::HardwareFailed { error },
    };
    let cached = match crate::hardware::load_cache(state_dir) {
        Ok(cached) => cached,
        Err(e) => {
            warn!(error = %e, "hardware cache unreadable; sending the full record");
            None
        }
    };
    let cache = match crate::hardware::compare(cached.as_ref(), &report) {
        crate::hardware::CacheStatus::Missing => HardwareCache::Missing,
        crate::hardware::CacheStatus::Unchanged => HardwareCache::Unchanged,
        crate::hardware::CacheStatus::Changed(changes) => HardwareCache::Changed { changes },
    };
    Event::HardwareCollected {
        report: Box::new(report),
        cache,
    }
}
