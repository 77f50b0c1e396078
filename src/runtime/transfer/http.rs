//! One HTTP/1.1 exchange per connection, on the hyper client the crate already has,
//! with rustls (ring, set explicitly) for `https://` under the same CA rules as the
//! session (`ws::tls_config`: the public web roots, or only `--ca-file`). Plain `http://`
//! goes only to loopback unless the operator allowed it (`allow_insecure_transfers`).
//! Knows requests, answers and timeouts; what a status means for a transfer is the
//! caller's.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use futures_util::StreamExt;
use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Request, Response, header};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use url::Url;

use super::TransferError;

/// How long each step of an exchange may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP and TLS.
    pub connect: Duration,
    /// From the request sent to the answer's head.
    pub answer: Duration,
    /// Between two chunks of a body, either way.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(15),
            answer: Duration::from_secs(60),
            idle: Duration::from_secs(60),
        }
    }
}

/// Where transfers may go, and how.
#[derive(Clone)]
pub struct HttpClient {
    tls: tokio_rustls::TlsConnector,
    allow_insecure: bool,
    pub(super) timeouts: Timeouts,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("allow_insecure", &self.allow_insecure)
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

/// An answer whose body is still to be read; its connection lives as long as it does.
pub(super) struct Answer {
    pub response: Response<Incoming>,
    _connection: AbortOnDrop,
}

impl Answer {
    pub fn status(&self) -> u16 {
        self.response.status().as_u16()
    }

    pub fn headers(&self) -> &HeaderMap {
        self.response.headers()
    }

    /// The body, a chunk at a time, each within the idle timeout.
    pub fn into_chunks(self, idle: Duration, url: &Url) -> Chunks {
        Chunks {
            stream: Body::new(self.response.into_body()).into_data_stream(),
            idle,
            url: super::shown_url(url.as_str()),
            _connection: self._connection,
        }
    }
}

/// A body being read.
pub(super) struct Chunks {
    stream: axum::body::BodyDataStream,
    idle: Duration,
    url: String,
    _connection: AbortOnDrop,
}

impl Chunks {
    /// The next chunk, `None` at the end; a reset or a stall is a transient error.
    pub async fn next(&mut self) -> Result<Option<Bytes>, TransferError> {
        match tokio::time::timeout(self.idle, self.stream.next()).await {
            Ok(None) => Ok(None),
            Ok(Some(Ok(bytes))) => Ok(Some(bytes)),
            Ok(Some(Err(error))) => Err(TransferError::Broken {
                url: self.url.clone(),
                why: error.to_string(),
            }),
            Err(_) => Err(TransferError::Timeout {
                url: self.url.clone(),
                what: format!("no data for {:?}", self.idle),
            }),
        }
    }
}

/// The task driving a connection, stopped when the exchange is over.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl HttpClient {
    pub fn new(tls: Arc<rustls::ClientConfig>, allow_insecure: bool, timeouts: Timeouts) -> Self {
        Self {
            tls: tokio_rustls::TlsConnector::from(tls),
            allow_insecure,
            timeouts,
        }
    }

    /// Whether a transfer may use `url`: `https://`, or `http://` to loopback (or
    /// anywhere, when the operator allowed plain transfers).
    pub fn check_url(&self, url: &Url) -> Result<(), TransferError> {
        let refused = |why: String| TransferError::Refused {
            url: super::shown_url(url.as_str()),
            why,
        };
        match url.scheme() {
            "https" => Ok(()),
            "http" if self.allow_insecure || is_loopback(url) => Ok(()),
            "http" => Err(refused(format!(
                "plain http:// to {}, which is not a loopback address: the bytes would cross the network unencrypted; use https://, or set allow_insecure_transfers if this network is trusted",
                url.host_str().unwrap_or("?")
            ))),
            other => Err(refused(format!("{other}:// is not http:// or https://"))),
        }
    }

    /// Send one request on a fresh connection and wait for the answer's head.
    pub(super) async fn send(
        &self,
        method: Method,
        url: &Url,
        headers: Vec<(header::HeaderName, String)>,
        body: Body,
    ) -> Result<Answer, TransferError> {
        self.check_url(url)?;
        let host = url.host_str().unwrap_or_default().to_owned();
        let port = url.port_or_known_default().unwrap_or(443);
        let bare = host.trim_matches(['[', ']']).to_owned();
        let unreachable = |why: String| TransferError::Unreachable {
            url: super::shown_url(url.as_str()),
            why,
        };
        let connect = TcpStream::connect((bare.as_str(), port));
        let tcp = tokio::time::timeout(self.timeouts.connect, connect)
            .await
            .map_err(|_| unreachable(format!("no connection within {:?}", self.timeouts.connect)))?
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let request = build_request(method, url, headers, body)?;
        if url.scheme() == "https" {
            let name = rustls::pki_types::ServerName::try_from(bare)
                .map_err(|e| unreachable(format!("bad server name: {e}")))?;
            let handshake = self.tls.connect(name, tcp);
            let stream = tokio::time::timeout(self.timeouts.connect, handshake)
                .await
                .map_err(|_| unreachable("no TLS handshake in time".to_owned()))?
                .map_err(|e| tls_error(url, e))?;
            self.exchange(stream, request, url).await
        } else {
            self.exchange(tcp, request, url).await
        }
    }

    async fn exchange<IO>(
        &self,
        io: IO,
        request: Request<Body>,
        url: &Url,
    ) -> Result<Answer, TransferError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let broken = |why: String| TransferError::Broken {
            url: super::shown_url(url.as_str()),
            why,
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| broken(e.to_string()))?;
        let driver = AbortOnDrop(tokio::spawn(async move {
            // Its end (or error) shows in the exchange itself.
            let _ = connection.await;
        }));
        let response = tokio::time::timeout(self.timeouts.answer, sender.send_request(request))
            .await
            .map_err(|_| TransferError::Timeout {
                url: super::shown_url(url.as_str()),
                what: format!("no answer within {:?}", self.timeouts.answer),
            })?
            .map_err(|e| broken(describe_hyper_error(&e)))?;
        Ok(Answer {
            response,
            _connection: driver,
        })
    }
}

fn build_request(
    method: Method,
    url: &Url,
    headers: Vec<(header::HeaderName, String)>,
    body: Body,
) -> Result<Request<Body>, TransferError> {
    let target = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    };
    let authority = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    };
    let mut builder = Request::builder()
        .method(method)
        .uri(target)
        .header(header::HOST, authority)
        .header(
            header::USER_AGENT,
            concat!("fyn-runner/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    builder.body(body).map_err(|e| TransferError::Refused {
        url: super::shown_url(url.as_str()),
        why: format!("cannot build the request: {e}"),
    })
}

/// A certificate the CA rules refuse is final (it will not become valid by waiting);
/// anything else in a handshake may be the network's.
fn tls_error(url: &Url, error: std::io::Error) -> TransferError {
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls @ rustls::Error::InvalidCertificate(_)) => TransferError::Tls {
            url: super::shown_url(url.as_str()),
            why: tls.to_string(),
        },
        _ => TransferError::Unreachable {
            url: super::shown_url(url.as_str()),
            why: format!("TLS handshake failed: {error}"),
        },
    }
}

fn describe_hyper_error(error: &hyper::Error) -> String {
    match std::error::Error::source(error) {
        Some(source) => format!("{error}: {source}"),
        None => error.to_string(),
    }
}

/// `localhost` or a loopback address.
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(allow_insecure: bool) -> HttpClient {
        let tls = crate::runtime::ws::tls_config(None).expect("the web roots load");
        HttpClient::new(tls, allow_insecure, Timeouts::default())
    }

    #[test]
    fn plain_http_goes_only_to_loopback_unless_allowed() {
        let parse = |s: &str| Url::parse(s).expect("a URL");
        let strict = client(false);
        for fine in [
            "https://store.example/a",
            "http://127.0.0.1:9/a",
            "http://[::1]:9/a",
            "http://localhost/a",
        ] {
            assert!(strict.check_url(&parse(fine)).is_ok(), "{fine}");
        }
        let far = parse("http://store.example/a");
        let refused = strict.check_url(&far);
        assert!(
            matches!(&refused, Err(TransferError::Refused { why, .. }) if why.contains("allow_insecure_transfers")),
            "{refused:?}"
        );
        assert!(client(true).check_url(&far).is_ok());
        assert!(client(true).check_url(&parse("ftp://x/a")).is_err());
    }

    #[test]
    fn the_request_names_the_host_and_the_path_with_its_query() -> Result<(), TransferError> {
        let url = Url::parse("https://s.example:8443/b/k?X-Sig=1%2B2").expect("a URL");
        let request = build_request(Method::PUT, &url, Vec::new(), Body::empty())?;
        assert_eq!(request.uri(), "/b/k?X-Sig=1%2B2");
        assert_eq!(
            request
                .headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok()),
            Some("s.example:8443")
        );
        Ok(())
    }
}
