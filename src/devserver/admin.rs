//! Routing: the runner endpoint and the admin HTTP API (JSON in, JSON out). Every
//! handler is a thin call into `Hub`; errors become `{"error": ...}` with a status.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;

use super::api::{
    CommandIssued, DrainRequest, EventRecord, JobCreated, JobInfo, JobRequest, RunnerInfo,
    TokenCreated,
};
use super::error::DevServerError;
use super::server::{AppState, error_response};
use super::ws::runner_endpoint;
use crate::protocol::RUNNER_PATH;

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route(RUNNER_PATH, get(runner_endpoint))
        .route("/admin/v1/registration-tokens", post(create_token))
        .route("/admin/v1/runners", get(list_runners))
        .route("/admin/v1/runners/{id}", get(get_runner))
        .route("/admin/v1/runners/{id}/events", get(runner_events))
        .route("/admin/v1/runners/{id}/drain", post(drain_runner))
        .route("/admin/v1/jobs", get(list_jobs).post(create_job))
        .route("/admin/v1/jobs/{id}", get(get_job))
        .route("/admin/v1/jobs/{id}/cancel", post(cancel_job))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

impl IntoResponse for DevServerError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(error = %self, "admin request failed");
        }
        error_response(status, &self.to_string())
    }
}

type ApiResult<T> = Result<T, DevServerError>;

/// Parse a JSON body ourselves, so a bad body is a JSON 400 like every other error
/// (axum's `Json` extractor answers in plain text).
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

async fn runner_events(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<EventRecord>>> {
    Ok(Json(app.hub.events(&id)?))
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
