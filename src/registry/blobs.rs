use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::Stream;
use futures::stream::BoxStream;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use super::error::{ErrorCode, RegistryError, Result};
use super::{RegistryState, Request, header_value};
use crate::oci::{Digest, RepositoryName};
use crate::storage::{BlobRedirect, ByteRange};

fn unknown(digest: &Digest, name: &RepositoryName) -> RegistryError {
    RegistryError::new(
        ErrorCode::BlobUnknown,
        format!("blob {digest} is not in repository {name}"),
    )
}

/// 416 for a `Range` that selects nothing, or that berth cannot serve, with the blob's
/// size in `Content-Range` as RFC 9110 asks; 404 first when there is no such blob.
async fn unsatisfiable(
    state: &RegistryState,
    name: &RepositoryName,
    digest: &Digest,
    reason: String,
) -> RegistryError {
    let size = match state.store.stat_blob(name, digest).await {
        Ok(Some(stat)) => stat.size,
        Ok(None) => return unknown(digest, name),
        Err(e) => return e.into(),
    };
    RegistryError::new(
        ErrorCode::RangeInvalid,
        format!("{reason} (the blob has {size} bytes)"),
    )
    .with_header(
        header::CONTENT_RANGE,
        header_value(format!("bytes */{size}")),
    )
}

pub async fn get(
    state: &RegistryState,
    name: &RepositoryName,
    digest: &Digest,
    req: &Request,
) -> Result<Response> {
    if req.method == axum::http::Method::HEAD {
        let stat = state
            .store
            .stat_blob(name, digest)
            .await?
            .ok_or_else(|| unknown(digest, name))?;
        let mut response = StatusCode::OK.into_response();
        let h = response.headers_mut();
        h.insert(header::CONTENT_LENGTH, header_value(stat.size.to_string()));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        h.insert("docker-content-digest", header_value(digest.to_string()));
        return Ok(response);
    }

    let header_range = req.header(header::RANGE);
    // Only whole-blob GETs go to S3: a ranged GET (a resuming client) is answered by
    // berth, with its own 206/416 semantics (see storage/redirect.rs).
    if header_range.is_none() {
        match state.store.blob_redirect(name, digest).await {
            Ok(Some(redirect)) => return Ok(redirected(state, digest, redirect)),
            Ok(None) => {}
            Err(crate::storage::StorageError::BlobUnknown(_)) => return Err(unknown(digest, name)),
            Err(e) => return Err(e.into()),
        }
    }
    let range = match header_range.map(ByteRange::parse).transpose() {
        Ok(range) => range.flatten(),
        Err(e) => return Err(unsatisfiable(state, name, digest, e.to_string()).await),
    };
    let blob = match state.store.read_blob(name, digest, range).await {
        Ok(Some(blob)) => blob,
        Ok(None) => {
            let reason = format!("range {header_range:?} selects no byte of blob {digest}");
            return Err(unsatisfiable(state, name, digest, reason).await);
        }
        Err(crate::storage::StorageError::BlobUnknown(_)) => return Err(unknown(digest, name)),
        Err(e) => return Err(e.into()),
    };
    let len = blob.range.end - blob.range.start;
    let partial = range.is_some();
    let body = Body::from_stream(Metered {
        inner: blob.stream,
        bytes: state.metrics.http.bytes_sent.clone(),
        duration: state.metrics.http.blob_serve_duration.clone(),
        started: Instant::now(),
    });
    let status = if partial {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let mut response = (status, body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_LENGTH, header_value(len.to_string()));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert("docker-content-digest", header_value(digest.to_string()));
    if partial {
        h.insert(
            header::CONTENT_RANGE,
            header_value(format!(
                "bytes {}-{}/{}",
                blob.range.start,
                blob.range.end.saturating_sub(1),
                blob.total_size
            )),
        );
    }
    Ok(response)
}

/// `307 Temporary Redirect` to the presigned URL: the client fetches the bytes from S3
/// with the same method, and verifies them against the digest it asked for.
fn redirected(state: &RegistryState, digest: &Digest, redirect: BlobRedirect) -> Response {
    state.metrics.http.bytes_redirected.inc_by(redirect.size);
    let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
    let h = response.headers_mut();
    h.insert(header::LOCATION, header_value(redirect.url.as_str()));
    h.insert("docker-content-digest", header_value(digest.to_string()));
    response
}

pub async fn delete(
    state: &RegistryState,
    name: &RepositoryName,
    digest: &Digest,
) -> Result<Response> {
    if state.store.delete_blob(name, digest).await? {
        Ok(StatusCode::ACCEPTED.into_response())
    } else {
        Err(unknown(digest, name))
    }
}

/// A blob stream that counts the bytes it yields and, when it ends or the client
/// goes away, records how long serving took.
struct Metered {
    inner: BoxStream<'static, std::io::Result<Bytes>>,
    bytes: Counter,
    duration: Histogram,
    started: Instant,
}

impl Stream for Metered {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(Some(Ok(chunk))) = &polled {
            self.bytes.inc_by(chunk.len() as u64);
        }
        polled
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        self.duration.observe(self.started.elapsed().as_secs_f64());
    }
}
