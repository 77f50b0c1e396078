//! A small HTTP/1.1 client for the admin API, on the hyper the crate already has (its
//! client half, one connection per request: a command line makes a handful of them,
//! and a long poll holds its own), with rustls for `https://`. Every answer is JSON;
//! an error answer's `{"error": ...}` becomes a `CtlError` whose kind decides the
//! exit code.

use std::path::Path;
use std::time::Duration;

use axum::body::Body;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use url::Url;

use super::CtlError;
use crate::devserver::ErrorBody;

/// How long connecting (TCP and TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an answer may take, beyond what a long poll asked to wait.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read (a long job list; an output range is at most ~1.4 MB).
const MAX_ANSWER: usize = 256 << 20;

/// Where the admin API is and how to prove we may use it.
pub struct Client {
    base: Url,
    token: String,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

/// The admin API's base URL from what an operator types: `http(s)://host:port`, a bare
/// `host:port`, or the runner URL the dev-server printed (`ws://` / `wss://`).
pub fn parse_server(text: &str) -> Result<Url, CtlError> {
    let with_scheme = if text.contains("://") {
        text.to_owned()
    } else {
        format!("http://{text}")
    };
    let bad = |why: &str| CtlError::Usage(format!("--server {text:?}: {why}"));
    let mut url = Url::parse(&with_scheme).map_err(|e| bad(&e.to_string()))?;
    let scheme = match url.scheme() {
        "http" | "ws" => "http",
        "https" | "wss" => "https",
        _ => return Err(bad("use an http:// or https:// URL")),
    };
    if url.set_scheme(scheme).is_err() || url.host_str().is_none() {
        return Err(bad("no host"));
    }
    // The dev-server's routes start at the root; a runner URL's /runner/v1 goes.
    url.set_path("/");
    url.set_query(None);
    Ok(url)
}

impl Client {
    pub fn new(base: Url, token: String, ca_file: Option<&Path>) -> Result<Self, CtlError> {
        let tls = if base.scheme() == "https" {
            let config = crate::runtime::ws::tls_config(ca_file)
                .map_err(|e| CtlError::Usage(e.to_string()))?;
            Some(tokio_rustls::TlsConnector::from(config))
        } else {
            None
        };
        Ok(Self { base, token, tls })
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CtlError> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, CtlError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| CtlError::Usage(format!("encoding the request: {e}")))?;
        self.call(Method::POST, path, body).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, CtlError> {
        let (status, bytes) = self.exchange(method, path, body).await?;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|body| body.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).trim().to_owned());
            return Err(CtlError::from_status(status.as_u16(), message));
        }
        serde_json::from_slice(&bytes).map_err(|e| CtlError::BadAnswer(e.to_string()))
    }

    /// One request on a fresh connection; the status and the whole body.
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, axum::body::Bytes), CtlError> {
        let (content_type, body) = match body {
            Some(bytes) => (Some("application/json"), Body::from(bytes)),
            None => (None, Body::empty()),
        };
        let request = self.request(method, path, body, content_type, Vec::new())?;
        let answer = self.open(request).await?;
        let status = answer.status;
        let read = axum::body::to_bytes(Body::new(answer.body), MAX_ANSWER);
        let bytes = tokio::time::timeout(ANSWER_TIMEOUT * 2, read)
            .await
            .map_err(|_| self.unreachable("no answer in time".to_owned()))?
            .map_err(|e| self.unreachable(e.to_string()))?;
        Ok((status, bytes))
    }

    /// Send `request` on a fresh connection; the answer with its body still to read.
    pub(super) async fn open(&self, request: Request<Body>) -> Result<Answer, CtlError> {
        let host = self.base.host_str().unwrap_or("localhost");
        let port = self.base.port_or_known_default().unwrap_or(80);
        let connect = TcpStream::connect((host.trim_matches(['[', ']']), port));
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| self.unreachable("timed out connecting".to_owned()))?
            .map_err(|e| self.unreachable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let answer = match &self.tls {
            None => send(tcp, request).await,
            Some(connector) => {
                let name = rustls::pki_types::ServerName::try_from(
                    host.trim_matches(['[', ']']).to_owned(),
                )
                .map_err(|e| self.unreachable(format!("bad server name: {e}")))?;
                let handshake = connector.connect(name, tcp);
                let stream = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
                    .await
                    .map_err(|_| self.unreachable("timed out in the TLS handshake".to_owned()))?
                    .map_err(|e| self.unreachable(format!("TLS: {e}")))?;
                send(stream, request).await
            }
        };
        answer.map_err(|why| self.unreachable(why))
    }

    fn unreachable(&self, why: String) -> CtlError {
        CtlError::Unreachable {
            server: self.base.to_string(),
            why,
        }
    }

    pub(super) fn request(
        &self,
        method: Method,
        path: &str,
        body: Body,
        content_type: Option<&str>,
        headers: Vec<(header::HeaderName, String)>,
    ) -> Result<Request<Body>, CtlError> {
        let url = self
            .base
            .join(path.trim_start_matches('/'))
            .map_err(|e| CtlError::Usage(format!("bad path {path:?}: {e}")))?;
        let target = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        let authority = match self.base.port() {
            Some(port) => format!("{}:{port}", self.base.host_str().unwrap_or("localhost")),
            None => self.base.host_str().unwrap_or("localhost").to_owned(),
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(target)
            .header(header::HOST, authority)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::ACCEPT, "application/json");
        if let Some(content_type) = content_type {
            builder = builder.header(header::CONTENT_TYPE, content_type);
        }
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        builder
            .body(body)
            .map_err(|e| CtlError::Usage(format!("building the request: {e}")))
    }
}

/// An answer whose body is still to be read; its connection lives as long as it does.
pub(super) struct Answer {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: hyper::body::Incoming,
    _driver: AbortOnDrop,
}

impl Answer {
    /// An error answer's `{"error": ...}` as the `CtlError` its status calls for.
    pub async fn into_error(self) -> CtlError {
        let status = self.status;
        let bytes = axum::body::to_bytes(Body::new(self.body), 64 * 1024)
            .await
            .unwrap_or_default();
        let message = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|body| body.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).trim().to_owned());
        CtlError::from_status(status.as_u16(), message)
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Send one request on `io`; the answer's head (a long poll asks the server to wait up
/// to 30 s: allowed, and some).
async fn send<IO>(io: IO, request: Request<Body>) -> Result<Answer, String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    let driver = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let response = tokio::time::timeout(ANSWER_TIMEOUT * 2, sender.send_request(request))
        .await
        .map_err(|_| "no answer in time".to_owned())?
        .map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
        _driver: driver,
    })
}

/// Where the token is looked for, in order: the variable, the file named, the file the
/// dev-server writes for the port in `server` by default.
pub fn find_token(
    from_env: Option<String>,
    file: Option<&Path>,
    server: &Url,
) -> Result<String, CtlError> {
    use crate::devserver::{AdminToken, default_token_path};
    if let Some(text) = from_env {
        return AdminToken::parse(&text)
            .map(|t| t.as_str().to_owned())
            .map_err(|why| CtlError::Unauthorized(format!("FYN_RUNNER_ADMIN_TOKEN: {why}")));
    }
    let path = match file {
        Some(path) => path.to_owned(),
        None => {
            let port = server.port_or_known_default().unwrap_or(80);
            default_token_path(port).map_err(|e| CtlError::Unauthorized(e.to_string()))?
        }
    };
    if file.is_none() && !path.exists() {
        // No token where a dev-server on this port would have written one: most often
        // no dev-server runs there at all, which is worth saying as such (exit 5).
        if let Err(why) = answers(server) {
            return Err(CtlError::Unreachable {
                server: server.to_string(),
                why,
            });
        }
        return Err(CtlError::Unauthorized(format!(
            "no admin token at {} (a dev-server on this port started by this user with default settings writes it there); pass --admin-token-file or set FYN_RUNNER_ADMIN_TOKEN",
            path.display()
        )));
    }
    AdminToken::read(&path)
        .map(|t| t.as_str().to_owned())
        .map_err(|e| CtlError::Unauthorized(format!("admin token: {e}")))
}

/// Whether anything accepts a TCP connection at the server's address (within a few
/// seconds); `Err` says why not.
fn answers(server: &Url) -> Result<(), String> {
    const WITHIN: std::time::Duration = std::time::Duration::from_secs(3);
    let addrs = server
        .socket_addrs(|| None)
        .map_err(|e| format!("cannot resolve its address: {e}"))?;
    let mut last = String::from("it has no address");
    for addr in addrs {
        match std::net::TcpStream::connect_timeout(&addr, WITHIN) {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_as_operators_type_them() {
        let parsed = |text| parse_server(text).map(|u| u.to_string()).ok();
        assert_eq!(
            parsed("http://127.0.0.1:7480"),
            Some("http://127.0.0.1:7480/".into())
        );
        assert_eq!(
            parsed("127.0.0.1:7480"),
            Some("http://127.0.0.1:7480/".into())
        );
        assert_eq!(
            parsed("ws://localhost:9/runner/v1"),
            Some("http://localhost:9/".into())
        );
        assert_eq!(
            parsed("wss://dev.example"),
            Some("https://dev.example/".into())
        );
        assert_eq!(parsed("ftp://x"), None);
    }

    #[test]
    fn requests_carry_host_token_and_json() -> Result<(), CtlError> {
        let base = parse_server("http://127.0.0.1:7480")?;
        let client = Client::new(base, "t0k3n".into(), None)?;
        let request = client.request(
            Method::POST,
            "/admin/v1/jobs?x=1",
            Body::from("{}"),
            Some("application/json"),
            Vec::new(),
        )?;
        assert_eq!(request.uri(), "/admin/v1/jobs?x=1");
        let header = |name| request.headers().get(name).and_then(|v| v.to_str().ok());
        assert_eq!(header(header::HOST), Some("127.0.0.1:7480"));
        assert_eq!(header(header::AUTHORIZATION), Some("Bearer t0k3n"));
        assert_eq!(header(header::CONTENT_TYPE), Some("application/json"));
        assert!(!format!("{client:?}").contains("t0k3n"));
        Ok(())
    }
}
