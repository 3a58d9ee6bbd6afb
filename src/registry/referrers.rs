use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::error::Result;
use super::{RegistryState, Request};
use crate::oci::{Descriptor, Digest, OCI_INDEX, RepositoryName};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    media_type: &'static str,
    manifests: Vec<Descriptor>,
}

/// The referrers API: an index of the manifests whose subject is `digest`. Never 404:
/// an unknown subject simply has no referrers.
pub async fn list(
    state: &RegistryState,
    name: &RepositoryName,
    digest: &Digest,
    req: &Request,
) -> Result<Response> {
    let mut manifests = state.store.referrers(name, digest).await?;
    let filter = req.query("artifactType").filter(|t| !t.is_empty());
    if let Some(wanted) = filter {
        manifests.retain(|d| d.artifact_type.as_deref() == Some(wanted));
    }
    let body = serde_json::to_vec(&Index {
        schema_version: 2,
        media_type: OCI_INDEX,
        manifests,
    })
    .expect("indexes serialize");
    let mut response = (StatusCode::OK, [(header::CONTENT_TYPE, OCI_INDEX)], body).into_response();
    if filter.is_some() {
        response.headers_mut().insert(
            "oci-filters-applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(response)
}
