//! A job's files through the admin API: inputs stored before a submission (`PUT
//! /admin/v1/blobs`, streamed from the file with its length and `Content-Digest`), the
//! results listed (`GET .../results`) and fetched (`GET .../results/{path}`, streamed
//! to a file and checked against the digest the server sends). Memory stays bounded
//! whatever the files' size.

use std::path::{Path, PathBuf};

use axum::body::{Body, Bytes};
use futures_util::StreamExt;
use hyper::{Method, header};
use sha2::{Digest, Sha256};
use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::client::Client;
use super::{CtlError, Format, path_segment, print, print_json, render};
use crate::devserver::{BlobStored, InputRequest, JobResults};
use crate::protocol::{CONTENT_DIGEST, content_digest, parse_content_digest, to_hex};

/// What one read of a file hands on.
const CHUNK: usize = 64 * 1024;

/// `--input FILE[:PATH]`: the local file, and where it goes in the job's `work/`
/// (default: its file name).
pub fn parse_input(text: &str) -> Result<(PathBuf, String), String> {
    let bytes = text.as_bytes();
    // On Windows, `C:\x` or `C:/x` alone is a path, not FILE:PATH.
    let drive_only = cfg!(windows)
        && bytes.len() > 2
        && bytes[0].is_ascii_alphabetic()
        && bytes[1] == b':'
        && matches!(bytes[2], b'\\' | b'/')
        && !text[2..].contains(':');
    let (file, path) = match text.rsplit_once(':') {
        Some((file, path)) if !drive_only && !file.is_empty() => {
            (PathBuf::from(file), path.to_owned())
        }
        _ => {
            let file = PathBuf::from(text);
            let name = file
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| format!("{text:?} names no file"))?
                .to_owned();
            (file, name)
        }
    };
    crate::protocol::validate_file_path(&path, false)
        .map_err(|why| format!("input path {path:?}: {why}"))?;
    Ok((file, path))
}

/// Store each local file as a blob; the inputs a job request names them by (an input
/// is executable in the job when the local file is).
pub async fn store_inputs(
    client: &Client,
    inputs: &[(PathBuf, String)],
) -> Result<Vec<InputRequest>, CtlError> {
    let mut stored = Vec::with_capacity(inputs.len());
    for (file, path) in inputs {
        let blob = store_blob(client, file).await?;
        stored.push(InputRequest {
            sha256: blob.sha256,
            path: path.clone(),
            executable: is_executable(file),
        });
    }
    Ok(stored)
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|meta| meta.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("exe") || ext.eq_ignore_ascii_case("bat"))
}

async fn store_blob(client: &Client, path: &Path) -> Result<BlobStored, CtlError> {
    let unreadable = |e: std::io::Error| CtlError::Usage(format!("{}: {e}", path.display()));
    let (sha256, size) = hash_file(path).await.map_err(unreadable)?;
    let file = File::open(path).await.map_err(unreadable)?;
    let headers = vec![
        (header::CONTENT_LENGTH, size.to_string()),
        (
            header::HeaderName::from_static(CONTENT_DIGEST),
            content_digest(&sha256).unwrap_or_default(),
        ),
    ];
    let request = client.request(
        Method::PUT,
        "/admin/v1/blobs",
        file_body(file, size),
        Some("application/octet-stream"),
        headers,
    )?;
    let answer = client.open(request).await?;
    if !answer.status.is_success() {
        return Err(answer.into_error().await);
    }
    let bytes = axum::body::to_bytes(Body::new(answer.body), 64 * 1024)
        .await
        .map_err(|e| CtlError::BadAnswer(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| CtlError::BadAnswer(e.to_string()))
}

async fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok((to_hex(&hasher.finalize()), size));
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
}

/// At most `size` bytes of `file`, a chunk at a time.
fn file_body(file: File, size: u64) -> Body {
    let chunks = futures_util::stream::unfold((file, size), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let want = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
        let mut buf = vec![0u8; want];
        match file.read(&mut buf).await {
            Ok(0) => Some((
                Err(std::io::Error::other(
                    "the file became shorter while it was sent",
                )),
                (file, 0),
            )),
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), (file, left - n as u64)))
            }
            Err(error) => Some((Err(error), (file, 0))),
        }
    });
    Body::from_stream(chunks)
}

/// `ctl results ID`.
pub async fn results(client: &Client, id: &str, format: Format) -> Result<i32, CtlError> {
    let path = format!("/admin/v1/jobs/{}/results", path_segment(id));
    let results: JobResults = client.get(&path).await?;
    match format {
        Format::Json => print_json(&results)?,
        Format::Human => print(&render::results(&results))?,
    }
    Ok(0)
}

/// `ctl fetch ID PATH [-o FILE]`: the result streamed into `dest` (`-`: standard
/// output; default: its file name in the current folder, never over an existing file),
/// checked against the `Content-Digest` the server sends.
pub async fn fetch(
    client: &Client,
    id: &str,
    result: &str,
    dest: Option<&Path>,
    format: Format,
) -> Result<i32, CtlError> {
    let segments: Vec<String> = result.split('/').map(path_segment).collect();
    let path = format!(
        "/admin/v1/jobs/{}/results/{}",
        path_segment(id),
        segments.join("/")
    );
    let request = client.request(Method::GET, &path, Body::empty(), None, Vec::new())?;
    let answer = client.open(request).await?;
    if !answer.status.is_success() {
        return Err(answer.into_error().await);
    }
    let declared = answer
        .headers
        .get(CONTENT_DIGEST)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_content_digest);
    let to_stdout = dest == Some(Path::new("-"));
    let target = match dest {
        Some(path) => path.to_owned(),
        None => PathBuf::from(result.rsplit('/').next().unwrap_or(result)),
    };
    let mut file = if to_stdout {
        None
    } else {
        let mut options = tokio::fs::OpenOptions::new();
        options.write(true);
        if dest.is_some() {
            options.create(true).truncate(true);
        } else {
            options.create_new(true);
        }
        Some(options.open(&target).await.map_err(|e| {
            CtlError::Usage(format!("{}: {e} (name another with -o)", target.display()))
        })?)
    };
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut stream = Body::new(answer.body).into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| CtlError::Unreachable {
            server: client.base().to_string(),
            why: format!("the download broke: {e}"),
        })?;
        hasher.update(&chunk);
        size += chunk.len() as u64;
        match &mut file {
            Some(file) => file.write_all(&chunk).await?,
            // A command line's standard output: a blocking write is what it waits on.
            None => std::io::Write::write_all(&mut std::io::stdout().lock(), &chunk)?,
        }
    }
    match &mut file {
        Some(file) => file.flush().await?,
        None => std::io::Write::flush(&mut std::io::stdout().lock())?,
    }
    let got = to_hex(&hasher.finalize());
    if declared.as_deref().is_some_and(|want| want != got) {
        return Err(CtlError::BadAnswer(format!(
            "the {size} bytes received have sha256 {got}, not the {} the server announced",
            declared.unwrap_or_default()
        )));
    }
    if !to_stdout {
        match format {
            Format::Json => print_json(&serde_json::json!({
                "path": target, "size": size, "sha256": got
            }))?,
            Format::Human => print(&format!(
                "{}: {size} bytes, sha256 {got}\n",
                target.display()
            ))?,
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_input_names_its_file_and_where_it_goes() {
        assert_eq!(
            parse_input("data/mesh.vtu"),
            Ok((PathBuf::from("data/mesh.vtu"), "mesh.vtu".into()))
        );
        assert_eq!(
            parse_input("data/mesh.vtu:in/mesh.vtu"),
            Ok((PathBuf::from("data/mesh.vtu"), "in/mesh.vtu".into()))
        );
        assert!(parse_input("x:../escape").is_err());
        assert!(parse_input("x:/etc/passwd").is_err());
        assert_eq!(
            parse_input("C:\\data\\mesh.vtu:in/mesh.vtu"),
            Ok((PathBuf::from("C:\\data\\mesh.vtu"), "in/mesh.vtu".into()))
        );
        if cfg!(windows) {
            assert_eq!(
                parse_input("C:\\data\\mesh.vtu"),
                Ok((PathBuf::from("C:\\data\\mesh.vtu"), "mesh.vtu".into()))
            );
        }
    }
}
