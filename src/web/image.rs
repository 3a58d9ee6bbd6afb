//! What the pages show of a stored image: size, platforms, config, layers, history,
//! read from the manifest (and, for an image, its small config blob).

use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;

use super::error::{ApiError, ApiResult};
use crate::oci::{Digest, Reference, RepositoryName, Tag};
use crate::storage::Store;

/// Configs larger than this are not read for display.
const MAX_CONFIG_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Layer {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryStep {
    pub created: Option<String>,
    pub created_by: Option<String>,
    pub comment: Option<String>,
    pub empty_layer: bool,
}

/// One manifest as the pages show it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageSummary {
    pub digest: String,
    pub media_type: String,
    /// Manifest, config and layers (for an index: the manifests it lists and theirs as declared).
    pub size: u64,
    /// `os/architecture[/variant]` of the image, or of each manifest of an index.
    pub platforms: Vec<String>,
    #[serde(skip)]
    pub manifest: Value,
    #[serde(skip)]
    pub config: Option<Value>,
}

fn platform_of(v: &Value) -> Option<String> {
    let os = v.get("os")?.as_str()?;
    let arch = v.get("architecture")?.as_str()?;
    Some(match v.get("variant").and_then(Value::as_str) {
        Some(variant) => format!("{os}/{arch}/{variant}"),
        None => format!("{os}/{arch}"),
    })
}

fn descriptor_size(v: &Value) -> u64 {
    v.get("size").and_then(Value::as_u64).unwrap_or(0)
}

/// Reads a small blob (a config) whole; `None` when it is missing or too big to show.
pub async fn read_small_blob(
    store: &Store,
    repo: &RepositoryName,
    digest: &Digest,
) -> ApiResult<Option<Vec<u8>>> {
    let Some(stat) = store.stat_blob(repo, digest).await? else {
        return Ok(None);
    };
    if stat.size > MAX_CONFIG_BYTES {
        return Ok(None);
    }
    let Some(mut body) = store.read_blob(repo, digest, None).await? else {
        return Ok(None);
    };
    let mut data = Vec::with_capacity(stat.size as usize);
    while let Some(chunk) = body.stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                super::error::ApiCode::Internal,
                format!("reading blob {digest}: {e}"),
            )
        })?;
        data.extend_from_slice(&chunk);
        if data.len() as u64 > MAX_CONFIG_BYTES {
            return Ok(None);
        }
    }
    Ok(Some(data))
}

/// The summary of what `reference` names in `repo`, or `None` when it does not exist.
pub async fn summarise(
    store: &Store,
    repo: &RepositoryName,
    reference: &Reference,
) -> ApiResult<Option<ImageSummary>> {
    let Some(found) = store.get_manifest(repo, reference).await? else {
        return Ok(None);
    };
    let manifest: Value = serde_json::from_slice(&found.bytes).unwrap_or(Value::Null);
    let mut size = found.bytes.len() as u64;
    let mut platforms = Vec::new();
    let mut config = None;
    if let Some(children) = manifest.get("manifests").and_then(Value::as_array) {
        for child in children {
            size = size.saturating_add(descriptor_size(child));
            if let Some(p) = child.get("platform").and_then(platform_of)
                && !platforms.contains(&p)
            {
                platforms.push(p);
            }
        }
    } else {
        if let Some(layers) = manifest.get("layers").and_then(Value::as_array) {
            for layer in layers {
                size = size.saturating_add(descriptor_size(layer));
            }
        }
        if let Some(descriptor) = manifest.get("config") {
            size = size.saturating_add(descriptor_size(descriptor));
            if let Some(digest) = descriptor
                .get("digest")
                .and_then(Value::as_str)
                .and_then(|d| d.parse::<Digest>().ok())
                && let Some(bytes) = read_small_blob(store, repo, &digest).await?
            {
                let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                platforms.extend(platform_of(&value));
                config = Some(value);
            }
        }
    }
    Ok(Some(ImageSummary {
        digest: found.digest.to_string(),
        media_type: found.media_type,
        size,
        platforms,
        manifest,
        config,
    }))
}

pub fn layers(summary: &ImageSummary) -> Vec<Layer> {
    summary
        .manifest
        .get("layers")
        .and_then(Value::as_array)
        .map(|layers| {
            layers
                .iter()
                .map(|l| Layer {
                    digest: l.get("digest").and_then(Value::as_str).unwrap_or("").into(),
                    media_type: l
                        .get("mediaType")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .into(),
                    size: descriptor_size(l),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The config's build history (the Dockerfile steps), oldest first.
pub fn history(summary: &ImageSummary) -> Vec<HistoryStep> {
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    summary
        .config
        .as_ref()
        .and_then(|c| c.get("history"))
        .and_then(Value::as_array)
        .map(|steps| {
            steps
                .iter()
                .map(|s| HistoryStep {
                    created: text(s, "created"),
                    created_by: text(s, "created_by"),
                    comment: text(s, "comment"),
                    empty_layer: s
                        .get("empty_layer")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn tag_reference(tag: &Tag) -> Reference {
    Reference::Tag(tag.clone())
}
