//! The one list of config keys: what each means, its flag, its environment variable
//! and its default. `render` writes the commented file from it and a test holds
//! `docs/configuration.md` to it, so the three cannot drift apart.

/// One key of the config file and the `run` flag it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyDoc {
    /// The key in the file; also the clap argument id of the flag.
    pub key: &'static str,
    pub flag: &'static str,
    pub env: &'static str,
    /// The built-in default as the CLI states it, or `None` where there is none.
    pub default: Option<&'static str>,
    /// A TOML value shown, commented out, when the key is not set.
    pub example: &'static str,
    pub help: &'static str,
}

/// Every key, in the order the rendered file lists them.
pub const KEYS: &[KeyDoc] = &[
    KeyDoc {
        key: "server",
        flag: "--server",
        env: "FYN_RUNNER_SERVER",
        default: None,
        example: "\"wss://api.example.com\"",
        help: "The control plane, e.g. wss://api.example.com (the runner path /runner/v1 is added when the URL has no path).",
    },
    KeyDoc {
        key: "name",
        flag: "--name",
        env: "FYN_RUNNER_NAME",
        default: None,
        example: "\"gpu-box-1\"",
        help: "The name the control plane shows for this runner (default: the host name).",
    },
    KeyDoc {
        key: "slots",
        flag: "--slots",
        env: "FYN_RUNNER_SLOTS",
        default: Some("1"),
        example: "1",
        help: "How many jobs may run at once (1 to 1024).",
    },
    KeyDoc {
        key: "state_dir",
        flag: "--state-dir",
        env: "FYN_RUNNER_STATE_DIR",
        default: None,
        example: "\"/var/lib/fyn-runner\"",
        help: "Where the identity, the outbox and the job area live (default: /var/lib/fyn-runner for root, $XDG_STATE_HOME/fyn-runner otherwise).",
    },
    KeyDoc {
        key: "ca_file",
        flag: "--ca-file",
        env: "FYN_RUNNER_CA_FILE",
        default: None,
        example: "\"/etc/fyn-runner/ca.pem\"",
        help: "PEM file of the CA that signed the control plane's certificate; it replaces the public web roots.",
    },
    KeyDoc {
        key: "allow_insecure_transport",
        flag: "--allow-insecure-transport",
        env: "FYN_RUNNER_ALLOW_INSECURE_TRANSPORT",
        default: Some("false"),
        example: "false",
        help: "Allow plain ws:// to a host that is not loopback; tokens and job output then cross the network unencrypted.",
    },
    KeyDoc {
        key: "drain_deadline",
        flag: "--drain-deadline",
        env: "FYN_RUNNER_DRAIN_DEADLINE",
        default: Some("120"),
        example: "120",
        help: "Seconds running jobs get to finish after a stop is requested. The service's stop timeout is derived from it: reinstall the service after changing it.",
    },
    KeyDoc {
        key: "hardware_recheck",
        flag: "--hardware-recheck",
        env: "FYN_RUNNER_HARDWARE_RECHECK",
        default: Some("600"),
        example: "600",
        help: "How often, in seconds, the hardware is re-checked while Active (at least 1).",
    },
    KeyDoc {
        key: "job_retention_hours",
        flag: "--job-retention-hours",
        env: "FYN_RUNNER_JOB_RETENTION_HOURS",
        default: Some("168"),
        example: "168",
        help: "Hours an ended job's folder (its output logs and work/) is kept before it is removed; 0 removes it as soon as the job ends (0 to 87600).",
    },
    KeyDoc {
        key: "trace_max_bytes",
        flag: "--trace-max-bytes",
        env: "FYN_RUNNER_TRACE_MAX_BYTES",
        default: Some("67108864"),
        example: "67108864",
        help: "Size in bytes at which the session trace (<state_dir>/traces) rotates.",
    },
    KeyDoc {
        key: "trace_keep",
        flag: "--trace-keep",
        env: "FYN_RUNNER_TRACE_KEEP",
        default: Some("8"),
        example: "8",
        help: "How many trace files to keep (1 to 1000).",
    },
    KeyDoc {
        key: "no_trace",
        flag: "--no-trace",
        env: "FYN_RUNNER_NO_TRACE",
        default: Some("false"),
        example: "false",
        help: "Do not record a session trace.",
    },
    KeyDoc {
        key: "log_format",
        flag: "--log-format",
        env: "FYN_RUNNER_LOG_FORMAT",
        default: Some("\"text\""),
        example: "\"text\"",
        help: "\"text\" for readable lines, \"json\" for journald and log pipelines.",
    },
];
