//! Service definitions and the service-manager command sequences, checked without a
//! service manager: units through `systemd-analyze verify`, plists through a strict
//! little property-list reader, commands through the recording runner.
// Unix only: systemd and launchd; `tests/windows_service.rs` covers the Windows service.
#![cfg(unix)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use fyn_runner::service::{
    self, Host, Launchd, Manager, RecordingRunner, STOP_MARGIN_SECS, Scope, ServiceError,
    ServiceManager, ServiceSpec, ServiceState, Systemd, launchd, systemd,
};

const UID: u32 = 501;

fn spec(scope: Scope) -> ServiceSpec {
    let (config, state) = match scope {
        Scope::System => ("/etc/fyn-runner/config.toml", "/var/lib/fyn-runner"),
        Scope::User => (
            "/home/ada/.config/fyn-runner/config.toml",
            "/home/ada/.local/state/fyn-runner",
        ),
    };
    ServiceSpec::new(
        PathBuf::from("/usr/local/bin/fyn-runner"),
        PathBuf::from(config),
        PathBuf::from(state),
        scope,
        120,
    )
}

fn host(root: &Path) -> Host {
    Host {
        root: root.to_owned(),
        home: Some(PathBuf::from("/home/ada")),
        xdg_config_home: None,
        uid: Some(UID),
    }
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).expect("metadata").mode() & 0o7777
}

// ---------------------------------------------------------------- systemd unit text

/// `systemd-analyze verify` the unit, failing on any complaint: it exits 0 for
/// warnings such as an unknown key, so its output must be empty too.
fn verify(unit: &str, scope: Scope) {
    let analyze = Path::new("/usr/bin/systemd-analyze");
    if !analyze.exists() {
        assert!(
            std::env::var_os("FYN_RUNNER_SKIP_SYSTEMD_VERIFY").is_some(),
            "systemd-analyze is missing; install systemd or set FYN_RUNNER_SKIP_SYSTEMD_VERIFY=1"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(systemd::UNIT_NAME);
    fs::write(&path, unit).expect("write unit");
    let runtime = dir.path().join("runtime");
    fs::create_dir(&runtime).expect("runtime dir");
    fs::set_permissions(&runtime, fs::Permissions::from_mode(0o700)).expect("chmod");
    let mut command = Command::new(analyze);
    if scope == Scope::User {
        // The user manager needs a runtime folder; give it a private one.
        command.arg("--user").env("XDG_RUNTIME_DIR", &runtime);
    }
    let output = command
        .arg("verify")
        .arg(&path)
        .env("HOME", dir.path())
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .expect("run systemd-analyze");
    let said = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && said.trim().is_empty(),
        "systemd-analyze verify complained ({}):\n{said}\n--- unit ---\n{unit}",
        output.status
    );
}

/// A spec whose binary exists and is executable (verify checks ExecStart), in a
/// folder whose name needs quoting and escaping.
fn verifiable(scope: Scope, dir: &Path) -> ServiceSpec {
    let bin = dir.join("my bin 100%$x");
    fs::create_dir_all(&bin).expect("bin dir");
    let binary = bin.join("fyn-runner");
    fs::write(&binary, "#!/bin/sh\nexit 0\n").expect("fake binary");
    fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).expect("chmod");
    ServiceSpec {
        binary,
        config_path: dir.join("conf dir/config.toml"),
        ..spec(scope)
    }
}

#[test]
fn the_system_unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = verifiable(Scope::System, dir.path());
    let unit = systemd::render(&spec);
    assert!(unit.contains("StateDirectory=fyn-runner\n"), "{unit}");
    verify(&unit, Scope::System);
    // With an account (root: the one that exists everywhere; verify resolves it).
    let unit = systemd::render(&ServiceSpec {
        user: Some("root".into()),
        ..spec
    });
    assert!(unit.contains("\nUser=root\n"));
    verify(&unit, Scope::System);
}

#[test]
fn the_user_unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = systemd::render(&verifiable(Scope::User, dir.path()));
    verify(&unit, Scope::User);
}

#[test]
fn a_broken_unit_fails_the_verify_helper() {
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = systemd::render(&verifiable(Scope::System, dir.path()));
    let broken = unit.replace("KillMode=process", "KillMode=process\nKillModeTypo=yes");
    let result = std::panic::catch_unwind(|| verify(&broken, Scope::System));
    if Path::new("/usr/bin/systemd-analyze").exists() {
        assert!(result.is_err(), "an unknown key must fail the check");
    }
}

/// The directives of a unit, `Key=value` lines in order, comments left out.
fn directives(unit: &str) -> Vec<&str> {
    unit.lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .collect()
}

#[test]
fn the_stop_timeout_is_the_drain_deadline_plus_the_margin() {
    for deadline in [0, 1, 120, 600, 3600, service::MAX_DRAIN_DEADLINE_SECS] {
        let spec = ServiceSpec {
            drain_deadline_secs: deadline,
            ..spec(Scope::System)
        };
        let unit = systemd::render(&spec);
        let expected = format!("TimeoutStopSec={}", deadline + STOP_MARGIN_SECS);
        let stops: Vec<_> = directives(&unit)
            .into_iter()
            .filter(|l| l.starts_with("TimeoutStopSec="))
            .collect();
        assert_eq!(stops, [expected.as_str()], "deadline {deadline}");
        assert_eq!(spec.stop_timeout_secs(), deadline + 60);
    }
}

#[test]
fn the_system_unit_stops_the_runner_alone_and_keeps_jobs_their_devices() {
    let unit = systemd::render(&ServiceSpec {
        user: Some("fyn".into()),
        ..spec(Scope::System)
    });
    let lines = directives(&unit);
    for expected in [
        "Type=notify",
        "ExecStart=/usr/local/bin/fyn-runner run --config /etc/fyn-runner/config.toml",
        "User=fyn",
        "Environment=RUST_LOG=info",
        "Restart=on-failure",
        "RestartSec=5",
        "SuccessExitStatus=2",
        "RestartPreventExitStatus=3 4 5 6 7",
        "KillSignal=SIGTERM",
        // A stop or restart leaves the jobs' supervisors, and so the jobs, running.
        "KillMode=process",
        "TimeoutStopSec=180",
        "TimeoutStartSec=infinity",
        "OOMPolicy=continue",
        "StateDirectory=fyn-runner",
        "StateDirectoryMode=0700",
        "NoNewPrivileges=yes",
        "ProtectSystem=full",
        "ProtectControlGroups=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelTunables=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "After=network-online.target",
        "Wants=network-online.target",
        "WantedBy=multi-user.target",
    ] {
        assert!(lines.contains(&expected), "missing {expected}:\n{unit}");
    }
    // These would take GPUs, /tmp, home folders or JITs away from jobs.
    for absent in [
        "PrivateDevices",
        "DevicePolicy",
        "PrivateTmp",
        "ProtectHome",
        "MemoryDenyWriteExecute",
        "ProtectClock",
        "ProtectSystem=strict",
        "SystemCallFilter",
        "RestrictNamespaces",
    ] {
        assert!(!unit.contains(absent), "{absent} must not be set:\n{unit}");
    }
}

#[test]
fn the_user_unit_has_no_user_no_network_target_and_no_namespaces() {
    let unit = systemd::render(&spec(Scope::User));
    let lines = directives(&unit);
    assert!(lines.contains(&"WantedBy=default.target"));
    for absent in [
        "User=",
        "network-online",
        "ProtectSystem",
        "ProtectKernel",
        "StateDirectory",
    ] {
        assert!(!unit.contains(absent), "{absent} in a user unit:\n{unit}");
    }
    assert!(lines.contains(&"NoNewPrivileges=yes"));
}

#[test]
fn state_directory_is_only_claimed_when_it_is_the_one_systemd_would_make() {
    let unit = systemd::render(&ServiceSpec {
        state_dir: "/srv/runner".into(),
        ..spec(Scope::System)
    });
    assert!(!unit.contains("StateDirectory"), "{unit}");
}

// ------------------------------------------------------------------- launchd plist

/// A property-list value, as a strict reader of the XML format sees it.
#[derive(Debug, Clone, PartialEq)]
enum Plist {
    Dict(Vec<(String, Plist)>),
    Array(Vec<Plist>),
    String(String),
    Integer(i64),
    Bool(bool),
}

impl Plist {
    fn get(&self, key: &str) -> Option<&Plist> {
        match self {
            Plist::Dict(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

#[derive(Debug, PartialEq)]
enum Token {
    Open(String),
    Close(String),
    Empty(String),
    Text(String),
}

fn unescape(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let end = rest[i..].find(';').expect("unterminated entity") + i;
        out.push(match &rest[i + 1..end] {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            other => panic!("unknown entity &{other};"),
        });
        rest = &rest[end + 1..];
    }
    assert!(!rest.contains('<') && !rest.contains('>'));
    out + rest
}

fn tokenize(xml: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut rest = xml;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('<') {
            let end = after.find('>').expect("unclosed tag");
            let tag = &after[..end];
            rest = &after[end + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                tokens.push(Token::Close(name.to_owned()));
            } else if let Some(name) = tag.strip_suffix('/') {
                tokens.push(Token::Empty(name.trim().to_owned()));
            } else {
                let name = tag.split_whitespace().next().expect("tag name");
                tokens.push(Token::Open(name.to_owned()));
            }
        } else {
            let end = rest.find('<').unwrap_or(rest.len());
            if !rest[..end].trim().is_empty() {
                tokens.push(Token::Text(unescape(&rest[..end])));
            }
            rest = &rest[end..];
        }
    }
    tokens
}

fn value(tokens: &mut std::vec::IntoIter<Token>) -> Plist {
    let close = |tokens: &mut std::vec::IntoIter<Token>, name: &str| {
        assert_eq!(
            tokens.next(),
            Some(Token::Close(name.into())),
            "</{name}> expected"
        );
    };
    match tokens.next().expect("a value") {
        Token::Empty(name) if name == "true" => Plist::Bool(true),
        Token::Empty(name) if name == "false" => Plist::Bool(false),
        Token::Open(name) if name == "string" => match tokens.next() {
            Some(Token::Text(text)) => {
                close(tokens, "string");
                Plist::String(text)
            }
            Some(Token::Close(c)) if c == "string" => Plist::String(String::new()),
            other => panic!("bad string: {other:?}"),
        },
        Token::Open(name) if name == "integer" => match tokens.next() {
            Some(Token::Text(text)) => {
                close(tokens, "integer");
                Plist::Integer(text.trim().parse().expect("an integer"))
            }
            other => panic!("bad integer: {other:?}"),
        },
        Token::Open(name) if name == "array" => {
            let mut items = Vec::new();
            loop {
                if tokens.as_slice().first() == Some(&Token::Close("array".into())) {
                    tokens.next();
                    return Plist::Array(items);
                }
                items.push(value(tokens));
            }
        }
        Token::Open(name) if name == "dict" => {
            let mut entries: Vec<(String, Plist)> = Vec::new();
            loop {
                match tokens.next().expect("dict entry") {
                    Token::Close(c) if c == "dict" => return Plist::Dict(entries),
                    Token::Open(k) if k == "key" => {
                        let Some(Token::Text(key)) = tokens.next() else {
                            panic!("empty key")
                        };
                        close(tokens, "key");
                        assert!(
                            entries.iter().all(|(k, _)| *k != key),
                            "duplicate key {key}"
                        );
                        let v = value(tokens);
                        entries.push((key, v));
                    }
                    other => panic!("expected <key> in <dict>, got {other:?}"),
                }
            }
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// Parse an XML property list strictly: the header, one `<plist>` holding one value,
/// balanced tags, known elements only, no duplicate keys.
fn parse_plist(xml: &str) -> Plist {
    let rest = xml
        .strip_prefix("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n")
        .expect("XML declaration");
    let rest = rest
        .strip_prefix(
            "<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \
             \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n",
        )
        .expect("plist DOCTYPE");
    let mut tokens = tokenize(rest).into_iter();
    assert_eq!(tokens.next(), Some(Token::Open("plist".into())));
    let root = value(&mut tokens);
    assert_eq!(tokens.next(), Some(Token::Close("plist".into())));
    assert_eq!(tokens.next(), None, "nothing after </plist>");
    root
}

fn string(s: &str) -> Plist {
    Plist::String(s.to_owned())
}

#[test]
fn the_plist_parses_and_has_the_required_keys() {
    let log = Path::new("/Library/Logs/fyn-runner/runner.log");
    let spec = ServiceSpec {
        user: Some("fyn".into()),
        config_path: "/etc/fyn & co/<config>.toml".into(),
        drain_deadline_secs: 300,
        ..spec(Scope::System)
    };
    let plist = parse_plist(&launchd::render(&spec, log));
    assert_eq!(plist.get("Label"), Some(&string("dev.fyn-runner.runner")));
    assert_eq!(
        plist.get("ProgramArguments"),
        Some(&Plist::Array(vec![
            string("/usr/local/bin/fyn-runner"),
            string("run"),
            string("--config"),
            string("/etc/fyn & co/<config>.toml"),
        ]))
    );
    assert_eq!(plist.get("UserName"), Some(&string("fyn")));
    assert_eq!(plist.get("RunAtLoad"), Some(&Plist::Bool(true)));
    assert_eq!(
        plist.get("KeepAlive"),
        Some(&Plist::Dict(vec![("Crashed".into(), Plist::Bool(true))]))
    );
    assert_eq!(plist.get("ExitTimeOut"), Some(&Plist::Integer(360)));
    // A stop leaves the jobs' supervisors, and so the jobs, running.
    assert_eq!(plist.get("AbandonProcessGroup"), Some(&Plist::Bool(true)));
    assert_eq!(plist.get("ProcessType"), Some(&string("Interactive")));
    let log = string("/Library/Logs/fyn-runner/runner.log");
    assert_eq!(plist.get("StandardOutPath"), Some(&log));
    assert_eq!(plist.get("StandardErrorPath"), Some(&log));
    let env = plist.get("EnvironmentVariables").expect("environment");
    assert_eq!(env.get("RUST_LOG"), Some(&string("info")));
}

#[test]
fn a_user_agent_plist_has_no_user_name() {
    let plist = parse_plist(&launchd::render(
        &spec(Scope::User),
        Path::new("/home/ada/Library/Logs/fyn-runner/runner.log"),
    ));
    assert_eq!(plist.get("UserName"), None);
    assert_eq!(plist.get("ExitTimeOut"), Some(&Plist::Integer(180)));
}

#[test]
fn the_plist_reader_rejects_broken_lists() {
    let good = launchd::render(&spec(Scope::System), Path::new("/l.log"));
    for broken in [
        good.replace("</array>", ""),
        good.replace("<key>RunAtLoad</key>", "<key>Label</key>"),
        good.replace("<true/>", "<yes/>"),
        good.replace("&amp;", "&").replace("/usr/local", "/a&b"),
    ] {
        assert!(std::panic::catch_unwind(|| parse_plist(&broken)).is_err());
    }
}

// ------------------------------------------------------------- systemctl sequences

fn systemd_in<'r>(
    root: &Path,
    scope: Scope,
    runner: &'r RecordingRunner,
) -> Systemd<&'r RecordingRunner> {
    Systemd::new(scope, host(root), runner)
}

const SYSTEM_UNIT: &str = "etc/systemd/system/fyn-runner.service";
const USER_UNIT: &str = "home/ada/.config/systemd/user/fyn-runner.service";

#[test]
fn systemd_system_install_writes_enables_and_starts() {
    let root = tempfile::tempdir().expect("tempdir");
    let runner = RecordingRunner::new();
    let manager = systemd_in(root.path(), Scope::System, &runner);
    let installed = manager.install(&spec(Scope::System)).expect("install");
    assert_eq!(
        runner.lines(),
        [
            "systemctl daemon-reload",
            "systemctl enable fyn-runner.service",
            "systemctl start --no-block fyn-runner.service",
        ]
    );
    let unit = root.path().join(SYSTEM_UNIT);
    assert_eq!(
        fs::read_to_string(&unit).expect("unit written"),
        systemd::render(&spec(Scope::System))
    );
    assert_eq!(mode_of(&unit), 0o644);
    assert_eq!(
        installed.definition,
        Path::new("/etc/systemd/system/fyn-runner.service")
    );
    assert_eq!(installed.logs, "journalctl -u fyn-runner.service");
}

#[test]
fn systemd_user_install_uses_the_user_manager_and_lingers() {
    let root = tempfile::tempdir().expect("tempdir");
    let runner = RecordingRunner::new();
    let manager = systemd_in(root.path(), Scope::User, &runner);
    let installed = manager.install(&spec(Scope::User)).expect("install");
    assert_eq!(
        runner.lines(),
        [
            "systemctl --user daemon-reload",
            "systemctl --user enable fyn-runner.service",
            "loginctl enable-linger 501",
            "systemctl --user start --no-block fyn-runner.service",
        ]
    );
    assert!(root.path().join(USER_UNIT).is_file());
    assert_eq!(installed.logs, "journalctl --user -u fyn-runner.service");
}

#[test]
fn systemd_user_units_follow_xdg_config_home() {
    let root = tempfile::tempdir().expect("tempdir");
    let host = Host {
        xdg_config_home: Some("/cfg".into()),
        ..host(root.path())
    };
    assert_eq!(
        systemd::unit_path(Scope::User, &host).expect("path"),
        Path::new("/cfg/systemd/user/fyn-runner.service")
    );
    let homeless = Host {
        home: None,
        ..host.clone()
    };
    assert!(
        systemd::unit_path(
            Scope::User,
            &Host {
                xdg_config_home: None,
                ..homeless
            }
        )
        .is_err()
    );
}

#[test]
fn a_failing_enable_names_the_command_and_rolls_the_unit_back() {
    let root = tempfile::tempdir().expect("tempdir");
    let runner = RecordingRunner::new();
    runner.respond(
        "systemctl enable",
        1,
        "",
        "Failed to enable unit: Access denied\n",
    );
    let manager = systemd_in(root.path(), Scope::System, &runner);
    let error = manager
        .install(&spec(Scope::System))
        .expect_err("enable fails");
    let message = error.to_string();
    assert!(
        message.contains("`systemctl enable fyn-runner.service` failed"),
        "{message}"
    );
    assert!(
        message.contains("Failed to enable unit: Access denied"),
        "{message}"
    );
    assert!(message.contains("rolled back"), "{message}");
    assert!(matches!(error, ServiceError::RolledBack { ref problems, .. } if problems.is_empty()));
    assert!(
        !root.path().join(SYSTEM_UNIT).exists(),
        "the unit must be removed"
    );
    assert_eq!(
        runner.lines(),
        [
            "systemctl daemon-reload",
            "systemctl enable fyn-runner.service",
            "systemctl daemon-reload",
        ]
    );
}

#[test]
fn a_failing_start_disables_and_removes_the_unit() {
    let root = tempfile::tempdir().expect("tempdir");
    let runner = RecordingRunner::new();
    runner.respond("systemctl --user start", 1, "", "Unit has a bad setting");
    let manager = systemd_in(root.path(), Scope::User, &runner);
    let error = manager
        .install(&spec(Scope::User))
        .expect_err("start fails");
    assert!(error.to_string().contains("Unit has a bad setting"));
    assert!(!root.path().join(USER_UNIT).exists());
    assert_eq!(
        runner.lines()[4..],
        [
            "systemctl --user disable fyn-runner.service",
            "systemctl --user daemon-reload",
        ]
    );
}

#[test]
fn a_failing_linger_is_rolled_back_too_and_rollback_problems_are_reported() {
    let root = tempfile::tempdir().expect("tempdir");
    let runner = RecordingRunner::new();
    runner
        .respond(
            "loginctl enable-linger",
            1,
            "",
            "Could not enable linger: Access denied",
        )
        .respond("systemctl --user disable", 1, "", "disable broke too");
    let manager = systemd_in(root.path(), Scope::User, &runner);
    let error = manager
        .install(&spec(Scope::User))
        .expect_err("linger fails");
    let message = error.to_string();
    assert!(message.contains("loginctl enable-linger 501"), "{message}");
    assert!(
        message.contains("except: `systemctl --user disable"),
        "{message}"
    );
    assert!(!root.path().join(USER_UNIT).exists());
}

#[test]
fn a_missing_systemctl_is_named_and_rolled_back() {
    let root = tempfile::tempdir().expect("tempdir");
    let runner = RecordingRunner::new();
    runner.fail_to_spawn("systemctl");
    let manager = systemd_in(root.path(), Scope::System, &runner);
    let error = manager
        .install(&spec(Scope::System))
        .expect_err("no systemctl");
    assert!(
        error
            .to_string()
            .contains("cannot run `systemctl daemon-reload`"),
        "{error}"
    );
    assert!(!root.path().join(SYSTEM_UNIT).exists());
    assert_eq!(runner.lines(), ["systemctl daemon-reload"]);
}

#[test]
fn install_refuses_to_overwrite_and_checks_the_spec() {
    let root = tempfile::tempdir().expect("tempdir");
    let runner = RecordingRunner::new();
    let manager = systemd_in(root.path(), Scope::System, &runner);
    let unit = root.path().join(SYSTEM_UNIT);
    fs::create_dir_all(unit.parent().expect("parent")).expect("mkdir");
    fs::write(&unit, "# someone's unit\n").expect("write");
    let error = manager.install(&spec(Scope::System)).expect_err("exists");
    assert!(matches!(error, ServiceError::AlreadyInstalled { .. }));
    assert_eq!(
        fs::read_to_string(&unit).expect("kept"),
        "# someone's unit\n"
    );

    let error = manager.install(&spec(Scope::User)).expect_err("scope");
    assert!(matches!(error, ServiceError::ScopeMismatch { .. }));
    let relative = ServiceSpec {
        binary: "fyn-runner".into(),
        ..spec(Scope::System)
    };
    assert!(matches!(
        manager.install(&relative),
        Err(ServiceError::InvalidSpec(_))
    ));
    let user_in_user_scope = ServiceSpec {
        user: Some("ada".into()),
        ..spec(Scope::User)
    };
    assert!(user_in_user_scope.validate().is_err());
    for bad in ["", "-x", "a b", "a%b", "ünï"] {
        let spec = ServiceSpec {
            user: Some(bad.into()),
            ..spec(Scope::System)
        };
        assert!(spec.validate().is_err(), "{bad:?} accepted");
    }
    let newline = ServiceSpec {
        config_path: "/etc/a\nb.toml".into(),
        ..spec(Scope::System)
    };
    assert!(newline.validate().is_err());
    let forever = ServiceSpec {
        drain_deadline_secs: u64::MAX,
        ..spec(Scope::System)
    };
    assert!(forever.validate().is_err());
    assert!(
        runner.lines().is_empty(),
        "nothing may run for a refused install"
    );
}

fn installed_systemd(root: &Path, scope: Scope) {
    let unit = root.join(if scope == Scope::System {
        SYSTEM_UNIT
    } else {
        USER_UNIT
    });
    fs::create_dir_all(unit.parent().expect("parent")).expect("mkdir");
    fs::write(&unit, systemd::render(&spec(scope))).expect("write");
}

#[test]
fn systemd_uninstall_stops_disables_removes_and_reloads() {
    for (scope, flag) in [(Scope::System, ""), (Scope::User, "--user ")] {
        let root = tempfile::tempdir().expect("tempdir");
        installed_systemd(root.path(), scope);
        let runner = RecordingRunner::new();
        systemd_in(root.path(), scope, &runner)
            .uninstall()
            .expect("uninstall");
        assert_eq!(
            runner.lines(),
            [
                format!("systemctl {flag}stop fyn-runner.service"),
                format!("systemctl {flag}disable fyn-runner.service"),
                format!("systemctl {flag}daemon-reload"),
            ]
        );
        let unit = if scope == Scope::System {
            SYSTEM_UNIT
        } else {
            USER_UNIT
        };
        assert!(!root.path().join(unit).exists());
    }
}

#[test]
fn systemd_uninstall_keeps_the_unit_when_the_stop_fails() {
    let root = tempfile::tempdir().expect("tempdir");
    installed_systemd(root.path(), Scope::System);
    let runner = RecordingRunner::new();
    runner.respond("systemctl stop", 1, "", "Job canceled");
    let error = systemd_in(root.path(), Scope::System, &runner)
        .uninstall()
        .expect_err("stop fails");
    assert!(
        error
            .to_string()
            .contains("systemctl stop fyn-runner.service")
    );
    assert!(root.path().join(SYSTEM_UNIT).exists());
    assert_eq!(runner.lines(), ["systemctl stop fyn-runner.service"]);
}

#[test]
fn systemd_start_stop_restart() {
    for (scope, flag) in [(Scope::System, ""), (Scope::User, "--user ")] {
        let root = tempfile::tempdir().expect("tempdir");
        installed_systemd(root.path(), scope);
        let runner = RecordingRunner::new();
        let manager = systemd_in(root.path(), scope, &runner);
        manager.start().expect("start");
        manager.stop().expect("stop");
        manager.restart().expect("restart");
        assert_eq!(
            runner.lines(),
            [
                format!("systemctl {flag}start --no-block fyn-runner.service"),
                format!("systemctl {flag}stop fyn-runner.service"),
                format!("systemctl {flag}restart --no-block fyn-runner.service"),
            ]
        );
    }
}

/// Uninstall, start, stop and restart all say the service is not installed.
fn refuses_everything_but_install(manager: &dyn ServiceManager) {
    for result in [
        manager.uninstall(),
        manager.start(),
        manager.stop(),
        manager.restart(),
    ] {
        assert!(
            matches!(result, Err(ServiceError::NotInstalled { .. })),
            "{result:?}"
        );
    }
}

#[test]
fn systemd_operations_need_an_installed_unit() {
    let root = tempfile::tempdir().expect("tempdir");
    let runner = RecordingRunner::new();
    let manager = systemd_in(root.path(), Scope::System, &runner);
    refuses_everything_but_install(&manager);
    assert!(runner.lines().is_empty());
}

#[test]
fn systemd_status_reads_systemctl_show() {
    let root = tempfile::tempdir().expect("tempdir");
    installed_systemd(root.path(), Scope::User);
    let runner = RecordingRunner::new();
    runner.respond(
        "systemctl --user show",
        0,
        "LoadState=loaded\nActiveState=activating\nSubState=start\nUnitFileState=enabled\n\
         MainPID=77\nExecMainStatus=0\nStatusText=Reconnecting\n",
        "",
    );
    let status = systemd_in(root.path(), Scope::User, &runner)
        .status()
        .expect("status");
    assert_eq!(
        runner.lines(),
        ["systemctl --user show fyn-runner.service \
          --property=LoadState,ActiveState,SubState,UnitFileState,MainPID,ExecMainStatus,StatusText"]
    );
    assert!(status.installed);
    assert_eq!(status.state, ServiceState::Starting);
    assert_eq!(status.pid, Some(77));
    assert_eq!(status.enabled, Some(true));
    assert_eq!(status.detail.as_deref(), Some("Reconnecting"));
}

// ------------------------------------------------------------- launchctl sequences

fn launchd_in<'r>(
    root: &Path,
    scope: Scope,
    runner: &'r RecordingRunner,
) -> Launchd<&'r RecordingRunner> {
    Launchd::new(scope, host(root), runner)
}

const DAEMON_PLIST: &str = "/Library/LaunchDaemons/dev.fyn-runner.runner.plist";
const AGENT_PLIST: &str = "/home/ada/Library/LaunchAgents/dev.fyn-runner.runner.plist";

fn plist_for(scope: Scope) -> &'static str {
    match scope {
        Scope::System => DAEMON_PLIST,
        Scope::User => AGENT_PLIST,
    }
}

fn target_for(scope: Scope) -> &'static str {
    match scope {
        Scope::System => "system/dev.fyn-runner.runner",
        Scope::User => "gui/501/dev.fyn-runner.runner",
    }
}

fn domain_for(scope: Scope) -> &'static str {
    match scope {
        Scope::System => "system",
        Scope::User => "gui/501",
    }
}

fn under(root: &Path, real: &str) -> PathBuf {
    root.join(real.trim_start_matches('/'))
}

#[test]
fn launchd_install_writes_enables_and_bootstraps() {
    for scope in [Scope::System, Scope::User] {
        let root = tempfile::tempdir().expect("tempdir");
        let runner = RecordingRunner::new();
        let installed = launchd_in(root.path(), scope, &runner)
            .install(&spec(scope))
            .expect("install");
        assert_eq!(
            runner.lines(),
            [
                format!("launchctl enable {}", target_for(scope)),
                format!(
                    "launchctl bootstrap {} {}",
                    domain_for(scope),
                    plist_for(scope)
                ),
            ]
        );
        let plist = under(root.path(), plist_for(scope));
        let log = launchd::log_file(scope, &host(root.path())).expect("log path");
        assert_eq!(
            fs::read_to_string(&plist).expect("plist written"),
            launchd::render(&spec(scope), &log)
        );
        assert_eq!(mode_of(&plist), 0o644);
        assert!(
            under(
                root.path(),
                &log.parent().expect("folder").to_string_lossy()
            )
            .is_dir()
        );
        assert_eq!(installed.logs, log.display().to_string());
    }
}

#[test]
fn launchd_install_falls_back_to_load_when_bootstrap_fails() {
    let root = tempfile::tempdir().expect("tempdir");
    let runner = RecordingRunner::new();
    runner.respond(
        "launchctl bootstrap",
        5,
        "",
        "Bootstrap failed: 5: Input/output error",
    );
    launchd_in(root.path(), Scope::User, &runner)
        .install(&spec(Scope::User))
        .expect("the fallback loads it");
    assert_eq!(
        runner.lines()[1..],
        [
            format!("launchctl bootstrap gui/501 {AGENT_PLIST}"),
            format!("launchctl load -w {AGENT_PLIST}"),
        ]
    );
    assert!(under(root.path(), AGENT_PLIST).exists());
}

#[test]
fn launchd_install_rolls_back_when_nothing_loads_it() {
    let root = tempfile::tempdir().expect("tempdir");
    let runner = RecordingRunner::new();
    runner
        .respond(
            "launchctl bootstrap",
            5,
            "",
            "Bootstrap failed: 5: Input/output error",
        )
        .respond(
            "launchctl load",
            1,
            "",
            "Load failed: 5: Input/output error",
        );
    let error = launchd_in(root.path(), Scope::System, &runner)
        .install(&spec(Scope::System))
        .expect_err("cannot load");
    let message = error.to_string();
    assert!(message.contains("`launchctl bootstrap system"), "{message}");
    assert!(message.contains("Bootstrap failed"), "{message}");
    assert!(message.contains("Load failed"), "{message}");
    assert!(message.contains("rolled back"), "{message}");
    assert!(!under(root.path(), DAEMON_PLIST).exists());
}

fn installed_launchd(root: &Path, scope: Scope) {
    let plist = under(root, plist_for(scope));
    fs::create_dir_all(plist.parent().expect("parent")).expect("mkdir");
    fs::write(&plist, launchd::render(&spec(scope), Path::new("/l.log"))).expect("write");
}

#[test]
fn launchd_uninstall_boots_out_a_loaded_service_and_removes_the_plist() {
    for scope in [Scope::System, Scope::User] {
        let root = tempfile::tempdir().expect("tempdir");
        installed_launchd(root.path(), scope);
        let runner = RecordingRunner::new();
        launchd_in(root.path(), scope, &runner)
            .uninstall()
            .expect("uninstall");
        let target = target_for(scope);
        assert_eq!(
            runner.lines(),
            [
                format!("launchctl print {target}"),
                format!("launchctl bootout {target}")
            ]
        );
        assert!(!under(root.path(), plist_for(scope)).exists());
    }
    // Not loaded: nothing to boot out.
    let root = tempfile::tempdir().expect("tempdir");
    installed_launchd(root.path(), Scope::System);
    let runner = RecordingRunner::new();
    runner.respond("launchctl print", 113, "", "Could not find service");
    launchd_in(root.path(), Scope::System, &runner)
        .uninstall()
        .expect("uninstall");
    assert_eq!(
        runner.lines(),
        ["launchctl print system/dev.fyn-runner.runner"]
    );
    assert!(!under(root.path(), DAEMON_PLIST).exists());
}

#[test]
fn launchd_start_stop_restart_when_loaded() {
    for scope in [Scope::System, Scope::User] {
        let root = tempfile::tempdir().expect("tempdir");
        installed_launchd(root.path(), scope);
        let runner = RecordingRunner::new();
        let manager = launchd_in(root.path(), scope, &runner);
        manager.start().expect("start");
        manager.stop().expect("stop");
        manager.restart().expect("restart");
        let t = target_for(scope);
        assert_eq!(
            runner.lines(),
            [
                format!("launchctl print {t}"),
                format!("launchctl kickstart {t}"),
                format!("launchctl print {t}"),
                format!("launchctl bootout {t}"),
                format!("launchctl print {t}"),
                format!("launchctl kickstart -k {t}"),
            ]
        );
    }
}

#[test]
fn launchd_start_stop_restart_when_not_loaded() {
    for scope in [Scope::System, Scope::User] {
        let root = tempfile::tempdir().expect("tempdir");
        installed_launchd(root.path(), scope);
        let runner = RecordingRunner::new();
        runner.respond("launchctl print", 113, "", "Could not find service");
        let manager = launchd_in(root.path(), scope, &runner);
        manager.start().expect("start");
        manager.stop().expect("stop is a no-op");
        manager.restart().expect("restart");
        let (t, d, p) = (target_for(scope), domain_for(scope), plist_for(scope));
        assert_eq!(
            runner.lines(),
            [
                format!("launchctl print {t}"),
                format!("launchctl bootstrap {d} {p}"),
                format!("launchctl print {t}"),
                format!("launchctl print {t}"),
                format!("launchctl bootstrap {d} {p}"),
            ]
        );
    }
}

#[test]
fn launchd_operations_need_an_installed_plist() {
    let root = tempfile::tempdir().expect("tempdir");
    let runner = RecordingRunner::new();
    let manager = launchd_in(root.path(), Scope::User, &runner);
    refuses_everything_but_install(&manager);
    assert!(runner.lines().is_empty());
}

#[test]
fn launchd_status_reads_launchctl_print() {
    let root = tempfile::tempdir().expect("tempdir");
    installed_launchd(root.path(), Scope::System);
    let runner = RecordingRunner::new();
    runner.respond(
        "launchctl print",
        0,
        "system/dev.fyn-runner.runner = {\n\tstate = running\n\tpid = 310\n\
         \tlast exit code = 0\n}\n",
        "",
    );
    let status = launchd_in(root.path(), Scope::System, &runner)
        .status()
        .expect("status");
    assert_eq!(
        runner.lines(),
        ["launchctl print system/dev.fyn-runner.runner"]
    );
    assert_eq!(
        (status.state, status.pid, status.installed),
        (ServiceState::Running, Some(310), true)
    );

    let runner = RecordingRunner::new();
    runner.respond("launchctl print", 113, "", "Could not find service");
    let status = launchd_in(root.path(), Scope::User, &runner)
        .status()
        .expect("status");
    assert_eq!(status.state, ServiceState::NotLoaded);
    assert!(!status.installed);
}

// ----------------------------------------------------------------------- the rest

#[test]
fn render_for_picks_the_manager_format() {
    let root = tempfile::tempdir().expect("tempdir");
    let host = host(root.path());
    let spec = spec(Scope::User);
    assert_eq!(
        service::render_for(Manager::Systemd, &spec, &host).expect("unit"),
        systemd::render(&spec)
    );
    let plist = service::render_for(Manager::Launchd, &spec, &host).expect("plist");
    assert_eq!(
        parse_plist(&plist).get("StandardOutPath"),
        Some(&string("/home/ada/Library/Logs/fyn-runner/runner.log"))
    );
    assert_eq!(
        service::definition_path(Manager::Launchd, Scope::User, &host).expect("path"),
        Path::new(AGENT_PLIST)
    );
}

#[test]
fn detect_follows_the_running_service_manager() {
    let expected = if cfg!(target_os = "macos") {
        Some(Manager::Launchd)
    } else if cfg!(target_os = "linux") && Path::new("/run/systemd/system").is_dir() {
        Some(Manager::Systemd)
    } else {
        None
    };
    assert_eq!(service::detect(), expected);
    if expected.is_none() {
        let error = service::detect_or_explain().expect_err("nothing to detect");
        assert!(
            error.to_string().contains("fyn-runner run --config"),
            "{error}"
        );
    }
}
