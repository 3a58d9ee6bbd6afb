//! Manifests, tags and the referrers index.

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use serde::{Deserialize, Serialize};

use object_store::path::Path;
use object_store::{PutMode, PutOptions, PutPayload};

use super::error::{Result, StorageError};
use super::layout::{self, Key};
use super::sweep_marker::Crossed;
use super::{KeyedGuard, Store};
use crate::oci::{
    Descriptor, Digest, Manifest, ManifestKind, Reference, RepositoryName, Tag,
    is_non_distributable,
};

/// Existence checks run this many requests at once; a manifest can list hundreds of layers.
const CHECK_CONCURRENCY: usize = 16;

/// What a repository records about one manifest revision.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestLink {
    pub media_type: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Digest>,
}

/// A tag pointer: everything a GET by tag needs, in one small object.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TagLink {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

pub struct StoredManifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

impl Store {
    /// Serialises, inside this process, every write and delete of tags under `scope`
    /// (a repository, or a namespace whose tag count is limited): a quota counted and
    /// a tag written under one guard cannot be overtaken, and a delete that found a tag
    /// pointing at a digest deletes it before anyone can move it. Replicas sharing S3
    /// are not covered by this lock; immutable tags are, by their create-only write.
    pub async fn lock_tags(&self, scope: &str) -> KeyedGuard {
        self.tags.lock(scope).await
    }

    /// Stores a validated manifest under `reference`, and points `extra_tags` at it too.
    /// Everything it references must already be in `repo`. Tags in `create_only` (the
    /// immutable ones) are written only if absent, with a conditional put that holds
    /// across processes and replicas: if one exists and points elsewhere, the push fails
    /// with `TagTaken` and that tag is left as it was. Returns the manifest's digest.
    pub async fn put_manifest(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
        extra_tags: &[Tag],
        body: Bytes,
        manifest: &Manifest,
        create_only: &[Tag],
    ) -> Result<Digest> {
        let algorithm = match reference {
            Reference::Digest(d) => d.algorithm(),
            Reference::Tag(_) => crate::oci::Algorithm::Sha256,
        };
        let digest = Digest::of(algorithm, &body);
        if let Reference::Digest(expected) = reference
            && expected != &digest
        {
            return Err(StorageError::DigestMismatch {
                expected: expected.clone(),
                actual: digest,
            });
        }
        // What this manifest writes and relies on stays while a collection runs: in this
        // process by claims, on other replicas sharing a bucket by the window (see
        // `sweep_gate.rs`), checked before any tag points at the manifest.
        let window = self.open_sweep_window().await?;
        let _pass = self.sweeps.enter(claims(repo, &digest, manifest)).await;
        self.check_references(repo, manifest).await?;
        self.write_revision(repo, &digest, &body, manifest).await?;
        if self.sweep_crossed(&window).await? {
            self.recheck_revision(repo, &digest, &body, manifest)
                .await?;
        }
        let pointer = TagLink {
            digest: digest.clone(),
            media_type: manifest.media_type.clone(),
            size: body.len() as u64,
        };
        let reference_tag = match reference {
            Reference::Tag(tag) => Some(tag),
            Reference::Digest(_) => None,
        };
        for tag in reference_tag.into_iter().chain(extra_tags) {
            let key = Key::Tag(repo, tag).path();
            if create_only.contains(tag) {
                self.create_tag(&key, tag, &pointer).await?;
            } else {
                self.put_json(&key, &pointer).await?;
            }
        }
        Ok(digest)
    }

    /// Writes a manifest revision: its content, its link and its referrers entry.
    async fn write_revision(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        body: &Bytes,
        manifest: &Manifest,
    ) -> Result<()> {
        // Content first, then the revision link, the referrers entry (and the tags last).
        self.put_bytes(&Key::Blob(digest).path(), body.clone())
            .await?;
        // The first pull of a fresh push (often a rollout right after it) skips the read.
        self.manifests.insert(digest, body);
        let link = ManifestLink {
            media_type: manifest.media_type.clone(),
            size: body.len() as u64,
            subject: manifest.subject.as_ref().map(|s| s.digest.clone()),
        };
        self.put_json(&Key::ManifestLink(repo, digest).path(), &link)
            .await?;
        if let Some(subject) = &manifest.subject {
            let descriptor = Descriptor {
                media_type: manifest.media_type.clone(),
                digest: digest.clone(),
                size: body.len() as u64,
                artifact_type: manifest.effective_artifact_type(),
                annotations: manifest.annotations.clone(),
                urls: None,
                platform: None,
            };
            let key = Key::Referrer {
                repo,
                subject: &subject.digest,
                referrer: digest,
            };
            self.put_json(&key.path(), &descriptor).await?;
        }
        Ok(())
    }

    /// After a sweep ran across a manifest push (and ended): the revision is written
    /// again if the sweep took any of it, and the push is refused with
    /// `ManifestBlobUnknown` (its revision removed) if it took something the manifest
    /// references.
    async fn recheck_revision(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        body: &Bytes,
        manifest: &Manifest,
    ) -> Result<()> {
        if let Some(missing) = self.first_missing_reference(repo, manifest).await? {
            let link = Key::ManifestLink(repo, digest).path();
            self.delete(&link).await?;
            if let Some(subject) = &manifest.subject {
                let entry = Key::Referrer {
                    repo,
                    subject: &subject.digest,
                    referrer: digest,
                };
                self.delete(&entry.path()).await?;
            }
            self.count_crossed(Crossed::refused);
            tracing::info!(repository = %repo, %digest, %missing, "a garbage collection deleted what a manifest being pushed references; refusing it");
            return Err(StorageError::ManifestBlobUnknown(missing));
        }
        let content = self.exists(&Key::Blob(digest).path()).await?;
        let link = self.exists(&Key::ManifestLink(repo, digest).path()).await?;
        if content && link {
            self.count_crossed(Crossed::kept);
        } else {
            self.write_revision(repo, digest, body, manifest).await?;
            self.count_crossed(Crossed::rewritten);
            tracing::info!(repository = %repo, %digest, "a garbage collection deleted a manifest being pushed again; wrote it again");
        }
        Ok(())
    }

    /// The first thing `manifest` references that `repo` no longer holds: its link, or
    /// the content behind the link.
    async fn first_missing_reference(
        &self,
        repo: &RepositoryName,
        manifest: &Manifest,
    ) -> Result<Option<Digest>> {
        let mut wanted: Vec<(Path, Digest, bool)> = Vec::new();
        if let Some(config) = &manifest.config {
            wanted.push((
                Key::BlobLink(repo, &config.digest).path(),
                config.digest.clone(),
                true,
            ));
        }
        for d in &manifest.references {
            match manifest.kind {
                ManifestKind::Image if is_non_distributable(&d.media_type) => {}
                ManifestKind::Image => wanted.push((
                    Key::BlobLink(repo, &d.digest).path(),
                    d.digest.clone(),
                    true,
                )),
                ManifestKind::Index => wanted.push((
                    Key::ManifestLink(repo, &d.digest).path(),
                    d.digest.clone(),
                    false,
                )),
            }
        }
        let store = self.clone();
        let missing: Vec<Digest> = stream::iter(wanted)
            .map(move |(link, digest, blob)| {
                let store = store.clone();
                async move {
                    let there = store.exists(&link).await?
                        && match blob {
                            true => store.content_survived(&digest).await?,
                            false => store.exists(&Key::Blob(&digest).path()).await?,
                        };
                    Ok::<_, StorageError>((!there).then_some(digest))
                }
            })
            .buffer_unordered(CHECK_CONCURRENCY)
            .try_filter_map(|d| async move { Ok(d) })
            .try_collect()
            .await?;
        Ok(missing.into_iter().next())
    }

    /// Writes a tag pointer only if the tag does not exist; pushing the same digest
    /// again is fine, another digest is `TagTaken`.
    async fn create_tag(&self, key: &Path, tag: &Tag, pointer: &TagLink) -> Result<()> {
        let data = serde_json::to_vec(pointer).expect("storage records always serialize");
        let options = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let created = self
            .objects
            .put_opts(key, PutPayload::from(data), options)
            .await;
        self.summaries.invalidate_key(key);
        match created {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => {
                let existing: TagLink = self
                    .get_json(key)
                    .await?
                    .ok_or_else(|| StorageError::corrupt(key, "tag vanished while created"))?;
                if existing.digest == pointer.digest {
                    Ok(())
                } else {
                    Err(StorageError::TagTaken {
                        tag: tag.clone(),
                        existing: existing.digest,
                    })
                }
            }
            Err(e) => Err(StorageError::backend("create", key, e)),
        }
    }

    async fn check_references(&self, repo: &RepositoryName, manifest: &Manifest) -> Result<()> {
        let mut wanted: Vec<Key<'_>> = Vec::new();
        if let Some(config) = &manifest.config {
            wanted.push(Key::BlobLink(repo, &config.digest));
        }
        for d in &manifest.references {
            match manifest.kind {
                ManifestKind::Image if is_non_distributable(&d.media_type) => {}
                ManifestKind::Image => wanted.push(Key::BlobLink(repo, &d.digest)),
                ManifestKind::Index => wanted.push(Key::ManifestLink(repo, &d.digest)),
            }
        }
        // Owned keys and digests: borrowed data inside buffered streams trips rustc's
        // `Send` inference for the handler futures.
        let checks: Vec<(object_store::path::Path, Digest)> = wanted
            .iter()
            .map(|k| match k {
                Key::BlobLink(_, d) | Key::ManifestLink(_, d) => (k.path(), (*d).clone()),
                _ => unreachable!("only link keys are checked"),
            })
            .collect();
        let store = self.clone();
        stream::iter(checks)
            .map(move |(key, digest)| {
                let store = store.clone();
                async move {
                    match store.exists(&key).await? {
                        true => Ok(()),
                        false => Err(StorageError::ManifestBlobUnknown(digest)),
                    }
                }
            })
            .buffer_unordered(CHECK_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    pub async fn resolve_tag(&self, repo: &RepositoryName, tag: &Tag) -> Result<Option<TagLink>> {
        self.get_json(&Key::Tag(repo, tag).path()).await
    }

    pub async fn manifest_link(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<ManifestLink>> {
        self.get_json(&Key::ManifestLink(repo, digest).path()).await
    }

    /// The manifest's digest, media type and size, without its body (for HEAD).
    pub async fn stat_manifest(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
    ) -> Result<Option<TagLink>> {
        match reference {
            Reference::Tag(tag) => self.resolve_tag(repo, tag).await,
            Reference::Digest(digest) => {
                Ok(self.manifest_link(repo, digest).await?.map(|l| TagLink {
                    digest: digest.clone(),
                    media_type: l.media_type,
                    size: l.size,
                }))
            }
        }
    }

    pub async fn get_manifest(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
    ) -> Result<Option<StoredManifest>> {
        let Some(found) = self.stat_manifest(repo, reference).await? else {
            return Ok(None);
        };
        let bytes = match self.manifests.get(&found.digest) {
            Some(bytes) => bytes,
            None => {
                let key = Key::Blob(&found.digest).path();
                let bytes = self
                    .get_bytes(&key)
                    .await?
                    .ok_or_else(|| StorageError::corrupt(&key, "manifest content is missing"))?;
                self.manifests.insert(&found.digest, &bytes);
                bytes
            }
        };
        Ok(Some(StoredManifest {
            digest: found.digest,
            media_type: found.media_type,
            bytes,
        }))
    }

    /// Deletes a tag, or a manifest revision together with every tag that points at it.
    /// Returns whether there was anything to delete.
    pub async fn delete_manifest(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
    ) -> Result<bool> {
        match reference {
            Reference::Tag(tag) => self.delete(&Key::Tag(repo, tag).path()).await,
            Reference::Digest(digest) => {
                let Some(link) = self.manifest_link(repo, digest).await? else {
                    return Ok(false);
                };
                for tag in self.list_tags(repo).await?.unwrap_or_default() {
                    let tag: Tag = match tag.parse() {
                        Ok(t) => t,
                        Err(_) => continue,
                    };
                    if self
                        .resolve_tag(repo, &tag)
                        .await?
                        .is_some_and(|t| &t.digest == digest)
                    {
                        self.delete(&Key::Tag(repo, &tag).path()).await?;
                    }
                }
                if let Some(subject) = &link.subject {
                    let key = Key::Referrer {
                        repo,
                        subject,
                        referrer: digest,
                    };
                    self.delete(&key.path()).await?;
                }
                self.delete(&Key::ManifestLink(repo, digest).path()).await?;
                Ok(true)
            }
        }
    }

    /// The repository's tags in lexical order, or `None` if the repository does not exist.
    pub async fn list_tags(&self, repo: &RepositoryName) -> Result<Option<Vec<String>>> {
        let (mut tags, _) = self.list_children(&Key::Tags(repo).path()).await?;
        if tags.is_empty() && !self.repository_exists(repo).await? {
            return Ok(None);
        }
        tags.sort_unstable();
        Ok(Some(tags))
    }

    pub async fn repository_exists(&self, repo: &RepositoryName) -> Result<bool> {
        let (objects, dirs) = self.list_children(&Key::Repository(repo).path()).await?;
        Ok(!objects.is_empty() || !dirs.is_empty())
    }

    /// Every repository name, in lexical order.
    pub async fn list_repositories(&self) -> Result<Vec<String>> {
        let (_, dirs) = self.list_children(&Key::Repositories.path()).await?;
        let mut names: Vec<String> = dirs
            .iter()
            .filter_map(|d| layout::repository_from_dir(d))
            .map(|n| n.to_string())
            .collect();
        names.sort_unstable();
        Ok(names)
    }

    /// Descriptors of the manifests in `repo` whose subject is `subject`.
    pub async fn referrers(
        &self,
        repo: &RepositoryName,
        subject: &Digest,
    ) -> Result<Vec<Descriptor>> {
        let prefix = Key::Referrers(repo, subject).path();
        let (entries, _) = self.list_children(&prefix).await?;
        let store = self.clone();
        let mut found: Vec<Descriptor> = stream::iter(entries)
            .map(move |name| {
                let key = prefix.clone().join(name.as_str());
                let store = store.clone();
                async move { store.get_json::<Descriptor>(&key).await }
            })
            .buffer_unordered(CHECK_CONCURRENCY)
            .try_filter_map(|d| async move { Ok(d) })
            .try_collect()
            .await?;
        found.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(found)
    }
}

/// The keys a manifest push writes or relies on: its content, its revision link, and
/// the links of everything it references.
fn claims(repo: &RepositoryName, digest: &Digest, manifest: &Manifest) -> Vec<String> {
    let mut keys = vec![
        Key::Blob(digest).path().to_string(),
        Key::ManifestLink(repo, digest).path().to_string(),
    ];
    if let Some(config) = &manifest.config {
        keys.push(Key::BlobLink(repo, &config.digest).path().to_string());
    }
    for d in &manifest.references {
        let key = match manifest.kind {
            ManifestKind::Image => Key::BlobLink(repo, &d.digest),
            ManifestKind::Index => Key::ManifestLink(repo, &d.digest),
        };
        keys.push(key.path().to_string());
    }
    keys
}
