//! Transfers against a real HTTP server on loopback (port 0): inputs fetched through
//! the cache (once for two jobs), checked, resumed with `Range` after a reset, retried
//! after 5xx, refused for good on 4xx or a wrong checksum, redirects followed, stalls
//! timed out; `https://` under a test CA; outputs uploaded by `PUT` with their length and
//! `Content-Digest`, sent whole again after a failure, globs confined to `work/`.
//!
//! The server is a scriptable axum app: per path, a queue of faults to play before it
//! answers normally.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use fyn_runner::protocol::{InputFile, OutputFile, parse_content_digest, to_hex};
use fyn_runner::runtime::transfer::{
    HttpClient, Placement, RetryPolicy, Timeouts, TransferError, TransferSettings, Transfers,
};
use sha2::{Digest, Sha256};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// What the server does with the next request for a path, before answering normally.
#[derive(Debug, Clone)]
enum Fault {
    Status(u16),
    /// Send the first `n` bytes of the body, then break the connection.
    ResetAfter(usize),
    /// Send the first `n` bytes of the body, then nothing for this long, then the rest.
    Stall(usize, Duration),
    /// Redirect to another path.
    Redirect(&'static str),
}

#[derive(Default)]
struct Script {
    files: HashMap<String, Vec<u8>>,
    faults: HashMap<String, VecDeque<Fault>>,
    /// Every GET: its path and its `Range`.
    gets: Vec<(String, Option<String>)>,
    /// Every PUT that arrived whole: path, body, headers.
    puts: Vec<(String, Vec<u8>, HeaderMap)>,
}

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Script>>);

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Script> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn file(&self, path: &str, bytes: &[u8]) {
        self.lock().files.insert(path.to_owned(), bytes.to_vec());
    }

    fn fault(&self, path: &str, fault: Fault) {
        self.lock()
            .faults
            .entry(path.to_owned())
            .or_default()
            .push_back(fault);
    }

    fn gets(&self, path: &str) -> Vec<Option<String>> {
        self.lock()
            .gets
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, range)| range.clone())
            .collect()
    }
}

async fn handle(State(shared): State<Shared>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let fault = shared
        .lock()
        .faults
        .get_mut(&path)
        .and_then(VecDeque::pop_front);
    if request.method() == "PUT" {
        return put(shared, path, fault, request).await;
    }
    let range = request
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    shared.lock().gets.push((path.clone(), range.clone()));
    let Some(bytes) = shared.lock().files.get(&path).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let start: usize = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    match fault {
        Some(Fault::Status(code)) => return status(code),
        Some(Fault::Redirect(to)) => {
            return (StatusCode::FOUND, [(header::LOCATION, to)]).into_response();
        }
        _ => {}
    }
    let body_bytes = bytes[start.min(bytes.len())..].to_vec();
    let length = body_bytes.len();
    let body = match fault {
        Some(Fault::ResetAfter(n)) => {
            let head = Bytes::from(body_bytes[..n.min(length)].to_vec());
            // The head goes out (a pause lets it be written) before the connection breaks.
            let steps = futures_util::stream::iter([Ok(head), Err(())]).then(|step| async move {
                match step {
                    Ok(bytes) => Ok(bytes),
                    Err(()) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Err(std::io::Error::other("cut"))
                    }
                }
            });
            Body::from_stream(steps)
        }
        Some(Fault::Stall(n, time)) => {
            let head = Bytes::from(body_bytes[..n.min(length)].to_vec());
            let rest = Bytes::from(body_bytes[n.min(length)..].to_vec());
            let steps = futures_util::stream::iter([(head, Duration::ZERO), (rest, time)]).then(
                |(bytes, wait)| async move {
                    tokio::time::sleep(wait).await;
                    Ok::<_, std::io::Error>(bytes)
                },
            );
            Body::from_stream(steps)
        }
        _ => Body::from(body_bytes),
    };
    let mut response = if start > 0 {
        let range = format!("bytes {start}-{}/{}", bytes.len() - 1, bytes.len());
        (
            StatusCode::PARTIAL_CONTENT,
            [(header::CONTENT_RANGE, range)],
            body,
        )
            .into_response()
    } else {
        (StatusCode::OK, body).into_response()
    };
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, length.into());
    response
}

async fn put(shared: Shared, path: String, fault: Option<Fault>, request: Request) -> Response {
    let headers = request.headers().clone();
    let body = axum::body::to_bytes(request.into_body(), 64 << 20).await;
    if let Some(Fault::Status(code)) = fault {
        return status(code);
    }
    let Ok(body) = body else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let declared = headers
        .get("content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_content_digest);
    if declared.as_deref() != Some(sha256(&body).as_str()) {
        return StatusCode::BAD_REQUEST.into_response();
    }
    shared.lock().puts.push((path, body.to_vec(), headers));
    StatusCode::CREATED.into_response()
}

fn status(code: u16) -> Response {
    StatusCode::from_u16(code)
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        .into_response()
}

fn sha256(bytes: &[u8]) -> String {
    to_hex(&Sha256::digest(bytes))
}

async fn serve() -> Result<(SocketAddr, Shared), std::io::Error> {
    let shared = Shared::default();
    let app = Router::new().fallback(handle).with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, shared))
}

fn settings(state: &Path) -> TransferSettings {
    TransferSettings {
        ca_file: None,
        allow_insecure: false,
        cache_dir: state.join("cache"),
        cache_max_bytes: 1 << 30,
        timeouts: Timeouts {
            connect: Duration::from_secs(5),
            answer: Duration::from_secs(5),
            idle: Duration::from_millis(300),
        },
        retry: RetryPolicy {
            attempts: 4,
            first_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(40),
        },
    }
}

fn input(addr: SocketAddr, name: &str, bytes: &[u8], path: &str) -> InputFile {
    InputFile {
        url: format!("http://{addr}/{name}?X-Signature=secret"),
        sha256: sha256(bytes),
        path: path.to_owned(),
        executable: false,
    }
}

fn work_dir(root: &Path, job: &str) -> std::io::Result<std::path::PathBuf> {
    let work = root.join(job).join("work");
    std::fs::create_dir_all(&work)?;
    Ok(work)
}

#[tokio::test]
async fn two_jobs_fetch_a_shared_input_once_and_each_gets_its_own() -> TestResult {
    let (addr, server) = serve().await?;
    let mesh = vec![7u8; 300_000];
    server.file("/mesh", &mesh);
    server.file("/params", b"steps=40\n");
    let dir = tempfile::tempdir()?;
    let transfers = Transfers::new(&settings(dir.path()))?;
    let (work_a, work_b) = (work_dir(dir.path(), "a")?, work_dir(dir.path(), "b")?);
    let mesh_input = input(addr, "mesh", &mesh, "in/mesh.vtu");
    let params = input(addr, "params", b"steps=40\n", "params.txt");
    let (a, b) = tokio::join!(
        transfers.fetch_input(&mesh_input, &work_a, None),
        transfers.fetch_input(&mesh_input, &work_b, None),
    );
    let (a, b) = (a?, b?);
    assert_eq!(server.gets("/mesh").len(), 1, "fetched once for two jobs");
    assert!(
        a.from_cache != b.from_cache,
        "one fetched, one found it: {a:?} {b:?}"
    );
    transfers.fetch_input(&params, &work_a, None).await?;
    assert_eq!(std::fs::read(work_a.join("in/mesh.vtu"))?, mesh);
    assert_eq!(std::fs::read(work_b.join("in/mesh.vtu"))?, mesh);
    assert_eq!(std::fs::read(work_a.join("params.txt"))?, b"steps=40\n");
    // Without a job account the job gets a copy it may change.
    assert_eq!(a.placement, Placement::Copied);
    // A third job later: still from the cache.
    let work_c = work_dir(dir.path(), "c")?;
    let c = transfers.fetch_input(&mesh_input, &work_c, None).await?;
    assert!(c.from_cache);
    assert_eq!(server.gets("/mesh").len(), 1);
    Ok(())
}

#[tokio::test]
async fn a_wrong_checksum_fails_for_good_and_leaves_nothing() -> TestResult {
    let (addr, server) = serve().await?;
    server.file("/mesh", b"not the mesh");
    let dir = tempfile::tempdir()?;
    let transfers = Transfers::new(&settings(dir.path()))?;
    let work = work_dir(dir.path(), "a")?;
    let mut wanted = input(addr, "mesh", b"the mesh", "mesh.vtu");
    wanted.url = format!("http://{addr}/mesh");
    let failed = transfers.fetch_input(&wanted, &work, None).await;
    let Err(error) = failed else {
        panic!("a wrong checksum was accepted");
    };
    assert!(
        matches!(error, TransferError::ChecksumMismatch { .. }),
        "{error}"
    );
    assert!(!error.is_transient());
    assert_eq!(server.gets("/mesh").len(), 1, "a checksum is not retried");
    assert!(!work.join("mesh.vtu").exists());
    assert!(!transfers.cache().holds(&wanted.sha256));
    assert_eq!(std::fs::read_dir(dir.path().join("cache/tmp"))?.count(), 0);
    Ok(())
}

#[tokio::test]
async fn a_cut_download_resumes_where_it_stopped() -> TestResult {
    let (addr, server) = serve().await?;
    let mesh: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    server.file("/mesh", &mesh);
    server.fault("/mesh", Fault::ResetAfter(70_000));
    server.fault("/mesh", Fault::Status(503));
    let dir = tempfile::tempdir()?;
    let transfers = Transfers::new(&settings(dir.path()))?;
    let work = work_dir(dir.path(), "a")?;
    let fetched = transfers
        .fetch_input(&input(addr, "mesh", &mesh, "mesh.vtu"), &work, None)
        .await?;
    assert_eq!(fetched.size, mesh.len() as u64);
    assert_eq!(std::fs::read(work.join("mesh.vtu"))?, mesh);
    let ranges = server.gets("/mesh");
    assert_eq!(ranges.len(), 3, "{ranges:?}");
    assert_eq!(ranges[0], None);
    // After the cut, only the rest is asked for (twice: the 503, then the answer).
    let held = ranges[1].clone().unwrap_or_default();
    assert!(
        held.starts_with("bytes=") && held != "bytes=0-",
        "{ranges:?}"
    );
    assert_eq!(ranges[1], ranges[2]);
    Ok(())
}

#[tokio::test]
async fn a_client_error_is_final_and_a_stall_is_tried_again() -> TestResult {
    let (addr, server) = serve().await?;
    server.file("/gone", b"x");
    server.fault("/gone", Fault::Status(403));
    server.file("/slow", b"slow bytes");
    server.fault("/slow", Fault::Stall(4, Duration::from_secs(2)));
    let dir = tempfile::tempdir()?;
    let transfers = Transfers::new(&settings(dir.path()))?;
    let work = work_dir(dir.path(), "a")?;
    let refused = transfers
        .fetch_input(&input(addr, "gone", b"x", "x"), &work, None)
        .await;
    assert!(
        matches!(refused, Err(TransferError::Status { status: 403, .. })),
        "{refused:?}"
    );
    assert_eq!(server.gets("/gone").len(), 1);
    // The idle timeout (300 ms here) ends the stalled answer; the next try asks for
    // the rest.
    transfers
        .fetch_input(&input(addr, "slow", b"slow bytes", "slow"), &work, None)
        .await?;
    assert_eq!(server.gets("/slow"), [None, Some("bytes=4-".to_owned())]);
    assert_eq!(std::fs::read(work.join("slow"))?, b"slow bytes");
    Ok(())
}

#[tokio::test]
async fn redirects_are_followed_and_errors_keep_no_signature() -> TestResult {
    let (addr, server) = serve().await?;
    server.file("/moved", b"payload");
    server.file("/new-home", b"payload");
    server.fault("/moved", Fault::Redirect("/new-home"));
    let dir = tempfile::tempdir()?;
    let transfers = Transfers::new(&settings(dir.path()))?;
    let work = work_dir(dir.path(), "a")?;
    transfers
        .fetch_input(&input(addr, "moved", b"payload", "p"), &work, None)
        .await?;
    assert_eq!(server.gets("/new-home").len(), 1);
    let missing = transfers
        .fetch_input(&input(addr, "nothing", b"n", "n"), &work, None)
        .await;
    let shown = missing.map(|_| ()).map_err(|e| e.to_string());
    assert!(
        matches!(&shown, Err(text) if text.contains("404") && !text.contains("secret")),
        "{shown:?}"
    );
    Ok(())
}

#[tokio::test]
async fn plain_http_off_loopback_is_refused_before_any_connection() -> TestResult {
    let dir = tempfile::tempdir()?;
    let transfers = Transfers::new(&settings(dir.path()))?;
    let work = work_dir(dir.path(), "a")?;
    let far = InputFile {
        url: "http://192.0.2.1/x".into(),
        sha256: sha256(b"x"),
        path: "x".into(),
        executable: false,
    };
    let refused = transfers.fetch_input(&far, &work, None).await;
    assert!(
        matches!(&refused, Err(TransferError::Refused { why, .. }) if why.contains("allow_insecure_transfers")),
        "{refused:?}"
    );
    Ok(())
}

fn output(path: Option<&str>, glob: Option<&str>, url: String) -> OutputFile {
    OutputFile {
        path: path.map(str::to_owned),
        glob: glob.map(str::to_owned),
        url,
    }
}

#[tokio::test]
async fn outputs_are_put_whole_with_length_and_digest_and_sent_again_after_a_failure() -> TestResult
{
    let (addr, server) = serve().await?;
    server.fault("/out/result", Fault::Status(502));
    server.fault("/out/denied", Fault::Status(403));
    let dir = tempfile::tempdir()?;
    let transfers = Transfers::new(&settings(dir.path()))?;
    let work = work_dir(dir.path(), "a")?;
    let result: Vec<u8> = (0..150_000u32).map(|i| (i % 7) as u8).collect();
    std::fs::write(work.join("result.bin"), &result)?;
    std::fs::create_dir_all(work.join("csv/run 1"))?;
    std::fs::write(work.join("csv/a.csv"), "a")?;
    std::fs::write(work.join("csv/run 1/b.csv"), "b")?;
    std::fs::write(work.join("denied.txt"), "d")?;
    let outputs = [
        output(
            Some("result.bin"),
            None,
            format!("http://{addr}/out/result?sig=secret"),
        ),
        output(
            None,
            Some("csv/**/*.csv"),
            format!("http://{addr}/out/csv/"),
        ),
        output(
            Some("denied.txt"),
            None,
            format!("http://{addr}/out/denied"),
        ),
        output(
            Some("never-written.txt"),
            None,
            format!("http://{addr}/out/n"),
        ),
    ];
    let plan = transfers.plan_outputs(&work, &outputs, None).await?;
    assert_eq!(plan.missing, ["never-written.txt"]);
    let mut uploaded = Vec::new();
    let mut failed = Vec::new();
    for planned in &plan.uploads {
        match transfers.upload(&work, planned, None).await {
            Ok(file) => uploaded.push(file),
            Err(error) => failed.push((planned.path.clone(), error)),
        }
    }
    let names: Vec<(&str, &str)> = uploaded
        .iter()
        .map(|u| (u.path.as_str(), u.url.as_str()))
        .collect();
    let base = format!("http://{addr}/out");
    assert_eq!(
        names,
        [
            ("result.bin", format!("{base}/result").as_str()),
            ("csv/a.csv", format!("{base}/csv/csv/a.csv").as_str()),
            (
                "csv/run 1/b.csv",
                format!("{base}/csv/csv/run%201/b.csv").as_str()
            ),
        ]
    );
    assert_eq!(uploaded[0].sha256, sha256(&result));
    assert_eq!(uploaded[0].size, result.len() as u64);
    assert_eq!(failed.len(), 1);
    assert!(matches!(
        failed[0].1,
        TransferError::Status { status: 403, .. }
    ));
    let script = server.lock();
    let result_puts: Vec<&(String, Vec<u8>, HeaderMap)> = script
        .puts
        .iter()
        .filter(|(p, _, _)| p == "/out/result")
        .collect();
    assert_eq!(result_puts.len(), 1, "the 502 is followed by one whole PUT");
    let (_, body, headers) = result_puts[0];
    assert_eq!(body, &result);
    assert_eq!(
        headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()),
        Some(result.len().to_string().as_str())
    );
    Ok(())
}

#[tokio::test]
async fn https_follows_the_ca_file_like_the_session() -> TestResult {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert.cert.pem())?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let body = b"over tls".to_vec();
    let served = body.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let served = served.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |_request| {
                    let served = served.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Body::from(served)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let wanted = InputFile {
        url: format!("https://localhost:{port}/x"),
        sha256: sha256(&body),
        path: "x".into(),
        executable: false,
    };
    let work = work_dir(dir.path(), "a")?;
    // The public web roots do not know the test CA: a certificate error, final.
    let web_roots = Transfers::new(&settings(&dir.path().join("s1")))?;
    let refused = web_roots.fetch_input(&wanted, &work, None).await;
    assert!(
        matches!(refused, Err(TransferError::Tls { .. })),
        "{refused:?}"
    );
    let mut with_ca = settings(&dir.path().join("s2"));
    with_ca.ca_file = Some(ca);
    let trusted = Transfers::new(&with_ca)?;
    trusted.fetch_input(&wanted, &work, None).await?;
    assert_eq!(std::fs::read(work.join("x"))?, body);
    Ok(())
}

/// The client type is public so a caller can make one with its own TLS configuration.
#[test]
fn a_client_is_made_from_a_tls_configuration() -> TestResult {
    let tls = fyn_runner::runtime::ws::tls_config(None)?;
    let client = HttpClient::new(tls, false, Timeouts::default());
    assert!(format!("{client:?}").contains("allow_insecure: false"));
    Ok(())
}
