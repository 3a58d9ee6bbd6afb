//! Blob uploads: monolithic, POST then PUT, chunked PATCHes, status, cancel, and
//! cross-repository mounts.

use std::time::Instant;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{Stream, TryStreamExt};

use super::content_range::ChunkRange;
use super::error::{ErrorCode, RegistryError, Result};
use super::{RegistryState, Request, header_value};
use crate::oci::{Algorithm, Digest, RepositoryName};
use crate::storage::UploadState;

fn created(name: &RepositoryName, digest: &Digest) -> Response {
    let mut response = StatusCode::CREATED.into_response();
    let h = response.headers_mut();
    h.insert(
        header::LOCATION,
        header_value(format!("/v2/{name}/blobs/{digest}")),
    );
    h.insert("docker-content-digest", header_value(digest.to_string()));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    response
}

fn in_progress(status: StatusCode, name: &RepositoryName, upload: &UploadState) -> Response {
    let mut response = status.into_response();
    let h = response.headers_mut();
    h.insert(
        header::LOCATION,
        header_value(format!("/v2/{name}/blobs/uploads/{}", upload.id)),
    );
    // As CNCF distribution does, an empty upload reports "0-0".
    h.insert(
        header::RANGE,
        header_value(format!("0-{}", upload.size.saturating_sub(1))),
    );
    h.insert("docker-upload-uuid", header_value(&upload.id));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    response
}

fn digest_param(req: &Request) -> Result<Option<Digest>> {
    req.query("digest")
        .map(|d| d.parse::<Digest>().map_err(Into::into))
        .transpose()
}

/// The body's length, when the request told it (`Content-Length`, which hyper holds
/// the body to): it lets storage stream parts larger than it would hold in memory.
fn body_length(body: &axum::body::Body) -> Option<u64> {
    axum::body::HttpBody::size_hint(body).exact()
}

/// The request body as a stream of chunks, counted in the metrics.
fn body_stream(
    state: &RegistryState,
    body: axum::body::Body,
) -> impl Stream<Item = Result<bytes::Bytes, axum::Error>> + Unpin {
    let counter = state.metrics.http.bytes_received.clone();
    body.into_data_stream().inspect_ok(move |chunk| {
        counter.inc_by(chunk.len() as u64);
    })
}

/// The first byte offset from a `Content-Range: <start>-<end>` header, checked against
/// `Content-Length` when both are present. A range berth cannot accept is a 416, as the
/// spec asks of an out-of-order chunk.
fn chunk_start(req: &Request) -> Result<Option<u64>> {
    let Some(value) = req.header(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let invalid = |message: String| {
        RegistryError::new(ErrorCode::BlobUploadInvalid, message)
            .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
    };
    let range = ChunkRange::parse(value).map_err(|e| invalid(e.to_string()))?;
    // hyper has already refused a Content-Length that is not a number.
    if let Some(len) = req
        .header(header::CONTENT_LENGTH)
        .and_then(|l| l.parse::<u64>().ok())
        && len != range.len()
    {
        return Err(invalid(format!(
            "Content-Range {value:?} covers {} bytes but Content-Length is {len}",
            range.len()
        )));
    }
    Ok(Some(range.start()))
}

pub async fn start(
    state: &RegistryState,
    name: &RepositoryName,
    req: &Request,
    body: axum::body::Body,
) -> Result<Response> {
    if let Some(mount) = req.query("mount") {
        let digest: Digest = mount.parse()?;
        let from: Option<RepositoryName> = req.query("from").map(str::parse).transpose()?;
        if state
            .store
            .mount_blob(name, &digest, from.as_ref())
            .await?
            .is_some()
        {
            return Ok(created(name, &digest));
        }
        // Nothing to mount: fall back to a regular upload session, as the spec asks.
    } else if let Some(digest) = digest_param(req)? {
        let length = body_length(&body);
        let started = Instant::now();
        let duration = state.metrics.http.upload_duration.clone();
        state
            .store
            .put_blob(name, &digest, body_stream(state, body), length)
            .await?;
        duration.observe(started.elapsed().as_secs_f64());
        return Ok(created(name, &digest));
    }
    let algorithm = match req.query("digest-algorithm") {
        None => Algorithm::Sha256,
        Some(a) => Algorithm::parse(a).ok_or_else(|| {
            RegistryError::new(
                ErrorCode::DigestInvalid,
                format!("digest algorithm {a:?} is not supported (use sha256 or sha512)"),
            )
        })?,
    };
    let upload = state.store.start_upload(name, algorithm).await?;
    Ok(in_progress(StatusCode::ACCEPTED, name, &upload))
}

pub async fn patch(
    state: &RegistryState,
    name: &RepositoryName,
    id: &str,
    req: &Request,
    body: axum::body::Body,
) -> Result<Response> {
    let start = chunk_start(req)?;
    let length = body_length(&body);
    let started = Instant::now();
    let duration = state.metrics.http.upload_duration.clone();
    let upload = state
        .store
        .append_upload(name, id, start, body_stream(state, body), length)
        .await?;
    duration.observe(started.elapsed().as_secs_f64());
    Ok(in_progress(StatusCode::ACCEPTED, name, &upload))
}

pub async fn finish(
    state: &RegistryState,
    name: &RepositoryName,
    id: &str,
    req: &Request,
    body: axum::body::Body,
) -> Result<Response> {
    let digest = digest_param(req)?.ok_or_else(|| {
        RegistryError::new(
            ErrorCode::DigestInvalid,
            "the digest query parameter is required to complete an upload",
        )
    })?;
    let start = chunk_start(req)?;
    let length = body_length(&body);
    let started = Instant::now();
    let duration = state.metrics.http.upload_duration.clone();
    state
        .store
        .finish_upload(name, id, &digest, start, body_stream(state, body), length)
        .await?;
    duration.observe(started.elapsed().as_secs_f64());
    Ok(created(name, &digest))
}

pub async fn status(state: &RegistryState, name: &RepositoryName, id: &str) -> Result<Response> {
    let upload = state.store.upload_status(name, id).await?;
    Ok(in_progress(StatusCode::NO_CONTENT, name, &upload))
}

pub async fn cancel(state: &RegistryState, name: &RepositoryName, id: &str) -> Result<Response> {
    state.store.cancel_upload(name, id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
