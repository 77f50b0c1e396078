//! The runner's events, followed: its stored events read through the admin API page
//! by page as they come, `job_finished` counted per job.

use std::collections::HashMap;

use fyn_runner::ctl::Client;
use fyn_runner::devserver::EventRecord;

/// The most events asked for in one page (the API's own ceiling).
const EVENTS_PAGE: usize = 10_000;

/// The runner's stored events, read page by page as they come: `job_finished`
/// counted per job.
pub(crate) struct EventTail {
    pub(crate) runner: String,
    pub(crate) after: u64,
    pub(crate) finished: HashMap<String, u32>,
    pub(crate) events: u64,
}

impl EventTail {
    /// Reads what is new; an unanswered page (the server restarting) is left for
    /// the next call.
    pub(crate) async fn poll(&mut self, admin: &Client) {
        loop {
            let path = format!(
                "/admin/v1/runners/{}/events?after={}&limit={EVENTS_PAGE}",
                self.runner, self.after
            );
            let Ok(page) = admin.get::<Vec<EventRecord>>(&path).await else {
                return;
            };
            for event in &page {
                self.after = self.after.max(event.index);
                self.events += 1;
                if event.kind == "job_finished"
                    && let Some(job) = event.body["job"]["job_id"].as_str()
                {
                    *self.finished.entry(job.to_owned()).or_default() += 1;
                }
            }
            if page.len() < EVENTS_PAGE {
                return;
            }
        }
    }
}
