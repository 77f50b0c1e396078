//! The report: the summary printed at the end and written to `soak.md` with the
//! table of samples, and the two charts beside it (`soak-rss.svg`, `soak-outbox.svg`).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::chart::{Series, chart};
use crate::events::EventTail;
use crate::linux_soak::Settings;
use crate::load::LoadCounters;
use crate::processes::count_lines;
use crate::samples::{MIB, Sample};
use crate::verify::{Verdict, list_some, spread};
use crate::world::World;

pub(crate) struct Report<'a> {
    pub(crate) settings: &'a Settings,
    pub(crate) samples: &'a [Sample],
    pub(crate) verdict: &'a Verdict,
    pub(crate) world: &'a World,
    pub(crate) counters: &'a LoadCounters,
    pub(crate) tail: &'a EventTail,
    pub(crate) ids: &'a [String],
    pub(crate) runners: usize,
    pub(crate) load_took: Duration,
    pub(crate) all_done_after: Duration,
    pub(crate) runner_stopped: bool,
    /// Why the soak stopped before its end, if it did.
    pub(crate) aborted: Option<&'a str>,
}

impl Report<'_> {
    fn after_warm_up(&self) -> Vec<&Sample> {
        let warm = self.settings.warm_up().as_secs_f64();
        self.samples.iter().filter(|s| s.t >= warm).collect()
    }

    pub(crate) fn summary(&self) -> String {
        let v = self.verdict;
        let mut s = String::new();
        let warm = self.after_warm_up();
        let rss = spread(&warm.iter().map(|s| (s.t, s.runner_rss)).collect::<Vec<_>>());
        let anon = spread(
            &warm
                .iter()
                .map(|s| (s.t, s.runner_anon))
                .collect::<Vec<_>>(),
        );
        let outbox_max = self
            .samples
            .iter()
            .filter_map(|s| s.outbox)
            .max()
            .unwrap_or(0);
        let store_max = self
            .samples
            .iter()
            .map(|s| s.store_bytes)
            .max()
            .unwrap_or(0);
        let server_max = self.samples.iter().map(|s| s.server_rss).max().unwrap_or(0);
        let hwm = self.samples.iter().map(|s| s.runner_hwm).max().unwrap_or(0);
        let fds = warm.iter().map(|s| s.runner_fds);
        let (fds_min, fds_max) = (fds.clone().min().unwrap_or(0), fds.max().unwrap_or(0));
        let last = self.samples.last();
        let gaps = &self.world.restart_gaps;
        let worst_gap = gaps.iter().max().copied().unwrap_or_default();
        let _ = writeln!(s, "soak summary");
        let _ = writeln!(
            s,
            "  load: {} jobs submitted in {:.0} s ({:.2} jobs/s; worst lag behind schedule \
             {} ms); connection refused and retried {} times; outcome unknown {} times \
             ({} found stored, {} submitted again)",
            self.ids.len(),
            self.load_took.as_secs_f64(),
            self.ids.len() as f64 / self.load_took.as_secs_f64().max(0.001),
            self.counters.worst_lag_ms.load(Ordering::Relaxed),
            self.counters.refused.load(Ordering::Relaxed),
            self.counters.unknown.load(Ordering::Relaxed),
            self.counters.found_stored.load(Ordering::Relaxed),
            self.counters.unknown.load(Ordering::Relaxed)
                - self.counters.found_stored.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            s,
            "  faults: {} link cuts ({} connections cut), {} dev-server restarts (listening \
             again within {:.2} s at worst)",
            self.world.cuts,
            self.world.connections_cut,
            self.world.restarts,
            worst_gap.as_secs_f64()
        );
        let _ = writeln!(
            s,
            "  jobs: {} submitted, {} finished (a job_finished stored), {} finished exactly \
             once and succeeded with their own line; {} {:.0} s after the load began",
            self.ids.len(),
            self.tail.finished.len(),
            v.good,
            if self.tail.finished.len() >= self.ids.len() {
                "all finished"
            } else {
                "waited until"
            },
            self.all_done_after.as_secs_f64()
        );
        let _ = writeln!(
            s,
            "  lost: {} ({} unfinished, {} not succeeded, {} wrong output); doubled: {} ({} run \
             twice, {} submitted twice, {} never submitted)",
            v.lost(),
            v.unfinished.len(),
            v.not_succeeded.len(),
            v.wrong_output.len(),
            v.doubled(),
            v.doubled_runs.len(),
            v.doubled_submits.len(),
            v.strangers.len()
        );
        for (what, items) in [
            ("unfinished", &v.unfinished),
            ("not succeeded", &v.not_succeeded),
            ("wrong output", &v.wrong_output),
            ("run twice", &v.doubled_runs),
            ("submitted twice", &v.doubled_submits),
            ("never submitted", &v.strangers),
        ] {
            if !items.is_empty() {
                let _ = writeln!(s, "    {what}:\n      {}", list_some(items));
            }
        }
        let _ = writeln!(
            s,
            "  runners known to the API: {} (1 expected); events read: {}",
            self.runners, self.tail.events
        );
        match (rss, anon) {
            (Some(rss), Some(anon)) => {
                let spread_kib = rss.max - rss.min;
                let _ = writeln!(
                    s,
                    "  runner RSS after warm-up ({:.0} s, {} samples): min {:.2} MiB, max \
                     {:.2} MiB, spread {:.2} MiB (trend {:+.0} KiB/h); anonymous {:.2}-{:.2} \
                     MiB (trend {:+.0} KiB/h); peak (VmHWM) {:.2} MiB",
                    self.settings.warm_up().as_secs_f64(),
                    warm.len(),
                    rss.min as f64 / MIB,
                    rss.max as f64 / MIB,
                    spread_kib as f64 / MIB,
                    rss.slope_kib_per_hour,
                    anon.min as f64 / MIB,
                    anon.max as f64 / MIB,
                    anon.slope_kib_per_hour,
                    hwm as f64 / MIB
                );
                let _ = writeln!(
                    s,
                    "  flat within 1 MiB after warm-up: {}",
                    if spread_kib <= 1024 { "yes" } else { "NO" }
                );
            }
            _ => {
                let _ = writeln!(s, "  runner RSS after warm-up: no samples");
            }
        }
        let _ = writeln!(
            s,
            "  runner open files after warm-up: {fds_min}-{fds_max}; outbox max {outbox_max} \
             rows (at the end {}); store max {:.0} KiB (at the end {:.0} KiB); dev-server \
             RSS max {:.1} MiB",
            last.and_then(|l| l.outbox)
                .map_or("?".to_owned(), |n| n.to_string()),
            store_max as f64 / 1024.0,
            last.map_or(0, |l| l.store_bytes) as f64 / 1024.0,
            server_max as f64 / MIB
        );
        let _ = writeln!(
            s,
            "  log lines: runner {} WARN, {} ERROR; dev-server {} WARN, {} ERROR; dev-server \
             ended on its own: {}",
            count_lines(&self.world.runner_log, " WARN "),
            count_lines(&self.world.runner_log, " ERROR "),
            count_lines(&self.world.server_log, " WARN "),
            count_lines(&self.world.server_log, " ERROR "),
            if self.world.server_exits.is_empty() {
                "never".to_owned()
            } else {
                self.world.server_exits.join(", ")
            }
        );
        let _ = writeln!(
            s,
            "  runner stopped on SIGTERM within 15 s: {}",
            match (self.runner_stopped, self.aborted) {
                (true, _) => "yes",
                (false, None) => "no (killed)",
                (false, Some(_)) => "n/a (it had ended)",
            }
        );
        if let Some(why) = self.aborted {
            let _ = writeln!(s, "  STOPPED EARLY: {}", why.lines().next().unwrap_or(why));
        }
        let _ = write!(
            s,
            "  verdict: {}",
            if v.lost() + v.doubled() == 0 && self.aborted.is_none() {
                "no job lost or doubled"
            } else if v.lost() + v.doubled() == 0 {
                "no job lost or doubled, but the soak stopped early"
            } else {
                "JOBS LOST OR DOUBLED"
            }
        );
        s
    }

    pub(crate) fn markdown(&self, summary: &str) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# Soak\n");
        let _ = writeln!(
            md,
            "`FYN_SOAK_MINUTES={} FYN_SOAK_RATE={} FYN_SOAK_SLOTS={} FYN_SOAK_CUT_SECS={} \
             FYN_SOAK_DOWN_MS={} FYN_SOAK_RESTART_SECS={} cargo bench --bench soak`\n",
            self.settings.minutes,
            self.settings.rate,
            self.settings.slots,
            self.settings.cut.as_secs_f64(),
            self.settings.down.as_millis(),
            self.settings.restart.as_secs_f64()
        );
        let _ = writeln!(md, "```text\n{summary}\n```\n");
        let _ = writeln!(
            md,
            "![runner RSS](soak-rss.svg)\n\n![outbox](soak-outbox.svg)\n"
        );
        let _ = writeln!(
            md,
            "| t (s) | runner RSS (MiB) | anonymous (MiB) | VmHWM (MiB) | open files | \
             dev-server RSS (MiB) | store (KiB) | outbox rows | submitted | finished | cuts \
             | restarts |"
        );
        let _ = writeln!(md, "|{}", " ---: |".repeat(12));
        for s in self.samples {
            let _ = writeln!(md, "| {} |", s.cells().join(" | "));
        }
        md
    }

    pub(crate) fn rss_chart(&self) -> String {
        let series = [
            Series {
                name: "VmRSS",
                color: "#1f77b4",
                points: self
                    .samples
                    .iter()
                    .map(|s| (s.t, s.runner_rss as f64 / MIB))
                    .collect(),
            },
            Series {
                name: "RssAnon",
                color: "#2ca02c",
                points: self
                    .samples
                    .iter()
                    .map(|s| (s.t, s.runner_anon as f64 / MIB))
                    .collect(),
            },
        ];
        chart(
            "runner resident memory (MiB)",
            &series,
            &self.world.restart_marks,
            &self.world.cut_marks,
            self.settings.warm_up().as_secs_f64(),
        )
    }

    pub(crate) fn outbox_chart(&self) -> String {
        let series = [Series {
            name: "outbox rows",
            color: "#d62728",
            points: self
                .samples
                .iter()
                .filter_map(|s| Some((s.t, s.outbox? as f64)))
                .collect(),
        }];
        chart(
            "runner outbox (rows)",
            &series,
            &self.world.restart_marks,
            &self.world.cut_marks,
            self.settings.warm_up().as_secs_f64(),
        )
    }
}
