//! Routing: the runner endpoint and the admin HTTP API (JSON in, JSON out). Every
//! handler is a thin call into `Hub`; errors become `{"error": ...}` with a status.
//! Every request passes `access::guard` first (see there for who may do what).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router, middleware};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::time::{Instant, timeout_at};

use super::access::{AccessPolicy, guard, json_errors};
use super::api::{
    CommandIssued, DrainRequest, ErrorBody, EventRecord, JobCreated, JobInfo, JobRequest,
    OutputPage, RunnerInfo, TokenCreated,
};
use super::blob_routes;
use super::error::DevServerError;
use super::metrics::ApiMetrics;
use super::server::{AppState, error_response};
use super::ws::runner_endpoint;
use crate::protocol::{MAX_FRAME_BYTES, OutputStream, RUNNER_PATH};

/// The largest request body: a job whose `start_job` fits a frame fits in this too.
const BODY_LIMIT: usize = 2 * MAX_FRAME_BYTES;
/// How long one output read may wait for new bytes (`wait_ms`).
const MAX_OUTPUT_WAIT: Duration = Duration::from_secs(30);
/// How many bytes one output read returns unless asked otherwise.
const DEFAULT_OUTPUT_READ: u64 = 64 * 1024;

pub(crate) fn router(state: AppState, policy: Arc<AccessPolicy>) -> Router {
    let metrics = ApiMetrics::new();
    let metrics_page = Router::new()
        .route("/metrics", get(super::metrics::metrics_page))
        .with_state((state.clone(), metrics.clone()));
    Router::new()
        .route(RUNNER_PATH, get(runner_endpoint))
        .route("/admin/v1/registration-tokens", post(create_token))
        .route("/admin/v1/runners", get(list_runners))
        .route("/admin/v1/runners/{id}", get(get_runner))
        .route("/admin/v1/runners/{id}/events", get(runner_events))
        .route("/admin/v1/runners/{id}/drain", post(drain_runner))
        .route("/admin/v1/jobs", get(list_jobs).post(create_job))
        .route("/admin/v1/jobs/{id}", get(get_job))
        .route("/admin/v1/jobs/{id}/output", get(job_output))
        .route("/admin/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/admin/v1/jobs/{id}/results", get(blob_routes::job_results))
        .route(
            "/admin/v1/jobs/{id}/results/{*path}",
            get(blob_routes::result_file),
        )
        .route("/admin/v1/blobs", put(blob_routes::store_blob))
        .route(
            "/blobs/v1/{token}/in/{sha256}",
            get(blob_routes::fetch_input),
        )
        .route(
            "/blobs/v1/{token}/out/{index}",
            put(blob_routes::upload_output),
        )
        .route(
            "/blobs/v1/{token}/out/{index}/{*path}",
            put(blob_routes::upload_output_at),
        )
        .merge(metrics_page)
        .route_layer(middleware::from_fn_with_state(
            metrics,
            super::metrics::track,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        // Layers run outside in: the JSON rewrite sees every answer, the guard's too.
        .layer(middleware::from_fn_with_state(policy, guard))
        .layer(middleware::map_response(json_errors))
        .with_state(state)
}

impl IntoResponse for DevServerError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(error = %self, "admin request failed");
        }
        let body = ErrorBody {
            error: self.to_string(),
            field: self.field().map(str::to_owned),
        };
        (status, Json(body)).into_response()
    }
}

type ApiResult<T> = Result<T, DevServerError>;

/// Parse a JSON body ourselves, so a bad body is a JSON 400 that says what was wrong.
fn parse_body<T: DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|error| DevServerError::BadRequest(error.to_string()))
}

async fn create_token(State(app): State<AppState>) -> ApiResult<(StatusCode, Json<TokenCreated>)> {
    let token = app.hub.mint_token()?;
    Ok((StatusCode::CREATED, Json(TokenCreated { token })))
}

async fn list_runners(State(app): State<AppState>) -> ApiResult<Json<Vec<RunnerInfo>>> {
    Ok(Json(app.hub.runners()?))
}

async fn get_runner(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<RunnerInfo>> {
    app.hub
        .runner(&id)?
        .map(Json)
        .ok_or(DevServerError::RunnerNotFound(id))
}

/// `GET /admin/v1/runners/{id}/events?after=N&limit=M`: a runner may have sent
/// millions of events, so they are listed in pages.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    /// Only events with an index above this one (the last index of the page before).
    #[serde(default)]
    after: u64,
    /// At most this many; `DEFAULT_EVENTS_PAGE` when absent, never more than
    /// `MAX_EVENTS_PAGE`.
    #[serde(default)]
    limit: Option<usize>,
}

/// Events in one answer when the client names no limit.
const DEFAULT_EVENTS_PAGE: usize = 1000;
/// The most events one answer holds, whatever the client asks.
const MAX_EVENTS_PAGE: usize = 10_000;

async fn runner_events(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<EventsQuery>,
) -> ApiResult<Json<Vec<EventRecord>>> {
    let limit = query
        .limit
        .unwrap_or(DEFAULT_EVENTS_PAGE)
        .min(MAX_EVENTS_PAGE);
    Ok(Json(app.hub.events_page(&id, query.after, limit)?))
}

async fn drain_runner(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<CommandIssued>)> {
    let request: DrainRequest = if body.is_empty() {
        DrainRequest::default()
    } else {
        parse_body(&body)?
    };
    let command_index = app.hub.drain_runner(&id, request.deadline_secs)?;
    Ok((StatusCode::ACCEPTED, Json(CommandIssued { command_index })))
}

async fn list_jobs(State(app): State<AppState>) -> ApiResult<Json<Vec<JobInfo>>> {
    Ok(Json(app.hub.jobs()?))
}

async fn create_job(
    State(app): State<AppState>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<JobCreated>)> {
    let request: JobRequest = parse_body(&body)?;
    let id = app.hub.submit_job(request)?;
    Ok((StatusCode::CREATED, Json(JobCreated { id })))
}

async fn get_job(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<JobInfo>> {
    app.hub
        .job(&id)?
        .map(Json)
        .ok_or(DevServerError::JobNotFound(id))
}

/// `GET /admin/v1/jobs/{id}/output?stream=stdout&offset=N&limit=M&wait_ms=W`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputQuery {
    #[serde(default = "default_stream")]
    stream: OutputStream,
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    limit: Option<u64>,
    /// Wait this long (at most 30 s) for bytes at `offset` when there are none yet and
    /// the job has not ended: a follower's long poll.
    #[serde(default)]
    wait_ms: u64,
}

fn default_stream() -> OutputStream {
    OutputStream::Stdout
}

/// A bounded range of a job's output; with `wait_ms`, waits for it to grow.
async fn job_output(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<OutputQuery>,
) -> ApiResult<Json<OutputPage>> {
    let limit = query.limit.unwrap_or(DEFAULT_OUTPUT_READ);
    let wait = Duration::from_millis(query.wait_ms).min(MAX_OUTPUT_WAIT);
    let deadline = Instant::now() + wait;
    // Subscribed before the first read, so a change between the read and the wait
    // still wakes it.
    let mut changes = app.hub.events_stored();
    loop {
        let chunk = app.hub.output(&id, query.stream, query.offset, limit)?;
        let nothing_yet = chunk.data.is_empty() && !chunk.complete;
        // A re-queued job starts its output again: below `offset` is news too.
        let restarted = chunk.held_bytes < query.offset;
        if !nothing_yet || restarted || limit == 0 {
            return Ok(Json(chunk));
        }
        // Out of time, or the server is going away: answer with what there is.
        if !matches!(timeout_at(deadline, changes.changed()).await, Ok(Ok(()))) {
            return Ok(Json(chunk));
        }
    }
}

async fn cancel_job(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<JobInfo>> {
    Ok(Json(app.hub.cancel_job(&id)?))
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "no such endpoint")
}

async fn method_not_allowed() -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this endpoint",
    )
}
