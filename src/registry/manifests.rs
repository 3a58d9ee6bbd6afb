use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::error::{ErrorCode, RegistryError, Result};
use super::events::PushEvent;
use super::{RegistryState, Request, header_value};
use crate::oci::{Manifest, Reference, RepositoryName, Tag};
use crate::storage::StorageError;

/// Manifests larger than this are refused; the spec asks registries to accept at least 4 MiB.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

fn unknown(name: &RepositoryName, reference: &Reference) -> RegistryError {
    RegistryError::new(
        ErrorCode::ManifestUnknown,
        format!("manifest {reference} is not in repository {name}"),
    )
}

pub async fn get(
    state: &RegistryState,
    name: &RepositoryName,
    reference: &Reference,
    req: &Request,
) -> Result<Response> {
    let (digest, media_type, size, body) = if req.method == Method::HEAD {
        let found = state
            .store
            .stat_manifest(name, reference)
            .await?
            .ok_or_else(|| unknown(name, reference))?;
        (found.digest, found.media_type, found.size, Bytes::new())
    } else {
        let found = state
            .store
            .get_manifest(name, reference)
            .await?
            .ok_or_else(|| unknown(name, reference))?;
        let size = found.bytes.len() as u64;
        // A GET is a pull (a HEAD only asks); counted in memory, flushed later.
        state.store.count_pull(name, &found.digest);
        (found.digest, found.media_type, size, found.bytes)
    };
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, header_value(&media_type));
    h.insert(header::CONTENT_LENGTH, header_value(size.to_string()));
    h.insert("docker-content-digest", header_value(digest.to_string()));
    Ok(response)
}

/// Past the limit, a body is still read (and dropped) up to this size, so the client gets
/// to read the 413 instead of a connection reset mid-send.
const DRAIN_LIMIT: usize = 64 << 20;

fn too_large(len: usize) -> RegistryError {
    RegistryError::new(
        ErrorCode::SizeInvalid,
        format!(
            "manifest of {len} bytes or more is larger than the {} MiB limit",
            MAX_MANIFEST_BYTES >> 20
        ),
    )
    .with_status(StatusCode::PAYLOAD_TOO_LARGE)
}

async fn read_limited(body: axum::body::Body) -> Result<Bytes> {
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            RegistryError::new(
                ErrorCode::ManifestInvalid,
                format!("manifest body could not be read: {e}"),
            )
        })?;
        seen += chunk.len();
        if seen > DRAIN_LIMIT {
            return Err(too_large(seen));
        }
        if seen <= MAX_MANIFEST_BYTES {
            buf.extend_from_slice(&chunk);
        }
    }
    if seen > MAX_MANIFEST_BYTES {
        return Err(too_large(seen));
    }
    Ok(buf.freeze())
}

pub async fn put(
    state: &RegistryState,
    name: &RepositoryName,
    reference: &Reference,
    req: &Request,
    body: axum::body::Body,
) -> Result<Response> {
    if let Some(len) = req
        .header(header::CONTENT_LENGTH)
        .and_then(|l| l.parse::<usize>().ok())
        && len > DRAIN_LIMIT
    {
        return Err(too_large(len));
    }
    // `?tag=` (repeatable) points more tags at the manifest in the same request.
    let extra_tags = req
        .query_all("tag")
        .map(str::parse)
        .collect::<std::result::Result<Vec<Tag>, _>>()?;
    let content_type = req.header(header::CONTENT_TYPE).map(str::to_string);
    let body = read_limited(body).await?;
    let manifest = Manifest::parse(content_type.as_deref(), &body)?;
    // Immutable tags are written create-only: of concurrent pushes of one new release
    // tag, exactly one lands, and the others are told so.
    let snapshot = state.policy.current();
    let pushed_tags = match reference {
        Reference::Tag(tag) => std::slice::from_ref(tag),
        Reference::Digest(_) => &[],
    };
    let create_only: Vec<Tag> = pushed_tags
        .iter()
        .chain(&extra_tags)
        .filter(|t| snapshot.immutable_pattern(name, t.as_str()).is_some())
        .cloned()
        .collect();
    let digest = match state
        .store
        .put_manifest(name, reference, &extra_tags, body, &manifest, &create_only)
        .await
    {
        Ok(d) => d,
        Err(StorageError::TagTaken { tag, existing }) => {
            let pattern = snapshot
                .immutable_pattern(name, tag.as_str())
                .unwrap_or("?");
            return Err(RegistryError::new(
                ErrorCode::Denied,
                format!(
                    "tag {tag} of {name} is immutable (it matches {pattern:?} in the Repository's spec.immutableTags): it already points to {existing} and cannot be overwritten; push a new tag"
                ),
            ));
        }
        Err(StorageError::DigestMismatch { expected, actual }) => {
            return Err(RegistryError::new(
                ErrorCode::DigestInvalid,
                format!("manifest was pushed as {expected} but its content hashes to {actual}"),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let mut tags: Vec<String> = extra_tags.iter().map(|t| t.to_string()).collect();
    if let Reference::Tag(tag) = reference {
        tags.insert(0, tag.to_string());
    }
    state.events.publish(PushEvent {
        repository: name.clone(),
        digest: digest.clone(),
        tags,
        pushed_at: jiff::Timestamp::now(),
    });
    let mut response = StatusCode::CREATED.into_response();
    let h = response.headers_mut();
    h.insert(
        header::LOCATION,
        header_value(format!("/v2/{name}/manifests/{digest}")),
    );
    h.insert("docker-content-digest", header_value(digest.to_string()));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    for tag in &extra_tags {
        h.append("oci-tag", header_value(tag.as_str()));
    }
    if let Some(subject) = &manifest.subject {
        h.insert("oci-subject", header_value(subject.digest.to_string()));
    }
    Ok(response)
}

pub async fn delete(
    state: &RegistryState,
    name: &RepositoryName,
    reference: &Reference,
) -> Result<Response> {
    if state.store.delete_manifest(name, reference).await? {
        Ok(StatusCode::ACCEPTED.into_response())
    } else {
        Err(unknown(name, reference))
    }
}
