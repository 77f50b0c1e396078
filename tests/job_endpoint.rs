//! A job's local endpoint with a real Unix socket, talked to by the real `fyn-runner job`
//! binary (as a shell job would) and by a raw client: progress coalesced (the latest
//! wins), key-value writes confirmed by a stand-in driver, in order, bounded with a
//! clear error, reads answered from the spec's pairs and the job's writes, exit codes.
#![cfg(unix)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fyn_runner::protocol::JobRef;
use fyn_runner::runtime::job_endpoint::{
    EndpointConfig, EndpointReport, JobEndpoint, JobSays, KvLimits, KvView, SOCKET_VARIABLE,
};
use tokio::sync::mpsc;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn job() -> JobRef {
    JobRef {
        job_id: "j-1".into(),
        attempt: 1,
    }
}

/// What the stand-in driver saw: every report, in order. It confirms every write but
/// those of the key `refused`.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<JobSays>>>);

impl Seen {
    fn all(&self) -> Vec<JobSays> {
        self.0.lock().map(|seen| seen.clone()).unwrap_or_default()
    }
}

fn driver(mut reports: mpsc::Receiver<EndpointReport>) -> Seen {
    let seen = Seen::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Some(report) = reports.recv().await {
            if let Ok(mut all) = record.0.lock() {
                all.push(report.says.clone());
            }
            if let Some(taken) = report.taken {
                match &report.says {
                    JobSays::KvPut { key, .. } if key == "refused" => {
                        taken.refuse("the store is full");
                    }
                    _ => taken.confirm(),
                }
            }
        }
    });
    seen
}

async fn endpoint(
    dir: &Path,
    limits: KvLimits,
) -> Result<(JobEndpoint, Seen), Box<dyn std::error::Error>> {
    let kv = KvView::new(BTreeMap::from([("from-spec".into(), "spec value".into())]));
    let mut config = EndpointConfig::new(job(), dir, kv);
    config.limits = limits;
    config.progress_every = Duration::from_millis(200);
    let (reports, received) = mpsc::channel(8);
    let endpoint = JobEndpoint::bind(config, reports, None).await?;
    Ok((endpoint, driver(received)))
}

/// `fyn-runner job ARGS...` as a job runs it, off the async threads.
async fn fyn_job(socket: Option<&Path>, args: &[&str]) -> std::io::Result<Output> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fyn-runner"));
    command.arg("job").args(args).env_remove(SOCKET_VARIABLE);
    if let Some(socket) = socket {
        command.env(SOCKET_VARIABLE, socket);
    }
    tokio::task::spawn_blocking(move || command.output())
        .await
        .map_err(std::io::Error::other)?
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn a_shell_job_reports_progress_and_keeps_key_value_pairs() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (endpoint, seen) = endpoint(dir.path(), KvLimits::default()).await?;
    let socket = endpoint.path().to_owned();
    let mode = std::fs::metadata(&socket)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let progress = fyn_job(Some(&socket), &["progress", "0.42", "iteration 420"]).await?;
    assert_eq!(
        progress.status.code(),
        Some(0),
        "{}",
        text(&progress.stderr)
    );
    let put = fyn_job(Some(&socket), &["kv", "put", "checkpoint", "step-40"]).await?;
    assert_eq!(put.status.code(), Some(0), "{}", text(&put.stderr));

    let get = |key: &'static str| {
        let socket = socket.clone();
        async move { fyn_job(Some(&socket), &["kv", "get", key]).await }
    };
    let mine = get("checkpoint").await?;
    assert_eq!(
        (mine.status.code(), text(&mine.stdout)),
        (Some(0), "step-40\n".into())
    );
    let spec = get("from-spec").await?;
    assert_eq!(text(&spec.stdout), "spec value\n");
    let none = get("nothing").await?;
    assert_eq!(
        (none.status.code(), text(&none.stdout)),
        (Some(3), String::new())
    );

    let refused = fyn_job(Some(&socket), &["kv", "put", "refused", "x"]).await?;
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("the store is full"),
        "{}",
        text(&refused.stderr)
    );
    // A refused write is not seen by reads.
    assert_eq!(get("refused").await?.status.code(), Some(3));

    let bad_key = fyn_job(Some(&socket), &["kv", "put", "a key", "x"]).await?;
    assert_eq!(bad_key.status.code(), Some(1));
    let bad_fraction = fyn_job(Some(&socket), &["progress", "1.5"]).await?;
    assert_eq!(bad_fraction.status.code(), Some(2));

    endpoint.close().await;
    assert!(!socket.exists(), "the socket goes with the endpoint");
    let seen = seen.all();
    assert_eq!(
        seen,
        [
            JobSays::Progress {
                fraction: Some(0.42),
                message: Some("iteration 420".into())
            },
            JobSays::KvPut {
                key: "checkpoint".into(),
                value: "step-40".into()
            },
            JobSays::KvPut {
                key: "refused".into(),
                value: "x".into()
            },
        ]
    );
    Ok(())
}

#[tokio::test]
async fn without_an_endpoint_the_helper_says_so() -> TestResult {
    let missing = fyn_job(None, &["progress", "0.1"]).await?;
    assert_eq!(missing.status.code(), Some(5));
    assert!(text(&missing.stderr).contains(SOCKET_VARIABLE));
    let dir = tempfile::tempdir()?;
    let gone = fyn_job(Some(&dir.path().join("job.sock")), &["kv", "get", "k"]).await?;
    assert_eq!(gone.status.code(), Some(5));
    let help = fyn_job(None, &["--help"]).await?;
    assert!(text(&help.stdout).contains("FYN_JOB_SOCKET"));
    Ok(())
}

/// A thousand reports in a burst cost a few events, and the last one always arrives.
#[tokio::test]
async fn a_burst_of_progress_is_coalesced_and_the_last_word_kept() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (endpoint, seen) = endpoint(dir.path(), KvLimits::default()).await?;
    let socket = endpoint.path().to_owned();
    let answered = tokio::task::spawn_blocking(move || -> std::io::Result<usize> {
        let stream = std::os::unix::net::UnixStream::connect(&socket)?;
        let mut writer = stream.try_clone()?;
        let mut reader = BufReader::new(stream);
        let mut answers = 0;
        for i in 0..1000u32 {
            let fraction = f64::from(i) / 999.0;
            writeln!(
                writer,
                r#"{{"op": "progress", "fraction": {fraction}, "message": "step {i}"}}"#
            )?;
            let mut line = String::new();
            reader.read_line(&mut line)?;
            if line.trim() == r#"{"ok":true}"# {
                answers += 1;
            }
        }
        Ok(answers)
    })
    .await??;
    assert_eq!(answered, 1000);
    endpoint.close().await;
    let seen = seen.all();
    assert!(seen.len() <= 5, "{} reports for a burst", seen.len());
    assert_eq!(
        seen.last(),
        Some(&JobSays::Progress {
            fraction: Some(1.0),
            message: Some("step 999".into())
        })
    );
    Ok(())
}

#[tokio::test]
async fn writes_past_the_bounds_get_a_clear_error_and_keep_their_order() -> TestResult {
    let dir = tempfile::tempdir()?;
    let limits = KvLimits {
        keys: 1024,
        writes: 3,
        bytes: 1 << 20,
    };
    let (endpoint, seen) = endpoint(dir.path(), limits).await?;
    let socket = endpoint.path().to_owned();
    for n in 1..=3 {
        let value = format!("v{n}");
        let put = fyn_job(Some(&socket), &["kv", "put", "k", &value]).await?;
        assert_eq!(put.status.code(), Some(0), "{}", text(&put.stderr));
    }
    let fourth = fyn_job(Some(&socket), &["kv", "put", "k", "v4"]).await?;
    assert_eq!(fourth.status.code(), Some(1));
    assert!(
        text(&fourth.stderr).contains("3 key-value writes"),
        "{}",
        text(&fourth.stderr)
    );
    let last = fyn_job(Some(&socket), &["kv", "get", "k"]).await?;
    assert_eq!(text(&last.stdout), "v3\n");
    endpoint.close().await;
    let values: Vec<String> = seen
        .all()
        .into_iter()
        .filter_map(|says| match says {
            JobSays::KvPut { value, .. } => Some(value),
            JobSays::Progress { .. } => None,
        })
        .collect();
    assert_eq!(values, ["v1", "v2", "v3"]);
    Ok(())
}

/// As root with a job account, the socket is the account's and only it may use it.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn with_a_job_account_the_socket_is_the_accounts() -> TestResult {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: another account's rights need root (CI runs as root)");
        return Ok(());
    }
    let nobody = fyn_runner::platform::Account {
        name: "nobody".into(),
        uid: 65534,
        gid: 65534,
        groups: vec![65534],
    };
    let dir = tempfile::tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))?;
    let job_dir = dir.path().join("j-1-1");
    std::fs::create_dir(&job_dir)?;
    std::os::unix::fs::chown(&job_dir, Some(nobody.uid), Some(nobody.gid))?;
    let mut config = EndpointConfig::new(job(), &job_dir, KvView::default());
    config.account = Some(nobody.clone());
    let (reports, received) = mpsc::channel(8);
    let endpoint = JobEndpoint::bind(config, reports, None).await?;
    let _seen = driver(received);
    let meta = std::fs::metadata(endpoint.path())?;
    assert_eq!((meta.uid(), meta.mode() & 0o777), (nobody.uid, 0o600));
    endpoint.close().await;
    Ok(())
}
