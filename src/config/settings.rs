//! The table of settings: each one defined once, here. `define_settings!` (see
//! `define.rs`) makes from it the flags, the environment variables, the file's keys,
//! the defaults, the checks and what `--print-config` and `install` write.

use std::path::PathBuf;

use super::value;
use super::{ConfigError, KeyDoc, LogFormat};

define_settings! {
    /// The settings of `run` (and of `install` and the Windows service, which run the
    /// same runner), after flags, environment, the config file and defaults.
    RunSettings (global: false) {
        server: optional<String> {
            flag: "server",
            env: "FYN_RUNNER_SERVER",
            example: "\"wss://api.example.com\"",
            help: "The control plane, e.g. wss://api.example.com (the runner path /runner/v1 is added when the URL has no path).",
            check: value::server,
        }
        name: optional<String> {
            flag: "name",
            env: "FYN_RUNNER_NAME",
            example: "\"gpu-box-1\"",
            help: "The name the control plane shows for this runner (default: the host name).",
            check: value::non_empty,
        }
        slots: defaulted<u32> = "1" {
            flag: "slots",
            env: "FYN_RUNNER_SLOTS",
            example: "1",
            help: "How many jobs may run at once (1 to 1024).",
            check: value::slots,
        }
        state_dir: optional<PathBuf> {
            flag: "state-dir",
            env: "FYN_RUNNER_STATE_DIR",
            example: "\"/var/lib/fyn-runner\"",
            help: "Where the identity, the outbox and the traces live, private to the runner's user (default: /var/lib/fyn-runner for root, $XDG_STATE_HOME/fyn-runner otherwise).",
            check: value::path,
        }
        job_user: optional<String> {
            flag: "job-user",
            env: "FYN_RUNNER_JOB_USER",
            example: "\"fyn-runner-job\"",
            help: "The account jobs run as when the runner runs as root (install creates fyn-runner-job); it cannot read the runner's identity, store or control socket. Unset: jobs run as the runner's own user.",
            check: value::user_name,
        }
        jobs_dir: optional<PathBuf> {
            flag: "jobs-dir",
            env: "FYN_RUNNER_JOBS_DIR",
            example: "\"/var/lib/fyn-runner-jobs\"",
            help: "Where job folders live (default: <state_dir>/jobs, or <state_dir>-jobs beside it when job_user is set, since the job user cannot enter the private state folder).",
            check: value::path,
        }
        ca_file: optional<PathBuf> {
            flag: "ca-file",
            env: "FYN_RUNNER_CA_FILE",
            example: "\"/etc/fyn-runner/ca.pem\"",
            help: "PEM file of the CA that signed the control plane's certificate; it replaces the public web roots.",
            check: value::path,
        }
        allow_insecure_transport: switch<bool> {
            flag: "allow-insecure-transport",
            env: "FYN_RUNNER_ALLOW_INSECURE_TRANSPORT",
            example: "false",
            help: "Allow plain ws:// to a host that is not loopback; tokens and job output then cross the network unencrypted.",
            check: value::boolean,
        }
        drain_deadline: defaulted<u64> = "120" {
            flag: "drain-deadline",
            env: "FYN_RUNNER_DRAIN_DEADLINE",
            example: "120",
            help: "Seconds running jobs get to finish once a drain is asked for (fyn-runner drain, the control plane's drain, uninstall; on Windows a stop too), 0 to 2592000 (30 days); on Unix a stop leaves jobs running instead. The service's stop timeout is derived from it: reinstall the service after changing it.",
            check: value::drain_deadline,
        }
        hardware_recheck: defaulted<u64> = "600" {
            flag: "hardware-recheck",
            env: "FYN_RUNNER_HARDWARE_RECHECK",
            example: "600",
            help: "How often, in seconds, the hardware is re-checked while Active (at least 1).",
            check: value::hardware_recheck,
        }
        job_retention_hours: defaulted<u64> = "168" {
            flag: "job-retention-hours",
            env: "FYN_RUNNER_JOB_RETENTION_HOURS",
            example: "168",
            help: "Hours an ended job's folder (its output logs and work/) is kept before it is removed; 0 removes it as soon as the job ends (0 to 87600).",
            check: value::job_retention_hours,
        }
        job_retention_max: defaulted<u64> = "1000" {
            flag: "job-retention-max",
            env: "FYN_RUNNER_JOB_RETENTION_MAX",
            example: "1000",
            help: "How many ended jobs' folders are kept at most, whatever their term: past it the oldest goes first (0 to 1000000). At a job a second, a week's term alone would keep 600,000 folders.",
            check: value::job_retention_max,
        }
        trace_max_bytes: defaulted<u64> = "67108864" {
            flag: "trace-max-bytes",
            env: "FYN_RUNNER_TRACE_MAX_BYTES",
            example: "67108864",
            help: "Size in bytes at which the session trace (<state_dir>/traces) rotates (at least 1024).",
            check: value::trace_max_bytes,
        }
        trace_keep: defaulted<u64> = "8" {
            flag: "trace-keep",
            env: "FYN_RUNNER_TRACE_KEEP",
            example: "8",
            help: "How many trace files to keep (1 to 1000).",
            check: value::trace_keep,
        }
        allow_insecure_transfers: switch<bool> {
            flag: "allow-insecure-transfers",
            env: "FYN_RUNNER_ALLOW_INSECURE_TRANSFERS",
            example: "false",
            help: "Allow job inputs and outputs over plain http:// to a host that is not loopback; their bytes then cross the network unencrypted (inputs are still checked against their sha256).",
            check: value::boolean,
        }
        input_cache_max_bytes: defaulted<u64> = "10737418240" {
            flag: "input-cache-max-bytes",
            env: "FYN_RUNNER_INPUT_CACHE_MAX_BYTES",
            example: "10737418240",
            help: "Size in bytes the cache of job inputs (<state_dir>/cache/inputs) is kept to, least recently used first out; an input larger than this is fetched for each job that needs it. 0 keeps nothing between jobs.",
            check: value::byte_count,
        }
        no_trace: switch<bool> {
            flag: "no-trace",
            env: "FYN_RUNNER_NO_TRACE",
            example: "false",
            help: "Do not record a session trace.",
            check: value::boolean,
        }
        metrics_listen: optional<String> {
            flag: "metrics-listen",
            env: "FYN_RUNNER_METRICS_LISTEN",
            example: "\"127.0.0.1:9464\"",
            help: "Serve /metrics (OpenMetrics text), /healthz and /readyz over HTTP on this IP:PORT (port 0: a free port, logged and shown by status). Off unless set. An address that is not loopback also needs metrics_allow_remote.",
            check: value::listen_address,
        }
        hook_on_connected: optional<PathBuf> {
            flag: "hook-on-connected",
            env: "FYN_RUNNER_HOOK_ON_CONNECTED",
            example: "\"/etc/fyn-runner/hooks/on_connected\"",
            help: "An executable run each time a session reaches Active. See docs/operations.md for its variables.",
            check: value::path,
        }
        hook_on_disconnected: optional<PathBuf> {
            flag: "hook-on-disconnected",
            env: "FYN_RUNNER_HOOK_ON_DISCONNECTED",
            example: "\"/etc/fyn-runner/hooks/on_disconnected\"",
            help: "An executable run when a session that had reached Active is lost (the runner reconnects). See docs/operations.md for its variables.",
            check: value::path,
        }
        hook_on_drain: optional<PathBuf> {
            flag: "hook-on-drain",
            env: "FYN_RUNNER_HOOK_ON_DRAIN",
            example: "\"/etc/fyn-runner/hooks/on_drain\"",
            help: "An executable run when a drain begins. See docs/operations.md for its variables.",
            check: value::path,
        }
        hook_on_stopped: optional<PathBuf> {
            flag: "hook-on-stopped",
            env: "FYN_RUNNER_HOOK_ON_STOPPED",
            example: "\"/etc/fyn-runner/hooks/on_stopped\"",
            help: "An executable run when the runner stops, before it exits. See docs/operations.md for its variables.",
            check: value::path,
        }
        hook_pre_job: optional<PathBuf> {
            flag: "hook-pre-job",
            env: "FYN_RUNNER_HOOK_PRE_JOB",
            example: "\"/etc/fyn-runner/hooks/pre_job\"",
            help: "An executable run when a job is accepted, before its process starts; a failure or timeout fails the job unstarted. See docs/operations.md for its variables.",
            check: value::path,
        }
        hook_post_job: optional<PathBuf> {
            flag: "hook-post-job",
            env: "FYN_RUNNER_HOOK_POST_JOB",
            example: "\"/etc/fyn-runner/hooks/post_job\"",
            help: "An executable run after a job's end is recorded; it cannot change the outcome. See docs/operations.md for its variables.",
            check: value::path,
        }
        hook_timeout: defaulted<u64> = "30" {
            flag: "hook-timeout",
            env: "FYN_RUNNER_HOOK_TIMEOUT",
            example: "30",
            help: "Seconds a hook may run before it is killed (1 to 3600); a pre_job that times out fails its job.",
            check: value::hook_timeout,
        }
        metrics_allow_remote: switch<bool> {
            flag: "metrics-allow-remote",
            env: "FYN_RUNNER_METRICS_ALLOW_REMOTE",
            example: "false",
            help: "Allow metrics_listen on an address that is not loopback (0.0.0.0, a LAN address): whoever reaches it sees the runner's state and job counts, unauthenticated.",
            check: value::boolean,
        }
    }

    /// The settings every command takes.
    GlobalSettings (global: true) {
        log_format: defaulted<LogFormat> = "text" {
            flag: "log-format",
            env: "FYN_RUNNER_LOG_FORMAT",
            example: "\"text\"",
            help: "\"text\" for readable lines, \"json\" for journald and log pipelines; the RUST_LOG filter applies (default: info).",
            check: value::log_format,
            arg: clap::builder::EnumValueParser::<LogFormat>::new(),
        }
    }
}
