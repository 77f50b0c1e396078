//! The HTTP side of a job's files: what runners call with the URLs their jobs were
//! handed (`GET /blobs/v1/{token}/in/{sha256}`, with `Range: bytes=N-` for a resumed
//! download; `PUT /blobs/v1/{token}/out/{n}[/{path}]`, with `Content-Length` and
//! `Content-Digest`), and the admin API's (`PUT /admin/v1/blobs` to store an input,
//! `GET /admin/v1/jobs/{id}/results[/{path}]` to read results back). Bodies stream
//! through `blobs::BlobStore` in both directions; nothing holds a file in memory.
//!
//! Access (`access.rs`): blob URLs need no admin token (the token in the path is the
//! capability), but obey the same Host and Origin rules as the admin API.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::DevServerError;
use super::grants::UploadTarget;
use super::job_side::{BlobStored, JobResults};
use super::server::AppState;
use crate::protocol::{CONTENT_DIGEST, content_digest, parse_content_digest, validate_sha256};

type ApiResult<T> = Result<T, DevServerError>;

/// `GET /blobs/v1/{token}/in/{sha256}`: an input of the token's attempt.
pub(crate) async fn fetch_input(
    State(app): State<AppState>,
    Path((token, sha256)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let size = app.hub.input_grant(&token, &sha256)?;
    let start = range_start(&headers);
    if start > 0 && start >= size {
        return Err(DevServerError::RangeNotSatisfiable { start, size });
    }
    let body = app
        .blobs
        .read(&sha256, start)
        .await
        .map_err(DevServerError::BlobFolder)?;
    let mut response = (
        if start > 0 {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        },
        body,
    )
        .into_response();
    let headers = response.headers_mut();
    set(headers, header::CONTENT_LENGTH, &(size - start).to_string());
    set(headers, header::CONTENT_TYPE, "application/octet-stream");
    set(headers, header::ACCEPT_RANGES, "bytes");
    if start > 0 {
        let last = size - 1;
        set(
            headers,
            header::CONTENT_RANGE,
            &format!("bytes {start}-{last}/{size}"),
        );
    }
    Ok(response)
}

/// `PUT /blobs/v1/{token}/out/{n}`: the file of a single-file output.
pub(crate) async fn upload_output(
    State(app): State<AppState>,
    Path((token, index)): Path<(String, usize)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<BlobStored>)> {
    let target = app.hub.upload_target(&token, index, None)?;
    receive_output(&app, target, &headers, body).await
}

/// `PUT /blobs/v1/{token}/out/{n}/{path}`: one file of a glob output.
pub(crate) async fn upload_output_at(
    State(app): State<AppState>,
    Path((token, index, path)): Path<(String, usize, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<BlobStored>)> {
    let target = app.hub.upload_target(&token, index, Some(&path))?;
    receive_output(&app, target, &headers, body).await
}

/// An upload must say its length and its checksum up front: the body is refused
/// unless it is exactly that.
async fn receive_output(
    app: &AppState,
    target: UploadTarget,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<BlobStored>)> {
    let length = content_length(headers)?;
    let digest = declared_digest(headers)?.ok_or_else(|| {
        DevServerError::BadRequest(
            "an upload must carry its checksum as `Content-Digest: sha-256=:<base64>:`".to_owned(),
        )
    })?;
    let sha256 = app.blobs.receive(body, length, Some(&digest)).await?;
    app.hub.record_upload(&target, &sha256, length)?;
    tracing::info!(job_id = %target.job_id, attempt = target.attempt, path = %target.path,
        size = length, "result received");
    Ok((
        StatusCode::CREATED,
        Json(BlobStored {
            sha256,
            size: length,
        }),
    ))
}

/// `PUT /admin/v1/blobs`: store a file a job may name as an input.
pub(crate) async fn store_blob(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<BlobStored>)> {
    let length = content_length(&headers)?;
    let digest = declared_digest(&headers)?;
    let sha256 = app.blobs.receive(body, length, digest.as_deref()).await?;
    app.hub.record_blob(&sha256, length)?;
    Ok((
        StatusCode::CREATED,
        Json(BlobStored {
            sha256,
            size: length,
        }),
    ))
}

/// `GET /admin/v1/jobs/{id}/results`.
pub(crate) async fn job_results(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<JobResults>> {
    Ok(Json(app.hub.results(&id)?))
}

/// `GET /admin/v1/jobs/{id}/results/{path}`: one result file, streamed, with its
/// `Content-Digest`.
pub(crate) async fn result_file(
    State(app): State<AppState>,
    Path((id, path)): Path<(String, String)>,
) -> ApiResult<Response> {
    let (sha256, size) = app.hub.result_blob(&id, &path)?;
    let body = app
        .blobs
        .read(&sha256, 0)
        .await
        .map_err(DevServerError::BlobFolder)?;
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    set(headers, header::CONTENT_LENGTH, &size.to_string());
    set(headers, header::CONTENT_TYPE, "application/octet-stream");
    if let Some(digest) = content_digest(&sha256) {
        set(headers, CONTENT_DIGEST, &digest);
    }
    Ok(response)
}

fn set(headers: &mut HeaderMap, name: impl header::IntoHeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

fn content_length(headers: &HeaderMap) -> ApiResult<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .ok_or(DevServerError::LengthRequired)
}

/// The SHA-256 a request's `Content-Digest` names; an error if the header is there
/// but names none.
fn declared_digest(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(value) = headers.get(CONTENT_DIGEST) else {
        return Ok(None);
    };
    let parsed = value.to_str().ok().and_then(parse_content_digest);
    match parsed {
        Some(sha256) if validate_sha256(&sha256).is_ok() => Ok(Some(sha256)),
        _ => Err(DevServerError::BadRequest(
            "Content-Digest names no sha-256 (expected `sha-256=:<base64>:`)".to_owned(),
        )),
    }
}

/// Where a `Range: bytes=N-` asks to start; any other form (or none) is the whole
/// blob, which a client must accept from a `200`.
fn range_start(headers: &HeaderMap) -> u64 {
    headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
        .and_then(|v| v.strip_suffix('-'))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_open_ended_range_is_honoured() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::RANGE, HeaderValue::from_str(value).expect("ascii"));
            range_start(&headers)
        };
        assert_eq!(with("bytes=100-"), 100);
        assert_eq!(with("bytes=0-"), 0);
        assert_eq!(with("bytes=1-2"), 0);
        assert_eq!(with("bytes=-5"), 0);
        assert_eq!(with("items=3-"), 0);
        assert_eq!(range_start(&HeaderMap::new()), 0);
    }
}
