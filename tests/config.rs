//! The config file: parsing, the errors an operator sees, writing it back, and the
//! precedence flags > environment > file > defaults.

use std::fs;
use std::path::{Path, PathBuf};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use fyn_runner::config::{self, ConfigError, FileConfig, KEYS, LogFormat, apply_file};

fn write(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("config.toml");
    fs::write(&path, text).expect("write the config");
    path
}

/// Load `text` and return the error's message, asserting it names `key` and the file.
fn error_for(text: &str, key: &str) -> (ConfigError, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), text);
    let error = config::load(&path).expect_err("must be refused");
    let message = error.to_string();
    assert!(
        message.contains(&format!("`{key}`")),
        "message does not name the key {key}: {message}"
    );
    assert!(
        message.contains(&path.display().to_string()),
        "message does not name the file: {message}"
    );
    (error, message)
}

#[test]
fn a_missing_file_is_no_config_unless_it_was_asked_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("absent.toml");
    assert_eq!(config::load(&path).expect("missing is fine"), None);
    let error = config::load_required(&path).expect_err("required");
    assert!(matches!(error, ConfigError::NotFound { .. }));
    assert!(error.to_string().contains("absent.toml"));
}

#[test]
fn an_unreadable_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A folder where the file should be: unreadable as a file even for root.
    let path = dir.path().join("config.toml");
    fs::create_dir(&path).expect("mkdir");
    let error = config::load(&path).expect_err("unreadable");
    assert!(matches!(error, ConfigError::Read { .. }), "{error:?}");
    assert!(error.to_string().contains(&path.display().to_string()));
}

/// An absolute path on this platform: `/var/lib` on Unix is only rooted, not
/// absolute, on Windows (the drive is missing), and the loader would resolve it.
fn absolute(unix_path: &str) -> String {
    if cfg!(windows) {
        format!("C:{unix_path}")
    } else {
        unix_path.to_owned()
    }
}

#[test]
fn every_key_parses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        &format!(
            r#"
server = "wss://api.example.com"
name = "gpu-box-1"
slots = 4
state_dir = "{}"
job_user = "fyn-runner-job"
jobs_dir = "jobs"
ca_file = "ca.pem"
allow_insecure_transport = true
allow_insecure_transfers = true
input_cache_max_bytes = 0
drain_deadline = 0
hardware_recheck = 60
job_retention_hours = 0
job_retention_max = 50
trace_max_bytes = 1048576
trace_keep = 3
no_trace = false
metrics_listen = "127.0.0.1:9464"
metrics_allow_remote = false
hook_on_connected = "/usr/local/lib/fyn/up"
hook_on_disconnected = "/usr/local/lib/fyn/down"
hook_on_drain = "/usr/local/lib/fyn/drain"
hook_on_stopped = "/usr/local/lib/fyn/stopped"
hook_pre_job = "hooks/pre"
hook_post_job = "/usr/local/lib/fyn/post"
hook_timeout = 10
log_format = "json"
"#,
            absolute("/var/lib/fyn-runner")
        ),
    );
    let config = config::load(&path).expect("valid").expect("present");
    assert_eq!(
        config,
        FileConfig {
            server: Some("wss://api.example.com".into()),
            name: Some("gpu-box-1".into()),
            slots: Some(4),
            state_dir: Some(absolute("/var/lib/fyn-runner").into()),
            job_user: Some("fyn-runner-job".into()),
            // Relative to the file's folder.
            jobs_dir: Some(dir.path().join("jobs")),
            ca_file: Some(dir.path().join("ca.pem")),
            allow_insecure_transport: Some(true),
            allow_insecure_transfers: Some(true),
            input_cache_max_bytes: Some(0),
            drain_deadline: Some(0),
            hardware_recheck: Some(60),
            job_retention_hours: Some(0),
            job_retention_max: Some(50),
            trace_max_bytes: Some(1 << 20),
            trace_keep: Some(3),
            no_trace: Some(false),
            metrics_listen: Some("127.0.0.1:9464".into()),
            metrics_allow_remote: Some(false),
            hook_on_connected: Some(absolute("/usr/local/lib/fyn/up").into()),
            hook_on_disconnected: Some(absolute("/usr/local/lib/fyn/down").into()),
            hook_on_drain: Some(absolute("/usr/local/lib/fyn/drain").into()),
            hook_on_stopped: Some(absolute("/usr/local/lib/fyn/stopped").into()),
            // Relative to the file's folder, like every path.
            hook_pre_job: Some(dir.path().join("hooks/pre")),
            hook_post_job: Some(absolute("/usr/local/lib/fyn/post").into()),
            hook_timeout: Some(10),
            log_format: Some(LogFormat::Json),
        }
    );
}

#[test]
fn an_unknown_key_is_named_with_its_line() {
    let (error, message) = error_for("server = \"wss://a.example\"\nslotz = 2\n", "slotz");
    match error {
        ConfigError::Invalid { key, line, .. } => {
            assert_eq!(key, "slotz");
            assert_eq!(line, 2);
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert!(message.contains("unknown field"), "{message}");
}

#[test]
fn a_wrong_type_is_named() {
    let (error, message) = error_for("slots = \"two\"\n", "slots");
    assert!(matches!(error, ConfigError::Invalid { line: 1, .. }));
    assert!(message.contains("invalid type"), "{message}");
    assert!(message.contains("a whole number"), "{message}");
}

#[test]
fn negative_and_out_of_range_numbers_are_named() {
    let (_, message) = error_for("drain_deadline = -5\n", "drain_deadline");
    assert!(
        message.contains("must not be negative, got -5"),
        "{message}"
    );
    let (_, message) = error_for("slots = -1\n", "slots");
    assert!(message.contains("must not be negative"), "{message}");
    let (_, message) = error_for("slots = 0\n", "slots");
    assert!(message.contains("between 1 and 1024, got 0"), "{message}");
    let (_, message) = error_for("trace_keep = 5000\n", "trace_keep");
    assert!(message.contains("between 1 and 1000"), "{message}");
    let (_, message) = error_for("hardware_recheck = 0\n", "hardware_recheck");
    assert!(message.contains("between 1 and"), "{message}");
    // Seconds written where hours are meant: caught, not kept for a century.
    let (_, message) = error_for("job_retention_hours = 604800\n", "job_retention_hours");
    assert!(message.contains("between 0 and 87600"), "{message}");
}

#[test]
fn bad_values_of_other_kinds_are_named() {
    error_for("log_format = \"xml\"\n", "log_format");
    let (_, message) = error_for("server = \"http://api.example.com\"\n", "server");
    assert!(message.contains("wss://"), "{message}");
    error_for("name = \"  \"\n", "name");
    error_for("no_trace = \"yes\"\n", "no_trace");
    error_for("\n\n[run]\nslots = 2\n", "run");
}

#[test]
fn a_token_is_refused_with_the_reason() {
    let (error, message) = error_for("server = \"wss://a.example\"\ntoken = \"abc\"\n", "token");
    assert!(
        matches!(error, ConfigError::TokenInFile { line: 2, .. }),
        "{error:?}"
    );
    assert!(message.contains("never written to disk"), "{message}");
    assert!(message.contains("--token"), "{message}");
    assert!(
        !message.contains("abc"),
        "the token must not be echoed: {message}"
    );
}

#[test]
fn broken_toml_is_a_syntax_error_with_its_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "slots = 2\nname = \"unterminated\n");
    let error = config::load(&path).expect_err("broken");
    match &error {
        ConfigError::Syntax { line, .. } => assert_eq!(*line, 2),
        other => panic!("expected Syntax, got {other:?}"),
    }
    assert!(error.to_string().contains(&path.display().to_string()));
}

fn full_config() -> FileConfig {
    FileConfig {
        server: Some("wss://api.example.com/runner/v1".into()),
        name: Some("box \"one\" \\ ü".into()),
        slots: Some(8),
        state_dir: Some(absolute("/var/lib/fyn runner").into()),
        job_user: Some("jobs".into()),
        jobs_dir: Some(absolute("/srv/fyn jobs").into()),
        ca_file: Some(absolute("/etc/fyn-runner/ca.pem").into()),
        allow_insecure_transport: Some(false),
        allow_insecure_transfers: Some(false),
        input_cache_max_bytes: Some(1 << 40),
        drain_deadline: Some(300),
        hardware_recheck: Some(900),
        job_retention_hours: Some(720),
        job_retention_max: Some(5000),
        trace_max_bytes: Some(1234),
        trace_keep: Some(2),
        no_trace: Some(true),
        metrics_listen: Some("[::1]:9464".into()),
        metrics_allow_remote: Some(true),
        hook_on_connected: Some(absolute("/etc/fyn-runner/hooks/up").into()),
        hook_on_disconnected: Some(absolute("/etc/fyn-runner/hooks/down").into()),
        hook_on_drain: Some(absolute("/etc/fyn-runner/hooks/drain").into()),
        hook_on_stopped: Some(absolute("/etc/fyn-runner/hooks/stopped").into()),
        hook_pre_job: Some(absolute("/etc/fyn-runner/hooks/pre job").into()),
        hook_post_job: Some(absolute("/etc/fyn-runner/hooks/post").into()),
        hook_timeout: Some(45),
        log_format: Some(LogFormat::Text),
    }
}

#[test]
fn render_round_trips_every_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = full_config();
    let text = config::render(&config).expect("renders");
    let path = write(dir.path(), &text);
    assert_eq!(config::load(&path).expect("valid"), Some(config));
    assert!(text.contains("never written to disk"));
    assert!(!text.contains("\ntoken"));
}

#[test]
fn an_empty_config_renders_every_key_commented_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config::render(&FileConfig::default()).expect("renders");
    for doc in KEYS {
        assert!(
            text.contains(&format!("\n# {} = {}\n", doc.key, doc.example)),
            "{} missing",
            doc.key
        );
        assert!(text.contains(doc.env), "{} missing", doc.env);
    }
    // Uncommenting every example gives a valid file.
    let uncommented: String = text
        .lines()
        .map(|l| {
            match KEYS
                .iter()
                .find(|d| l.starts_with(&format!("# {} = ", d.key)))
            {
                Some(_) => l.trim_start_matches("# "),
                None => l,
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let path = write(dir.path(), &uncommented);
    let all = config::load(&path)
        .expect("examples are valid")
        .expect("present");
    assert_eq!(all.slots, Some(1));
    assert_eq!(all.log_format, Some(LogFormat::Text));
}

#[cfg(unix)]
#[test]
fn a_path_that_is_not_utf8_is_not_written_lossily() {
    use std::os::unix::ffi::OsStrExt;
    let config = FileConfig {
        state_dir: Some(PathBuf::from(std::ffi::OsStr::from_bytes(b"/var/\xff"))),
        ..FileConfig::default()
    };
    let error = config::render(&config).expect_err("not UTF-8");
    assert!(error.to_string().contains("state_dir"), "{error}");
}

#[test]
fn the_configuration_doc_covers_every_key() {
    let doc =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md"))
            .expect("docs/configuration.md");
    for key in KEYS {
        for word in [key.key, key.flag, key.env] {
            assert!(
                doc.contains(&format!("`{word}`")),
                "docs/configuration.md lacks `{word}`"
            );
        }
    }
}

// Precedence, with a small command shaped like `run`: an optional value without a
// default, values with defaults, a boolean flag, a global flag.

#[derive(Debug, Parser)]
struct TestCli {
    #[arg(
        long,
        global = true,
        default_value = "text",
        env = "FYN_TEST_CFG_LOG_FORMAT"
    )]
    log_format: String,
    #[command(subcommand)]
    command: TestCommand,
}

#[derive(Debug, Subcommand)]
enum TestCommand {
    Run(TestRunArgs),
}

#[derive(Debug, clap::Args)]
struct TestRunArgs {
    #[arg(long, env = "FYN_TEST_CFG_NAME")]
    name: Option<String>,
    #[arg(long, env = "FYN_TEST_CFG_SLOTS", default_value_t = 1)]
    slots: u32,
    #[arg(long, env = "FYN_TEST_CFG_DRAIN_DEADLINE", default_value_t = 120)]
    drain_deadline: u64,
    #[arg(long, env = "FYN_TEST_CFG_NO_TRACE")]
    no_trace: bool,
}

/// Parse `argv` and apply `file` the way the CLI does; returns the merged `run` args
/// and the global log format.
fn merged(argv: &[&str], file: &FileConfig) -> (TestRunArgs, String) {
    let matches = TestCli::command()
        .try_get_matches_from(argv)
        .expect("valid argv");
    let mut cli = TestCli::from_arg_matches(&matches).expect("matches");
    let (_, run) = matches.subcommand().expect("a subcommand");
    let TestCommand::Run(args) = &mut cli.command;
    apply_file(run, "name", &mut args.name, file.name.clone());
    apply_file(run, "slots", &mut args.slots, file.slots);
    apply_file(
        run,
        "drain_deadline",
        &mut args.drain_deadline,
        file.drain_deadline,
    );
    apply_file(run, "no_trace", &mut args.no_trace, file.no_trace);
    apply_file(
        run,
        "log_format",
        &mut cli.log_format,
        file.log_format.map(|f| f.as_str().to_owned()),
    );
    let TestCommand::Run(args) = cli.command;
    (args, cli.log_format)
}

fn file() -> FileConfig {
    FileConfig {
        name: Some("from-file".into()),
        slots: Some(4),
        drain_deadline: Some(30),
        no_trace: Some(true),
        log_format: Some(LogFormat::Json),
        ..FileConfig::default()
    }
}

#[test]
fn the_file_beats_the_defaults() {
    let (args, log_format) = merged(&["fyn", "run"], &file());
    assert_eq!(args.name.as_deref(), Some("from-file"));
    assert_eq!(args.slots, 4);
    assert_eq!(args.drain_deadline, 30);
    assert!(args.no_trace);
    assert_eq!(log_format, "json");
}

#[test]
fn flags_beat_the_file_even_when_they_repeat_the_default() {
    let (args, log_format) = merged(
        &[
            "fyn",
            "run",
            "--slots",
            "1",
            "--name",
            "from-flag",
            "--log-format",
            "text",
        ],
        &file(),
    );
    assert_eq!(args.slots, 1, "an explicit --slots 1 is not the default");
    assert_eq!(args.name.as_deref(), Some("from-flag"));
    assert_eq!(
        log_format, "text",
        "a global flag after the subcommand counts"
    );
    // What was not given still comes from the file.
    assert_eq!(args.drain_deadline, 30);
    assert!(args.no_trace);
}

#[test]
fn keys_absent_from_the_file_keep_the_defaults() {
    let (args, log_format) = merged(&["fyn", "run"], &FileConfig::default());
    assert_eq!((args.name, args.slots, args.drain_deadline), (None, 1, 120));
    assert!(!args.no_trace);
    assert_eq!(log_format, "text");
}
