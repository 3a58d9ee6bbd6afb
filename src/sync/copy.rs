//! Copying one tag between two registries, whole: an index with every manifest it lists,
//! each manifest's config and layers, and the referrers (signatures, SBOMs) of each.
//! Blobs the destination has are not sent (a HEAD first); blobs it has in another
//! repository are mounted; the rest stream from source to destination without being held.
//! Manifests travel as their exact bytes, so every digest is the same on both sides.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};

use super::client::{
    BlobStream, ClientError, Mount, RawManifest, Registry, fallback_tag, is_manifest_type,
};
use crate::oci::{Descriptor, Digest, Manifest, ManifestKind, OCI_INDEX, is_non_distributable};

/// Indexes nest at most this deep (an index of indexes of images is already unusual).
const MAX_DEPTH: u8 = 4;

/// Referrers of referrers (a signature of an SBOM) are followed this many levels.
const MAX_REFERRER_DEPTH: u8 = 2;

/// What copying moved, for the task record, the metrics and the benchmark.
#[derive(Debug, Default)]
pub struct Stats {
    pub bytes_sent: AtomicU64,
    pub blobs_sent: AtomicU64,
    pub blobs_present: AtomicU64,
    pub blobs_mounted: AtomicU64,
    pub manifests_sent: AtomicU64,
}

impl Stats {
    pub fn bytes(&self) -> u64 {
        self.bytes_sent.load(Ordering::Relaxed)
    }
}

/// Blobs known to be at the destination, by digest → a repository holding it, kept
/// between copies of one rule so a layer shared by many images is checked once and
/// mounted into further repositories. Bounded; forgetting only costs a HEAD.
#[derive(Default)]
pub struct KnownBlobs {
    at: Mutex<HashMap<Digest, String>>,
    /// One copy of a digest at a time: concurrent images sharing a layer send it once.
    in_flight: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
}

const MAX_KNOWN: usize = 100_000;

impl KnownBlobs {
    fn repo_of(&self, digest: &Digest) -> Option<String> {
        self.at.lock().expect("known blobs").get(digest).cloned()
    }

    fn insert(&self, digest: &Digest, repo: &str) {
        let mut at = self.at.lock().expect("known blobs");
        if at.len() >= MAX_KNOWN {
            at.clear();
        }
        at.insert(digest.clone(), repo.to_string());
    }

    /// Forgets everything (the destination may have lost content, e.g. was reset).
    pub fn clear(&self) {
        self.at.lock().expect("known blobs").clear();
    }

    async fn lock(&self, digest: &Digest) -> BlobTurn<'_> {
        let slot = self
            .in_flight
            .lock()
            .expect("in-flight blobs")
            .entry(digest.clone())
            .or_default()
            .clone();
        let guard = slot.clone().lock_owned().await;
        BlobTurn {
            known: self,
            digest: digest.clone(),
            _guard: guard,
        }
    }
}

struct BlobTurn<'a> {
    known: &'a KnownBlobs,
    digest: Digest,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for BlobTurn<'_> {
    fn drop(&mut self) {
        let mut map = self.known.in_flight.lock().expect("in-flight blobs");
        // Only this turn and the map hold it: nobody waits, drop the entry.
        if map
            .get(&self.digest)
            .is_some_and(|slot| Arc::strong_count(slot) <= 2)
        {
            map.remove(&self.digest);
        }
    }
}

/// How one tag's copy ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagOutcome {
    /// The destination now has the tag at `digest`.
    Copied { digest: Digest },
    /// It already had it (referrers were brought up to date).
    UpToDate { digest: Digest },
    /// It has the tag at other content and the rule does not overwrite.
    Conflict { source: Digest, destination: Digest },
    /// The source no longer has the tag.
    Gone,
}

/// One copy from `src_repo` on `src` to `dst_repo` on `dst`.
pub struct Copier<'a> {
    pub src: &'a Registry,
    pub dst: &'a Registry,
    pub src_repo: &'a str,
    pub dst_repo: &'a str,
    pub known: &'a KnownBlobs,
    pub stats: &'a Stats,
}

impl Copier<'_> {
    /// Copies `tag` (with everything it references, and its referrers).
    pub async fn copy_tag(&self, tag: &str, overwrite: bool) -> Result<TagOutcome, ClientError> {
        let Some(manifest) = self.src.get_manifest(self.src_repo, tag).await? else {
            return Ok(TagOutcome::Gone);
        };
        let existing = self.dst.manifest_digest(self.dst_repo, tag).await?;
        match existing {
            Some(d) if d == manifest.digest => {
                self.copy_referrers_of_tree(&manifest).await?;
                return Ok(TagOutcome::UpToDate { digest: d });
            }
            Some(d) if !overwrite => {
                return Ok(TagOutcome::Conflict {
                    source: manifest.digest,
                    destination: d,
                });
            }
            _ => {}
        }
        self.copy_content(&manifest, 0).await?;
        self.dst.put_manifest(self.dst_repo, tag, &manifest).await?;
        self.stats.manifests_sent.fetch_add(1, Ordering::Relaxed);
        self.copy_referrers_of_tree(&manifest).await?;
        Ok(TagOutcome::Copied {
            digest: manifest.digest,
        })
    }

    /// Everything `manifest` references, so the destination accepts it: child manifests
    /// (stored by digest) or config and layers.
    fn copy_content<'s>(
        &'s self,
        manifest: &'s RawManifest,
        depth: u8,
    ) -> BoxFuture<'s, Result<(), ClientError>> {
        async move {
            let parsed = self.parse(manifest)?;
            match parsed.kind {
                ManifestKind::Index => {
                    if depth >= MAX_DEPTH {
                        return Err(self.invalid(manifest, "indexes nest too deeply"));
                    }
                    for child in &parsed.references {
                        if !is_manifest_type(&child.media_type) {
                            // An index may list other artifacts; copy them as blobs.
                            self.copy_blob(child).await?;
                            continue;
                        }
                        self.copy_manifest_by_digest(&child.digest, depth + 1)
                            .await?;
                    }
                }
                ManifestKind::Image => {
                    for blob in parsed.config.iter().chain(&parsed.references) {
                        if is_non_distributable(&blob.media_type) && blob.urls.is_some() {
                            continue;
                        }
                        self.copy_blob(blob).await?;
                    }
                }
            }
            Ok(())
        }
        .boxed()
    }

    /// Copies the manifest `digest` (stored by digest) unless the destination has it.
    async fn copy_manifest_by_digest(
        &self,
        digest: &Digest,
        depth: u8,
    ) -> Result<Option<RawManifest>, ClientError> {
        if self
            .dst
            .manifest_digest(self.dst_repo, &digest.to_string())
            .await?
            .is_some()
        {
            return Ok(None);
        }
        let child = self
            .src
            .get_manifest(self.src_repo, &digest.to_string())
            .await?
            .ok_or_else(|| ClientError::Invalid {
                what: format!("manifest {digest}"),
                url: self.src.describe(),
                detail: format!("it is referenced in {} but missing", self.src_repo),
            })?;
        self.copy_content(&child, depth).await?;
        self.dst
            .put_manifest(self.dst_repo, &digest.to_string(), &child)
            .await?;
        self.stats.manifests_sent.fetch_add(1, Ordering::Relaxed);
        Ok(Some(child))
    }

    /// The referrers of `manifest` and of each manifest an index lists.
    async fn copy_referrers_of_tree(&self, manifest: &RawManifest) -> Result<(), ClientError> {
        self.copy_referrers(&manifest.digest, 0).await?;
        let parsed = self.parse(manifest)?;
        if parsed.kind == ManifestKind::Index {
            for child in parsed
                .references
                .iter()
                .filter(|c| is_manifest_type(&c.media_type))
            {
                self.copy_referrers(&child.digest, 0).await?;
            }
        }
        Ok(())
    }

    /// Copies the manifests referring to `subject` that the destination lacks. Where the
    /// destination has no referrers API, they are listed in its fallback tag index.
    fn copy_referrers<'s>(
        &'s self,
        subject: &'s Digest,
        depth: u8,
    ) -> BoxFuture<'s, Result<(), ClientError>> {
        async move {
            if depth > MAX_REFERRER_DEPTH {
                return Ok(());
            }
            let referrers = self.src.referrers(self.src_repo, subject).await?;
            let mut unlisted = Vec::new();
            for referrer in referrers {
                if !is_manifest_type(&referrer.media_type) {
                    continue;
                }
                let present = self
                    .dst
                    .manifest_digest(self.dst_repo, &referrer.digest.to_string())
                    .await?
                    .is_some();
                if !present {
                    let manifest = self
                        .src
                        .get_manifest(self.src_repo, &referrer.digest.to_string())
                        .await?;
                    let Some(manifest) = manifest else { continue };
                    self.copy_content(&manifest, 1).await?;
                    let has_api = self
                        .dst
                        .put_manifest(self.dst_repo, &referrer.digest.to_string(), &manifest)
                        .await?;
                    self.stats.manifests_sent.fetch_add(1, Ordering::Relaxed);
                    if !has_api {
                        unlisted.push(referrer.clone());
                    }
                } else if !self.dst_lists(subject, &referrer).await? {
                    unlisted.push(referrer.clone());
                }
                self.copy_referrers(&referrer.digest, depth + 1).await?;
            }
            if !unlisted.is_empty() {
                self.add_to_fallback_index(subject, unlisted).await?;
            }
            Ok(())
        }
        .boxed()
    }

    /// Whether the destination lists `referrer` among the referrers of `subject`.
    async fn dst_lists(
        &self,
        subject: &Digest,
        referrer: &Descriptor,
    ) -> Result<bool, ClientError> {
        Ok(self
            .dst
            .referrers(self.dst_repo, subject)
            .await?
            .iter()
            .any(|d| d.digest == referrer.digest))
    }

    /// Adds `referrers` to the destination's fallback tag index of `subject` (OCI 1.1:
    /// an image index tagged `<alg>-<hex>` listing the subject's referrers).
    async fn add_to_fallback_index(
        &self,
        subject: &Digest,
        referrers: Vec<Descriptor>,
    ) -> Result<(), ClientError> {
        let tag = fallback_tag(subject);
        let mut listed: Vec<serde_json::Value> =
            match self.dst.get_manifest(self.dst_repo, &tag).await? {
                Some(index) => serde_json::from_slice::<serde_json::Value>(&index.bytes)
                    .ok()
                    .and_then(|v| v.get("manifests").and_then(|m| m.as_array()).cloned())
                    .unwrap_or_default(),
                None => Vec::new(),
            };
        let mut changed = false;
        for r in referrers {
            let digest = r.digest.to_string();
            if listed
                .iter()
                .any(|d| d.get("digest").and_then(|x| x.as_str()) == Some(&digest))
            {
                continue;
            }
            listed.push(serde_json::to_value(&r).expect("descriptors serialise"));
            changed = true;
        }
        if !changed {
            return Ok(());
        }
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": listed,
        });
        let bytes = bytes::Bytes::from(serde_json::to_vec(&index).expect("JSON"));
        let manifest = RawManifest {
            digest: Digest::of(crate::oci::Algorithm::Sha256, &bytes),
            bytes,
            media_type: OCI_INDEX.to_string(),
        };
        self.dst
            .put_manifest(self.dst_repo, &tag, &manifest)
            .await?;
        Ok(())
    }

    /// Makes blob `blob` present in the destination repository: already there, mounted
    /// from another repository of the destination, or streamed from the source.
    async fn copy_blob(&self, blob: &Descriptor) -> Result<(), ClientError> {
        let digest = &blob.digest;
        let _turn = self.known.lock(digest).await;
        if self.known.repo_of(digest).as_deref() == Some(self.dst_repo) {
            self.stats.blobs_present.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if self.dst.has_blob(self.dst_repo, digest).await? {
            self.known.insert(digest, self.dst_repo);
            self.stats.blobs_present.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        // A mount source on the destination: a repository we put it in, or the source
        // repository itself when both sides are one registry.
        let from = self.known.repo_of(digest).or_else(|| {
            self.src
                .same_registry(self.dst)
                .then(|| self.src_repo.to_string())
        });
        let location = match from {
            Some(from) => match self.dst.mount_blob(self.dst_repo, digest, &from).await? {
                Mount::Mounted => {
                    self.known.insert(digest, self.dst_repo);
                    self.stats.blobs_mounted.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Mount::Upload(location) => location,
            },
            None => self.dst.start_upload(self.dst_repo).await?,
        };
        let source = self.src.get_blob(self.src_repo, digest).await?;
        if source.len != blob.size {
            return Err(ClientError::Invalid {
                what: format!("blob {digest}"),
                url: self.src.describe(),
                detail: format!(
                    "it is {} bytes, its descriptor says {}",
                    source.len, blob.size
                ),
            });
        }
        let stats = self.stats;
        let counted = BlobStream {
            len: source.len,
            stream: source.stream,
        };
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let counted = BlobStream {
            len: counted.len,
            stream: counted
                .stream
                .inspect(move |chunk| {
                    if let Ok(c) = chunk {
                        counter.fetch_add(c.len() as u64, Ordering::Relaxed);
                    }
                })
                .boxed(),
        };
        let result = self
            .dst
            .finish_upload(self.dst_repo, &location, digest, counted)
            .await;
        stats
            .bytes_sent
            .fetch_add(sent.load(Ordering::Relaxed), Ordering::Relaxed);
        result?;
        stats.blobs_sent.fetch_add(1, Ordering::Relaxed);
        self.known.insert(digest, self.dst_repo);
        Ok(())
    }

    fn parse(&self, manifest: &RawManifest) -> Result<Manifest, ClientError> {
        Manifest::parse(Some(&manifest.media_type), &manifest.bytes)
            .map_err(|e| self.invalid(manifest, &e.to_string()))
    }

    fn invalid(&self, manifest: &RawManifest, detail: &str) -> ClientError {
        ClientError::Invalid {
            what: format!("manifest {}", manifest.digest),
            url: self.src.describe(),
            detail: detail.to_string(),
        }
    }
}
