//! The world the soak acts on: both processes and the relay held together, the
//! faults dealt to them (link cuts, dev-server restarts) counted, and each sample
//! read from them.

use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use fyn_runner::ctl::Client;
use fyn_runner::devserver::{RunnerInfo, RunnerState};

use crate::load::LoadCounters;
use crate::processes::{Processes, last_lines, open_files, spawn_server, status_kib};
use crate::relay::Relay;
use crate::samples::{Sample, outbox_rows, store_bytes};

/// Everything the main loop changes and the samples read.
pub(crate) struct World {
    pub(crate) processes: Processes,
    pub(crate) relay: Relay,
    pub(crate) dir: PathBuf,
    pub(crate) state: PathBuf,
    pub(crate) listen: String,
    pub(crate) public_url: String,
    pub(crate) server_log: PathBuf,
    pub(crate) runner_log: PathBuf,
    pub(crate) rust_log: String,
    pub(crate) cuts: u64,
    pub(crate) connections_cut: u64,
    pub(crate) restarts: u64,
    pub(crate) restart_gaps: Vec<Duration>,
    /// When and how the dev-server ended on its own, if it did.
    pub(crate) server_exits: Vec<String>,
    /// Seconds since the load began, of each restart and each cut (for the charts).
    pub(crate) restart_marks: Vec<f64>,
    pub(crate) cut_marks: Vec<f64>,
}

impl World {
    fn runner_pid(&self) -> u32 {
        self.processes.runner.as_ref().map_or(0, Child::id)
    }

    fn server_pid(&self) -> u32 {
        self.processes.server.as_ref().map_or(0, Child::id)
    }

    /// A dev-server that ended on its own is reported (with its log's tail) and
    /// started again, as its service manager would; a runner that ended on its own
    /// ends the soak: why, with its log's tail.
    pub(crate) fn check_alive(&mut self, t: f64) -> Result<(), String> {
        if let Some(server) = &mut self.processes.server
            && let Ok(Some(status)) = server.try_wait()
        {
            println!(
                "  {t:7.0} THE DEV-SERVER ENDED ON ITS OWN ({status}); the last lines of {}:\n{}",
                self.server_log.display(),
                last_lines(&self.server_log, 40)
            );
            self.server_exits.push(format!("{t:.0} s: {status}"));
            self.start_server();
        }
        if let Some(runner) = &mut self.processes.runner
            && let Ok(Some(status)) = runner.try_wait()
        {
            return Err(format!(
                "the runner ended on its own at {t:.0} s ({status}); the last lines of {}:\n{}",
                self.runner_log.display(),
                last_lines(&self.runner_log, 40)
            ));
        }
        Ok(())
    }

    /// The dev-server killed (SIGKILL) and started again on the same port and
    /// database; how long it was gone.
    pub(crate) fn restart_server(&mut self) -> Duration {
        let began = std::time::Instant::now();
        if let Some(mut old) = self.processes.server.take() {
            let _ = old.kill();
            let _ = old.wait();
        }
        self.start_server();
        self.restarts += 1;
        let gap = began.elapsed();
        self.restart_gaps.push(gap);
        gap
    }

    /// The dev-server started on the same port, database and admin token as before.
    fn start_server(&mut self) {
        let (child, _) = tokio::task::block_in_place(|| {
            spawn_server(
                &self.dir,
                &self.listen,
                &self.public_url,
                &self.server_log,
                &self.rust_log,
            )
        });
        self.processes.server = Some(child);
    }

    pub(crate) fn sample(&self, t: f64, counters: &LoadCounters, finished: u64) -> Sample {
        let runner = self.runner_pid();
        Sample {
            t,
            runner_rss: status_kib(runner, "VmRSS"),
            runner_anon: status_kib(runner, "RssAnon"),
            runner_hwm: status_kib(runner, "VmHWM"),
            runner_fds: open_files(runner),
            server_rss: status_kib(self.server_pid(), "VmRSS"),
            store_bytes: store_bytes(&self.state),
            outbox: outbox_rows(&self.state),
            submitted: counters.submitted.load(Ordering::Relaxed),
            finished,
            cuts: self.cuts,
            restarts: self.restarts,
        }
    }
}

/// Until the runner is connected and Active; its ID.
pub(crate) async fn until_runner_active(admin: &Client, world: &mut World) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Err(why) = world.check_alive(0.0) {
            panic!("{why}");
        }
        if let Ok(runners) = admin.get::<Vec<RunnerInfo>>("/admin/v1/runners").await
            && let Some(runner) = runners
                .iter()
                .find(|r| r.connected && r.state == RunnerState::Active)
        {
            return runner.id.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the runner was not Active within a minute; its log:\n{}",
            last_lines(&world.runner_log, 40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
