use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::media_types::*;

/// Content descriptor, as in the OCI image spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

/// Whether a manifest describes one image/artifact or a list of manifests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    Image,
    Index,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error("manifest media type {0:?} is not supported")]
    UnsupportedMediaType(String),
    #[error("manifest mediaType field {body:?} does not match Content-Type {header:?}")]
    MediaTypeMismatch { header: String, body: String },
    #[error("manifest schemaVersion must be 2")]
    SchemaVersion,
    #[error("image manifest has no config descriptor")]
    MissingConfig,
    #[error("index has no manifests list")]
    MissingManifests,
}

/// The parts of a manifest the registry must understand: what it references and
/// what it is attached to. The stored bytes are always exactly what the client sent.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub media_type: String,
    pub kind: ManifestKind,
    pub artifact_type: Option<String>,
    pub config: Option<Descriptor>,
    /// Layers of an image manifest, or child manifests of an index.
    pub references: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<BTreeMap<String, String>>,
}

fn kind_of(media_type: &str) -> Option<ManifestKind> {
    match media_type {
        OCI_MANIFEST | DOCKER_MANIFEST => Some(ManifestKind::Image),
        OCI_INDEX | DOCKER_MANIFEST_LIST => Some(ManifestKind::Index),
        _ => None,
    }
}

impl Manifest {
    /// Parses and validates a manifest body. `content_type` is the request's
    /// Content-Type header, if the client sent a meaningful one.
    pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Self, ManifestError> {
        let raw: Raw =
            serde_json::from_slice(body).map_err(|e| ManifestError::Json(e.to_string()))?;
        let header = content_type
            .map(|c| c.split(';').next().unwrap_or(c).trim())
            .filter(|c| {
                !c.is_empty() && *c != "application/json" && *c != "application/octet-stream"
            });
        let media_type = match (header, raw.media_type.as_deref()) {
            (Some(h), Some(b)) if h != b => {
                return Err(ManifestError::MediaTypeMismatch {
                    header: h.to_string(),
                    body: b.to_string(),
                });
            }
            (Some(h), _) => h.to_string(),
            (None, Some(b)) => b.to_string(),
            // Without any declared type, the shape decides (as containerd does).
            (None, None) if raw.manifests.is_some() => OCI_INDEX.to_string(),
            (None, None) => OCI_MANIFEST.to_string(),
        };
        let kind = kind_of(&media_type)
            .ok_or_else(|| ManifestError::UnsupportedMediaType(media_type.clone()))?;
        if raw.schema_version != Some(2) {
            return Err(ManifestError::SchemaVersion);
        }
        let references = match kind {
            ManifestKind::Image => {
                if raw.config.is_none() {
                    return Err(ManifestError::MissingConfig);
                }
                raw.layers.unwrap_or_default()
            }
            ManifestKind::Index => raw.manifests.ok_or(ManifestError::MissingManifests)?,
        };
        Ok(Manifest {
            media_type,
            kind,
            artifact_type: raw.artifact_type,
            config: raw.config,
            references,
            subject: raw.subject,
            annotations: raw.annotations,
        })
    }

    /// The artifact type the referrers API reports: `artifactType`, else the config's media type.
    pub fn effective_artifact_type(&self) -> Option<String> {
        self.artifact_type
            .clone()
            .or_else(|| self.config.as_ref().map(|c| c.media_type.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2}"#;

    #[test]
    fn parses_an_image_manifest_with_subject() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"application/x.sig","config":{CONFIG},"layers":[],"subject":{CONFIG}}}"#
        );
        let m = Manifest::parse(Some(OCI_MANIFEST), body.as_bytes()).unwrap();
        assert_eq!(m.kind, ManifestKind::Image);
        assert!(m.subject.is_some());
        assert_eq!(
            m.effective_artifact_type().as_deref(),
            Some("application/x.sig")
        );
    }

    #[test]
    fn rejects_mismatched_or_broken_manifests() {
        let body = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[]}}"#);
        assert!(matches!(
            Manifest::parse(Some(OCI_MANIFEST), body.as_bytes()),
            Err(ManifestError::MediaTypeMismatch { .. })
        ));
        assert!(Manifest::parse(Some(OCI_MANIFEST), b"{not json").is_err());
        let no_config =
            format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","layers":[]}}"#);
        assert_eq!(
            Manifest::parse(None, no_config.as_bytes()).unwrap_err(),
            ManifestError::MissingConfig
        );
        assert!(Manifest::parse(Some("text/plain"), br#"{"schemaVersion":2}"#).is_err());
    }
}
