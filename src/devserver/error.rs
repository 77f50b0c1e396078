//! The dev-server's error type: what `start` and the admin operations can fail with,
//! and the HTTP status each maps to.

use std::net::SocketAddr;

use super::api::JobState;
use super::store::StoreError;
use super::tls::TlsError;
use crate::protocol::JobSpecError;

#[derive(Debug, thiserror::Error)]
pub enum DevServerError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("no randomness available: {0}")]
    Random(getrandom::Error),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("invalid job: {0}")]
    InvalidJob(#[from] JobSpecError),
    #[error("job {0:?} not found")]
    JobNotFound(String),
    #[error("runner {0:?} not found")]
    RunnerNotFound(String),
    #[error("job {id:?} is {state} and cannot be cancelled")]
    NotCancellable { id: String, state: JobState },
    #[error(
        "invalid job: its start_job frame would be {size} bytes, over the protocol's {limit}-byte frame limit; make command and env smaller"
    )]
    JobTooLarge { size: usize, limit: usize },
    #[error("admin token: {0}")]
    AdminToken(#[from] super::admin_token::AdminTokenError),
    #[error(
        "unknown blob token: the URL was not handed out by this server, or its attempt was replaced"
    )]
    NoSuchGrant,
    #[error("job {job_id:?} attempt {attempt} has ended; its URLs are no longer valid")]
    GrantEnded { job_id: String, attempt: u32 },
    #[error("{0}")]
    NotDeclared(String),
    #[error("no input blob {0}: store it with PUT /admin/v1/blobs first")]
    BlobNotFound(String),
    #[error("job {job_id:?} has no result {path:?}")]
    ResultNotFound { job_id: String, path: String },
    #[error("the request needs a Content-Length")]
    LengthRequired,
    #[error("the range starts at {start}, past the end of the {size}-byte blob")]
    RangeNotSatisfiable { start: u64, size: u64 },
    #[error("{0}")]
    Blob(#[from] super::blobs::BlobError),
    #[error("blob folder: {0}")]
    BlobFolder(std::io::Error),
}

impl From<getrandom::Error> for DevServerError {
    fn from(error: getrandom::Error) -> Self {
        Self::Random(error)
    }
}

impl DevServerError {
    /// The HTTP status the admin API answers this error with.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::BadRequest(_) | Self::InvalidJob(_) | Self::JobTooLarge { .. } => 400,
            Self::JobNotFound(_)
            | Self::RunnerNotFound(_)
            | Self::NoSuchGrant
            | Self::NotDeclared(_)
            | Self::BlobNotFound(_)
            | Self::ResultNotFound { .. } => 404,
            Self::NotCancellable { .. } => 409,
            Self::GrantEnded { .. } => 410,
            Self::LengthRequired => 411,
            Self::RangeNotSatisfiable { .. } => 416,
            Self::Blob(error) => error.http_status(),
            Self::Config(_)
            | Self::Bind { .. }
            | Self::Tls(_)
            | Self::Store(_)
            | Self::Random(_)
            | Self::AdminToken(_)
            | Self::BlobFolder(_) => 500,
        }
    }

    /// The request field at fault, for `{"error": ..., "field": ...}`.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::InvalidJob(error) => Some(error.field()),
            Self::BlobNotFound(_) => Some("inputs"),
            _ => None,
        }
    }
}
