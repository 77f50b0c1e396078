//! Who may use the dev-server over HTTP. A web page in a browser on this machine can
//! reach a loopback port, so listening on loopback is not enough:
//!
//! - the admin API (everything but the runner endpoint) answers only requests that
//!   carry the admin token as `Authorization: Bearer ...` (else 401), whose `Host` is
//!   an address of this server or a name the operator allowed with `--allow-host`
//!   (else 403: a DNS-rebinding page sends its own name), whose `Origin`, if any, is
//!   this server's own (else 403: a page of another site), and whose body, if any, is
//!   `application/json` (else 415: what a browser sends without asking first is not);
//! - the runner endpoint (`/runner/v1`) is authenticated by the protocol itself and
//!   reached under whatever name a runner's operator gave it, so only its `Origin` is
//!   checked: runners send none, and a browser, which can open a WebSocket to any
//!   origin, always sends its page's.
//!
//! Also owns the last word on errors: any error answer that is not JSON yet (axum's
//! own rejections, a body over the limit) is rewritten as `{"error": ...}`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use super::admin_token::AdminToken;
use super::blobs::BLOB_PATH;
use super::server::error_response;
use crate::protocol::RUNNER_PATH;

/// Where the admin API takes a blob's raw bytes.
const ADMIN_BLOBS_PATH: &str = "/admin/v1/blobs";

/// The most of a non-JSON error body that is carried into its JSON form.
const ERROR_TEXT_LIMIT: usize = 4 * 1024;

/// What the checks compare requests with.
#[derive(Debug)]
pub(crate) struct AccessPolicy {
    pub token: AdminToken,
    /// The address the server listens on (its port is the real one, never 0).
    pub local: SocketAddr,
    pub tls: bool,
    /// Extra names the `Host` header may carry (lowercase, no port).
    pub allowed_hosts: Vec<String>,
    /// The host and port of `--public-url`: the name a proxy or a relay in front of the
    /// server forwards requests under, the operator's own word, so allowed as well.
    pub public_authority: Option<(String, u16)>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    ForeignHost(String),
    NoHost,
    ForeignOrigin(String),
    NoToken,
    WrongToken,
    WrongBodyType {
        found: String,
        expected: &'static str,
    },
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Self::ForeignHost(_) | Self::NoHost | Self::ForeignOrigin(_) => StatusCode::FORBIDDEN,
            Self::NoToken | Self::WrongToken => StatusCode::UNAUTHORIZED,
            Self::WrongBodyType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }

    fn message(&self) -> String {
        match self {
            Self::ForeignHost(host) => format!(
                "Host {host:?} is not an address of this server; a name it may be reached by must be allowed with --allow-host"
            ),
            Self::NoHost => "the request has no Host header".to_owned(),
            Self::ForeignOrigin(origin) => {
                format!("requests from origin {origin:?} are not accepted")
            }
            Self::NoToken => "the admin API needs the admin token: send `Authorization: Bearer <token>` (fyn-runner ctl finds it by itself)".to_owned(),
            Self::WrongToken => "the admin token is not valid for this server".to_owned(),
            Self::WrongBodyType { found, expected } => {
                format!("request bodies here must be {expected}, not {found:?}")
            }
        }
    }
}

impl AccessPolicy {
    /// Every check a request must pass; `Ok` lets it through.
    pub fn check(&self, path: &str, headers: &HeaderMap) -> Result<(), Refusal> {
        self.check_origin(headers)?;
        if path == RUNNER_PATH {
            return Ok(());
        }
        self.check_host(headers)?;
        if path.starts_with(BLOB_PATH) {
            // The token in the path is the capability, as in a presigned URL.
            return Ok(());
        }
        self.check_token(headers)?;
        if path == ADMIN_BLOBS_PATH {
            return check_body_type(headers, "application/octet-stream");
        }
        check_body_type(headers, "application/json")
    }

    fn check_host(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let host = headers
            .get(header::HOST)
            .ok_or(Refusal::NoHost)?
            .to_str()
            .map_err(|_| Refusal::ForeignHost("(not text)".to_owned()))?;
        let (name, port) = split_host(host).ok_or_else(|| Refusal::ForeignHost(host.to_owned()))?;
        if self.host_allowed(&name, port) {
            Ok(())
        } else {
            Err(Refusal::ForeignHost(host.to_owned()))
        }
    }

    fn check_origin(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let text = origin.to_str().unwrap_or("(not text)");
        let own = url::Url::parse(text).ok().is_some_and(|url| {
            let scheme = if self.tls { "https" } else { "http" };
            let port = url.port_or_known_default();
            url.scheme() == scheme
                && url.path() == "/"
                && url
                    .host_str()
                    .and_then(|host| split_host(host).map(|(name, _)| name))
                    .is_some_and(|name| self.host_allowed(&name, port))
        });
        if own {
            Ok(())
        } else {
            Err(Refusal::ForeignOrigin(text.to_owned()))
        }
    }

    fn check_token(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let value = headers.get(header::AUTHORIZATION).ok_or(Refusal::NoToken)?;
        let presented = value
            .to_str()
            .ok()
            .and_then(|text| text.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or(Refusal::NoToken)?;
        if self.token.matches(presented) {
            Ok(())
        } else {
            Err(Refusal::WrongToken)
        }
    }

    /// `name` (lowercase, without brackets) and `port` (absent: the scheme's default)
    /// name this server: an allowed name on any port, or on our port an address we
    /// listen on, where loopback also answers to `localhost` and every loopback address
    /// and the unspecified address to every IP address of the machine. An IP address
    /// cannot be rebound, so only names need allowing.
    fn host_allowed(&self, name: &str, port: Option<u16>) -> bool {
        if self.allowed_hosts.iter().any(|allowed| allowed == name) {
            return true;
        }
        let default_port = if self.tls { 443 } else { 80 };
        if self
            .public_authority
            .as_ref()
            .is_some_and(|(public, public_port)| {
                public == name && *public_port == port.unwrap_or(default_port)
            })
        {
            return true;
        }
        if port.unwrap_or(default_port) != self.local.port() {
            return false;
        }
        let ours = self.local.ip();
        match name.parse::<IpAddr>() {
            Ok(ip) => {
                ip == ours || ours.is_unspecified() || (ours.is_loopback() && ip.is_loopback())
            }
            Err(_) => name == "localhost" && (ours.is_loopback() || ours.is_unspecified()),
        }
    }
}

/// `host[:port]` or `[v6][:port]` as a lowercase name without brackets or a trailing
/// dot, and the port if one was given.
fn split_host(host: &str) -> Option<(String, Option<u16>)> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (name, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        (name, port)
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    let port = port.map(str::parse::<u16>).transpose().ok()?;
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    (!name.is_empty()).then_some((name, port))
}

/// A request with a body must say it is `expected` (JSON, or a blob's raw bytes, which
/// a browser cannot send without asking first either). A body-less request (a `GET`,
/// a bare `POST .../cancel`) needs no content type.
fn check_body_type(headers: &HeaderMap, expected: &'static str) -> Result<(), Refusal> {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let has_body = length > 0 || headers.contains_key(header::TRANSFER_ENCODING);
    if !has_body {
        return Ok(());
    }
    let found = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("(not text)"))
        .unwrap_or("(none)");
    let essence = found.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(Refusal::WrongBodyType {
            found: found.to_owned(),
            expected,
        })
    }
}

/// The middleware: refuse what fails a check, pass on the rest.
pub(crate) async fn guard(
    State(policy): State<Arc<AccessPolicy>>,
    request: Request,
    next: Next,
) -> Response {
    match policy.check(request.uri().path(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refusal) => {
            tracing::info!(
                method = %request.method(),
                path = request.uri().path(),
                refusal = ?refusal,
                "admin request refused"
            );
            let mut response = error_response(refusal.status(), &refusal.message());
            if refusal.status() == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"fyn-runner dev-server\""),
                );
            }
            response
        }
    }
}

/// The last layer: an error answer in anything but JSON becomes `{"error": text}`.
pub(crate) async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, ERROR_TEXT_LIMIT)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_ascii_lowercase()
    } else {
        text
    };
    let mut rewritten = error_response(status, &message);
    for name in [header::ALLOW, header::WWW_AUTHENTICATE] {
        if let Some(value) = parts.headers.get(&name) {
            rewritten.headers_mut().insert(name, value.clone());
        }
    }
    rewritten
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn policy(ip: IpAddr) -> AccessPolicy {
        AccessPolicy {
            token: AdminToken::parse("0123456789abcdef0123").unwrap_or_else(|_| unreachable!()),
            local: SocketAddr::new(ip, 7480),
            tls: false,
            allowed_hosts: vec!["devbox.example".to_owned()],
            public_authority: None,
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            if let Ok(value) = HeaderValue::from_str(value) {
                map.append(*name, value);
            }
        }
        map
    }

    const AUTH: (&str, &str) = ("authorization", "Bearer 0123456789abcdef0123");

    #[test]
    fn hosts_of_a_loopback_server() {
        let p = policy(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let host = |h: &str| p.check("/admin/v1/jobs", &headers(&[("host", h), AUTH]));
        for good in [
            "127.0.0.1:7480",
            "localhost:7480",
            "LOCALHOST.:7480",
            "[::1]:7480",
            "127.0.0.2:7480",
            "devbox.example",
            "devbox.example:443",
        ] {
            assert_eq!(host(good), Ok(()), "{good}");
        }
        for bad in [
            "evil.example:7480",
            "localhost:7481",
            "localhost",
            "10.0.0.1:7480",
            "",
            "[::1",
            "a:b",
        ] {
            assert!(host(bad).is_err(), "{bad}");
        }
        assert_eq!(
            p.check("/admin/v1/jobs", &headers(&[AUTH])),
            Err(Refusal::NoHost)
        );
    }

    #[test]
    fn the_public_url_is_the_servers_own_name() {
        let mut p = policy(IpAddr::V4(Ipv4Addr::LOCALHOST));
        p.public_authority = Some(("10.1.2.3".to_owned(), 8443));
        let host = |h: &str| p.check("/admin/v1/jobs", &headers(&[("host", h), AUTH]));
        assert_eq!(host("10.1.2.3:8443"), Ok(()));
        assert!(host("10.1.2.3:7480").is_err(), "only the public port");
        assert!(host("10.1.2.3").is_err(), "port 80 is not the public one");
        assert_eq!(host("127.0.0.1:7480"), Ok(()), "its own address still");
    }

    #[test]
    fn hosts_of_a_server_on_every_address() {
        let p = policy(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let host = |h: &str| p.check("/x", &headers(&[("host", h), AUTH]));
        assert_eq!(host("192.168.1.9:7480"), Ok(()));
        assert_eq!(host("localhost:7480"), Ok(()));
        assert!(host("build.lan:7480").is_err(), "names must be allowed");
    }

    #[test]
    fn origins_token_and_content_type() {
        let p = policy(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let host = ("host", "127.0.0.1:7480");
        let check = |extra: &[(&'static str, &str)]| {
            let mut all = vec![host];
            all.extend_from_slice(extra);
            p.check("/admin/v1/jobs", &headers(&all))
        };
        assert_eq!(check(&[AUTH]), Ok(()));
        assert_eq!(check(&[AUTH, ("origin", "http://127.0.0.1:7480")]), Ok(()));
        assert_eq!(check(&[AUTH, ("origin", "http://localhost:7480")]), Ok(()));
        for origin in [
            "http://evil.example",
            "null",
            "https://127.0.0.1:7480",
            "http://127.0.0.1:8000",
        ] {
            assert_eq!(
                check(&[AUTH, ("origin", origin)]),
                Err(Refusal::ForeignOrigin(origin.to_owned()))
            );
        }
        assert_eq!(check(&[]), Err(Refusal::NoToken));
        assert_eq!(
            check(&[("authorization", "Basic abc")]),
            Err(Refusal::NoToken)
        );
        assert_eq!(
            check(&[("authorization", "Bearer 0123456789abcdef0124")]),
            Err(Refusal::WrongToken)
        );
        let body = ("content-length", "2");
        assert_eq!(
            check(&[AUTH, body, ("content-type", "text/plain")]),
            Err(Refusal::WrongBodyType {
                found: "text/plain".to_owned(),
                expected: "application/json"
            })
        );
        assert!(check(&[AUTH, body]).is_err());
        assert_eq!(
            check(&[
                AUTH,
                body,
                ("content-type", "application/json; charset=utf-8")
            ]),
            Ok(())
        );
        assert_eq!(check(&[AUTH, ("content-length", "0")]), Ok(()));
    }

    #[test]
    fn the_runner_endpoint_checks_only_the_origin() {
        let p = policy(IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(
            p.check(RUNNER_PATH, &headers(&[("host", "runners.example")])),
            Ok(())
        );
        assert!(
            p.check(RUNNER_PATH, &headers(&[("origin", "http://evil.example")]))
                .is_err()
        );
    }
}
