//! From a read archive to a pushed tag: find the image (OCI `index.json`, else
//! `docker save`'s `manifest.json`), commit the blobs it needs, push its manifest(s).

use std::collections::HashSet;

use axum::body::Body;
use axum::http::Method;
use serde_json::{Value, json};

use super::{Contents, Pusher, Uploaded};
use crate::oci::{Digest, Reference, Tag};
use crate::registry::routes::Route;
use crate::web::error::{ApiCode, ApiError, ApiResult};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

fn not_an_image(why: impl std::fmt::Display) -> ApiError {
    ApiError::new(ApiCode::NotAnImage, format!("not an image: {why}"))
}

fn digest_of(v: &Value) -> Option<Digest> {
    v.get("digest")?.as_str()?.parse().ok()
}

fn media_type(v: &Value) -> Option<&str> {
    v.get("mediaType").and_then(Value::as_str)
}

/// A manifest to push: its bytes, media type and the blobs it needs.
struct Plan {
    bytes: Vec<u8>,
    media_type: String,
    blobs: Vec<Digest>,
}

fn is_index(media: &str, value: &Value) -> bool {
    media == OCI_INDEX || media == DOCKER_LIST || value.get("manifests").is_some()
}

/// The blobs an image manifest needs, if the archive holds them all.
fn image_blobs(contents: &Contents, manifest: &Value) -> Option<Vec<Digest>> {
    let mut blobs = Vec::new();
    blobs.push(digest_of(manifest.get("config")?)?);
    for layer in manifest.get("layers")?.as_array()? {
        blobs.push(digest_of(layer)?);
    }
    blobs
        .iter()
        .all(|d| contents.blobs.contains_key(d))
        .then_some(blobs)
}

/// From `index.json`: the first image it lists, and for an index every platform the
/// archive holds (an index whose platforms are not all present becomes its first
/// complete image).
fn from_oci_layout(contents: &Contents, index: &[u8]) -> ApiResult<Vec<Plan>> {
    let index: Value = serde_json::from_slice(index)
        .map_err(|e| not_an_image(format!("index.json is not JSON: {e}")))?;
    let first = index
        .get("manifests")
        .and_then(Value::as_array)
        .and_then(|m| m.first())
        .ok_or_else(|| not_an_image("index.json lists no manifest"))?;
    let digest = digest_of(first).ok_or_else(|| not_an_image("index.json names no digest"))?;
    let bytes = contents.json.get(&digest).ok_or_else(|| {
        not_an_image(format!(
            "index.json names {digest}, which the archive does not hold"
        ))
    })?;
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| not_an_image(format!("{digest} is not JSON: {e}")))?;
    let media = media_type(&value)
        .or(media_type(first))
        .unwrap_or(OCI_MANIFEST)
        .to_string();
    if !is_index(&media, &value) {
        let blobs = image_blobs(contents, &value).ok_or_else(|| {
            not_an_image(format!(
                "manifest {digest} needs blobs the archive does not hold"
            ))
        })?;
        return Ok(vec![Plan {
            bytes: bytes.to_vec(),
            media_type: media,
            blobs,
        }]);
    }
    let mut plans = Vec::new();
    let children = value
        .get("manifests")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for child in &children {
        let Some(child_digest) = digest_of(child) else {
            continue;
        };
        let Some(child_bytes) = contents.json.get(&child_digest) else {
            continue;
        };
        let Ok(child_value) = serde_json::from_slice::<Value>(child_bytes) else {
            continue;
        };
        let Some(blobs) = image_blobs(contents, &child_value) else {
            continue;
        };
        plans.push(Plan {
            bytes: child_bytes.to_vec(),
            media_type: media_type(&child_value)
                .or(media_type(child))
                .unwrap_or(OCI_MANIFEST)
                .to_string(),
            blobs,
        });
    }
    if plans.is_empty() {
        return Err(not_an_image(format!(
            "index {digest} lists no image the archive holds whole"
        )));
    }
    if plans.len() == children.len() {
        plans.push(Plan {
            bytes: bytes.to_vec(),
            media_type: media,
            blobs: Vec::new(),
        });
    } else {
        plans.truncate(1);
    }
    Ok(plans)
}

/// From `docker save`'s `manifest.json`: an OCI manifest over its config and layers.
fn from_docker_save(contents: &Contents, manifest: &[u8]) -> ApiResult<Vec<Plan>> {
    let list: Value = serde_json::from_slice(manifest)
        .map_err(|e| not_an_image(format!("manifest.json is not JSON: {e}")))?;
    let image = list
        .as_array()
        .and_then(|l| l.first())
        .ok_or_else(|| not_an_image("manifest.json lists no image"))?;
    let resolve = |path: &str| -> Option<Digest> {
        let mut path = path.trim_start_matches("./").to_string();
        for _ in 0..8 {
            if let Some(d) = contents.paths.get(&path) {
                return Some(d.clone());
            }
            let (_, target) = contents.links.iter().find(|(p, _)| *p == path)?;
            // Symlink targets are relative to the link's folder.
            path = match (path.rsplit_once('/'), target.starts_with("../")) {
                (Some((dir, _)), true) => normalise(&format!("{dir}/{target}")),
                _ => target.trim_start_matches("./").to_string(),
            };
        }
        None
    };
    let config_path = image
        .get("Config")
        .and_then(Value::as_str)
        .ok_or_else(|| not_an_image("manifest.json names no Config"))?;
    let config = resolve(config_path).ok_or_else(|| {
        not_an_image(format!(
            "manifest.json names {config_path}, which the archive does not hold"
        ))
    })?;
    let config_size = contents.blobs.get(&config).map_or(0, |s| s.size);
    let mut layers = Vec::new();
    let mut blobs = vec![config.clone()];
    for layer in image
        .get("Layers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        let path = layer.as_str().unwrap_or_default();
        let digest = resolve(path).ok_or_else(|| {
            not_an_image(format!(
                "manifest.json names layer {path}, which the archive does not hold"
            ))
        })?;
        let staged = &contents.blobs[&digest];
        let media = if staged.gzipped {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        } else {
            "application/vnd.oci.image.layer.v1.tar"
        };
        layers.push(json!({"mediaType": media, "digest": digest.to_string(), "size": staged.size}));
        blobs.push(digest);
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": config_size},
        "layers": layers,
    });
    Ok(vec![Plan {
        bytes: serde_json::to_vec(&manifest).expect("a manifest serializes"),
        media_type: OCI_MANIFEST.into(),
        blobs,
    }])
}

fn normalise(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

pub async fn push(pusher: &Pusher<'_>, contents: &Contents, tag: &Tag) -> ApiResult<Uploaded> {
    let plans = if let Some(index) = contents.metadata.get("index.json") {
        from_oci_layout(contents, index)?
    } else if let Some(manifest) = contents.metadata.get("manifest.json") {
        from_docker_save(contents, manifest)?
    } else {
        return Err(not_an_image(
            "the archive has neither index.json (an OCI image layout) nor manifest.json (docker save)",
        ));
    };
    let mut committed = HashSet::new();
    let mut bytes = 0u64;
    for plan in &plans {
        for digest in &plan.blobs {
            if committed.insert(digest.clone()) {
                let staged = &contents.blobs[digest];
                pusher.commit(&staged.session, digest).await?;
                bytes += staged.size;
            }
        }
    }
    let (last, children) = plans.split_last().expect("a plan is never empty");
    for child in children {
        let digest = Digest::of(crate::oci::Algorithm::Sha256, &child.bytes);
        pusher
            .call(
                Route::Manifest(pusher.repo.clone(), Reference::Digest(digest)),
                Method::PUT,
                Vec::new(),
                Some(&child.media_type),
                Body::from(child.bytes.clone()),
            )
            .await?;
    }
    let response = pusher
        .call(
            Route::Manifest(pusher.repo.clone(), Reference::Tag(tag.clone())),
            Method::PUT,
            Vec::new(),
            Some(&last.media_type),
            Body::from(last.bytes.clone()),
        )
        .await?;
    let digest = response
        .headers()
        .get("docker-content-digest")
        .and_then(|d| d.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok(Uploaded {
        repository: pusher.repo.to_string(),
        tag: tag.to_string(),
        digest,
        media_type: last.media_type.clone(),
        blobs: committed.len(),
        bytes,
    })
}
