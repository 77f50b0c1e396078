//! A soak, with real processes: the `fyn-runner` binary as dev-server (`--db` in a
//! temporary folder) and one runner with a few slots, the runner reaching the
//! dev-server (its session and any blob transfer) through a TCP relay in this bench.
//! Jobs are submitted through the admin API at a steady rate (`sh -c 'echo soak-N'`);
//! every `FYN_SOAK_CUT_SECS` the relay cuts every open connection (and refuses new
//! ones for `FYN_SOAK_DOWN_MS`), every `FYN_SOAK_RESTART_SECS` the dev-server is killed
//! (SIGKILL) and started again on the same port and database. Every
//! `FYN_SOAK_SAMPLE_SECS` a line: the runner's resident memory (VmRSS, RssAnon, VmHWM)
//! and open files, the dev-server's VmRSS, the runner's store on disk (`runner.db` and
//! its WAL), the rows in its outbox (read-only), jobs submitted and finished.
//!
//! At the end, once every job finished (or `FYN_SOAK_DRAIN_SECS` passed), the admin
//! API is asked whether each submitted job finished exactly once (one job per
//! submission, one attempt, one stored `job_finished` event), succeeded, and printed
//! its own line; a summary follows, and the samples go to `FYN_SOAK_OUT` (default: a
//! new temporary folder, kept, whose path is printed) as `soak.md` (the summary and a
//! table) and two charts, `soak-rss.svg` and `soak-outbox.svg`, beside both processes'
//! logs. The bench exits 1 when a job was lost or doubled, or when the runner ended on
//! its own (the load stops there; the report is still written); the memory verdict is
//! printed, not enforced (a short run is mostly warm-up). A dev-server that ends on its
//! own is reported and started again, as its service manager would.
//!
//! The hour the issue asks for (one run, not CI):
//!
//! ```text
//! FYN_SOAK_MINUTES=60 FYN_SOAK_OUT=/tmp/soak cargo bench --bench soak
//! ```
//!
//! Without `FYN_SOAK_MINUTES` the bench says how to run it and exits, so a plain
//! `cargo bench` does not spend an hour. Other knobs: `FYN_SOAK_RATE` (jobs a second,
//! default 10), `FYN_SOAK_SLOTS` (4), `FYN_SOAK_CUT_SECS` (60), `FYN_SOAK_DOWN_MS`
//! (1000), `FYN_SOAK_RESTART_SECS` (600), `FYN_SOAK_SAMPLE_SECS` (10),
//! `FYN_SOAK_DRAIN_SECS` (300), `FYN_SOAK_LOG` (both processes' `RUST_LOG`, default
//! `warn`).
//!
//! **No job submitted twice.** A submit whose connection was refused (the dev-server
//! is down for a moment) sent nothing and is simply tried again. A submit that failed
//! any other way (the dev-server killed while it answered) may or may not have been
//! stored: the bench waits a second (a live server has then long finished storing it;
//! a killed one never will), lists the jobs and looks for the job's command, and
//! submits again only when it is not there. The final check also counts the jobs per
//! command, so a double submission would show as doubled, never go unseen.
//!
//! Every process is killed at the end (`Processes`' `Drop`), also when the bench panics.
#![allow(clippy::disallowed_methods)] // a soak measures time

#[cfg(target_os = "linux")]
#[path = "soak/chart.rs"]
mod chart;
#[cfg(target_os = "linux")]
#[path = "soak/events.rs"]
mod events;
#[cfg(target_os = "linux")]
#[path = "soak/load.rs"]
mod load;
#[cfg(target_os = "linux")]
#[path = "soak/processes.rs"]
mod processes;
#[cfg(target_os = "linux")]
#[path = "soak/relay.rs"]
mod relay;
#[cfg(target_os = "linux")]
#[path = "soak/report.rs"]
mod report;
#[cfg(target_os = "linux")]
#[path = "soak/samples.rs"]
mod samples;
#[cfg(target_os = "linux")]
#[path = "soak/verify.rs"]
mod verify;
#[cfg(target_os = "linux")]
#[path = "soak/world.rs"]
mod world;

/// The settings and the soak's flow; the parts are the modules above.
#[cfg(target_os = "linux")]
mod linux_soak {
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::path::{Path, PathBuf};
    use std::str::FromStr;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::net::TcpListener;
    use tokio::time::Instant;

    use fyn_runner::ctl::{Client, parse_server};
    use fyn_runner::devserver::{RunnerInfo, TokenCreated};

    use crate::events::EventTail;
    use crate::load::{LoadCounters, submit_all};
    use crate::processes::{Processes, spawn_runner, spawn_server, stop};
    use crate::relay::Relay;
    use crate::report::Report;
    use crate::samples::{print_sample, print_sample_header};
    use crate::verify::verify;
    use crate::world::{World, until_runner_active};

    /// After the last job finished: time for the runner's acknowledgement tick (5 s) to
    /// empty its outbox before the last sample.
    const SETTLE: Duration = Duration::from_secs(12);

    // ---- settings -------------------------------------------------------------------

    pub(crate) struct Settings {
        pub(crate) minutes: f64,
        pub(crate) rate: f64,
        pub(crate) slots: u32,
        pub(crate) cut: Duration,
        pub(crate) down: Duration,
        pub(crate) restart: Duration,
        sample: Duration,
        drain: Duration,
        out: Option<PathBuf>,
        log: String,
    }

    fn env_or<T: FromStr>(name: &str, default: T) -> T {
        match std::env::var(name) {
            Ok(text) => text
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}={text:?} is not a valid value")),
            Err(_) => default,
        }
    }

    fn secs(name: &str, default: f64) -> Duration {
        let value: f64 = env_or(name, default);
        assert!(
            value.is_finite() && value > 0.0,
            "{name} must be a positive number of seconds"
        );
        Duration::from_secs_f64(value)
    }

    impl Settings {
        /// `None` when `FYN_SOAK_MINUTES` is not set: the soak is not to run.
        fn from_env() -> Option<Self> {
            let minutes: f64 = std::env::var("FYN_SOAK_MINUTES")
                .ok()?
                .trim()
                .parse()
                .expect("FYN_SOAK_MINUTES is a number of minutes");
            assert!(minutes > 0.0, "FYN_SOAK_MINUTES must be above 0");
            let rate: f64 = env_or("FYN_SOAK_RATE", 10.0);
            assert!(rate > 0.0, "FYN_SOAK_RATE must be above 0");
            Some(Self {
                minutes,
                rate,
                slots: env_or("FYN_SOAK_SLOTS", 4),
                cut: secs("FYN_SOAK_CUT_SECS", 60.0),
                down: Duration::from_millis(env_or("FYN_SOAK_DOWN_MS", 1000)),
                restart: secs("FYN_SOAK_RESTART_SECS", 600.0),
                sample: secs("FYN_SOAK_SAMPLE_SECS", 10.0),
                drain: secs("FYN_SOAK_DRAIN_SECS", 300.0),
                out: std::env::var_os("FYN_SOAK_OUT").map(PathBuf::from),
                log: std::env::var("FYN_SOAK_LOG").unwrap_or_else(|_| "warn".to_owned()),
            })
        }

        fn duration(&self) -> Duration {
            Duration::from_secs_f64(self.minutes * 60.0)
        }

        fn total_jobs(&self) -> u64 {
            (self.minutes * 60.0 * self.rate).round() as u64
        }

        /// The first five minutes, or the first fifth of a shorter run.
        pub(crate) fn warm_up(&self) -> Duration {
            (self.duration() / 5).min(Duration::from_secs(300))
        }
    }

    // ---- the soak -------------------------------------------------------------------

    pub async fn soak() -> i32 {
        let Some(settings) = Settings::from_env() else {
            println!(
                "soak: not run (it takes as long as asked). The hour: \
                 FYN_SOAK_MINUTES=60 FYN_SOAK_OUT=/tmp/soak cargo bench --bench soak \
                 (see benches/soak.rs for FYN_SOAK_RATE, _CUT_SECS, _RESTART_SECS, ...)"
            );
            return 0;
        };
        let out = report_folder(&settings);
        let total = settings.total_jobs();
        println!(
            "soak: {} min, {} jobs/s ({total} jobs), {} slots; link cut every {} s (down {} ms), \
             dev-server restarted every {} s; report and logs in {}",
            settings.minutes,
            settings.rate,
            settings.slots,
            settings.cut.as_secs_f64(),
            settings.down.as_millis(),
            settings.restart.as_secs_f64(),
            out.display()
        );

        let work = tempfile::tempdir().expect("tempdir");
        let (mut world, admin) = start_world(&settings, work.path(), &out).await;
        let runner_id = until_runner_active(&admin, &mut world).await;
        let mut tail = EventTail {
            runner: runner_id.clone(),
            after: 0,
            finished: HashMap::new(),
            events: 0,
        };
        println!(
            "  runner {runner_id} Active through the relay at {}",
            world.relay.addr
        );

        // The load, with the faults on their schedules, sampled.
        let counters = Arc::new(LoadCounters::default());
        let submitted_ids = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now();
        let load_end = start + settings.duration();
        let submitter = tokio::spawn(submit_all(
            admin.clone(),
            total,
            settings.rate,
            start,
            counters.clone(),
            submitted_ids.clone(),
        ));
        let mut aborted: Option<String> = None;
        let mut samples = Vec::new();
        let mut next_sample = start;
        let mut next_cut = start + settings.cut;
        let mut next_restart = start + settings.restart;
        print_sample_header();
        while Instant::now() < load_end || !submitter.is_finished() {
            let now = Instant::now();
            let t = now.duration_since(start).as_secs_f64();
            if now >= next_restart && now < load_end {
                let gap = world.restart_server();
                world.restart_marks.push(t);
                println!(
                    "  {t:7.0} dev-server restarted (killed, listening again after {:.2} s)",
                    gap.as_secs_f64()
                );
                next_restart += settings.restart;
            }
            if now >= next_cut && now < load_end {
                let cut = world.relay.cut(settings.down);
                world.cuts += 1;
                world.connections_cut += cut as u64;
                world.cut_marks.push(t);
                next_cut += settings.cut;
            }
            if now >= next_sample {
                if let Err(why) = world.check_alive(t) {
                    println!("  {t:7.0} SOAK STOPPED: {why}");
                    aborted = Some(why);
                    submitter.abort();
                    break;
                }
                tail.poll(&admin).await;
                let sample = world.sample(t, &counters, tail.finished.len() as u64);
                print_sample(&sample);
                samples.push(sample);
                next_sample += settings.sample;
            }
            let mut wake = next_sample;
            if Instant::now() < load_end {
                wake = wake.min(next_cut).min(next_restart).min(load_end);
            }
            // Wakes at least every second, to see the submitter finish.
            tokio::time::sleep_until(wake.min(Instant::now() + Duration::from_secs(1))).await;
        }
        if aborted.is_none() {
            submitter.await.expect("the submitter ran");
        }
        let ids = submitted_ids.lock().expect("the ID list").clone();
        let load_took = start.elapsed();
        println!(
            "  {:7.0} load over: {} jobs submitted; waiting up to {} s for them to finish",
            load_took.as_secs_f64(),
            ids.len(),
            settings.drain.as_secs()
        );

        // Every job to finish, bounded; then the acknowledgements to empty the outbox.
        let drain_end = Instant::now() + settings.drain;
        while aborted.is_none() {
            tail.poll(&admin).await;
            let all = ids.iter().all(|id| tail.finished.contains_key(id));
            if all || Instant::now() >= drain_end {
                break;
            }
            if Instant::now() >= next_sample {
                let t = start.elapsed().as_secs_f64();
                if let Err(why) = world.check_alive(t) {
                    println!("  {t:7.0} SOAK STOPPED: {why}");
                    aborted = Some(why);
                    break;
                }
                let sample = world.sample(t, &counters, tail.finished.len() as u64);
                print_sample(&sample);
                samples.push(sample);
                next_sample += settings.sample;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let all_done_after = start.elapsed();
        if aborted.is_none() {
            tokio::time::sleep(SETTLE).await;
            if let Err(why) = world.check_alive(start.elapsed().as_secs_f64()) {
                println!("  SOAK STOPPED: {why}");
                aborted = Some(why);
            }
        }
        tail.poll(&admin).await;
        // The last sample, after the acknowledgements (not of a runner that is gone).
        if aborted.is_none() {
            let last = world.sample(
                start.elapsed().as_secs_f64(),
                &counters,
                tail.finished.len() as u64,
            );
            print_sample(&last);
            samples.push(last);
        }

        let runners: Vec<RunnerInfo> = admin
            .get("/admin/v1/runners")
            .await
            .expect("the runner list at the end");
        let checking = Instant::now();
        let verdict = verify(admin.clone(), &ids, &tail).await;
        println!(
            "  checked {} jobs and their output through the admin API in {:.1} s",
            ids.len(),
            checking.elapsed().as_secs_f64()
        );

        // The processes stopped as a service manager would, before the report.
        let runner_stopped = stop_processes(&mut world, aborted.is_none());

        let report = Report {
            settings: &settings,
            samples: &samples,
            verdict: &verdict,
            world: &world,
            counters: &counters,
            tail: &tail,
            ids: &ids,
            runners: runners.len(),
            load_took,
            all_done_after,
            runner_stopped,
            aborted: aborted.as_deref(),
        };
        write_report(&report, &out);
        drop(world);
        drop(work);
        if aborted.is_some() || verdict.lost() + verdict.doubled() > 0 {
            1
        } else {
            0
        }
    }

    /// `FYN_SOAK_OUT`, created, or a new temporary folder, kept.
    fn report_folder(settings: &Settings) -> PathBuf {
        match &settings.out {
            Some(out) => {
                std::fs::create_dir_all(out).expect("FYN_SOAK_OUT can be created");
                out.clone()
            }
            None => tempfile::Builder::new()
                .prefix("fyn-soak-")
                .tempdir()
                .expect("a temporary folder for the report")
                .keep(),
        }
    }

    /// The dev-server (`--db` in `dir`) and the runner started, the runner reaching the
    /// dev-server through the relay, both logs in `out`; the world that holds them and an
    /// admin client.
    async fn start_world(settings: &Settings, dir: &Path, out: &Path) -> (World, Arc<Client>) {
        let dir = dir.to_path_buf();
        let state = dir.join("state");
        let server_log = out.join("dev-server.log");
        let runner_log = out.join("runner.log");
        for log in [&server_log, &runner_log] {
            let _ = std::fs::remove_file(log);
        }
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the relay listens");
        let relay_addr = listener.local_addr().expect("the relay's address");
        let public_url = format!("http://{relay_addr}");
        let mut processes = Processes::default();
        let (child, lines) = tokio::task::block_in_place(|| {
            spawn_server(&dir, "127.0.0.1:0", &public_url, &server_log, &settings.log)
        });
        processes.server = Some(child);
        let listen = lines
            .runner_url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .expect("the runner URL has host:port")
            .to_owned();
        let upstream: SocketAddr = listen.parse().expect("the dev-server listens on IP:PORT");
        let relay = Relay::start(listener, upstream);
        let base = parse_server(&lines.admin_url).expect("the admin URL parses");
        let admin = Arc::new(Client::new(base, lines.admin_token, None).expect("an admin client"));

        let token: TokenCreated = admin
            .post("/admin/v1/registration-tokens", None::<&()>)
            .await
            .expect("a registration token");
        processes.runner = Some(spawn_runner(
            &format!("ws://{}", relay.addr),
            &state,
            &token.token,
            settings.slots,
            &runner_log,
            &settings.log,
        ));
        let world = World {
            processes,
            relay,
            dir,
            state,
            listen,
            public_url,
            server_log,
            runner_log,
            rust_log: settings.log.clone(),
            cuts: 0,
            connections_cut: 0,
            restarts: 0,
            restart_gaps: Vec::new(),
            server_exits: Vec::new(),
            restart_marks: Vec::new(),
            cut_marks: Vec::new(),
        };
        (world, admin)
    }

    /// SIGTERM to both processes, each given a grace to end; whether the runner ended in
    /// its grace (not asked of a runner that is gone: `running` false).
    fn stop_processes(world: &mut World, running: bool) -> bool {
        tokio::task::block_in_place(|| {
            let stopped = running
                && world
                    .processes
                    .runner
                    .as_mut()
                    .is_some_and(|r| stop(r, Duration::from_secs(15)));
            if let Some(server) = world.processes.server.as_mut() {
                stop(server, Duration::from_secs(10));
            }
            stopped
        })
    }

    /// The summary printed, and written with the samples to `soak.md` in `out`, beside
    /// both charts.
    fn write_report(report: &Report<'_>, out: &Path) {
        let summary = report.summary();
        println!("{summary}");
        std::fs::write(out.join("soak.md"), report.markdown(&summary)).expect("soak.md written");
        std::fs::write(out.join("soak-rss.svg"), report.rss_chart()).expect("soak-rss.svg written");
        std::fs::write(out.join("soak-outbox.svg"), report.outbox_chart())
            .expect("soak-outbox.svg written");
        println!(
            "  written: {}/soak.md, soak-rss.svg, soak-outbox.svg",
            out.display()
        );
    }
}

fn main() {
    #[cfg(target_os = "linux")]
    {
        let code = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(linux_soak::soak());
        std::process::exit(code);
    }
}
