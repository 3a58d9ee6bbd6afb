//! Online garbage collection: deletes what no tag reaches any more, while pushes and
//! pulls go on.
//!
//! Per repository, the manifests reachable from its tags (through indexes, and the
//! referrers of reachable manifests) are kept, and so are manifests written within the
//! untagged delay, with everything they reach. Other manifest revisions are deleted
//! (their referrers entry first), then blob links that no kept manifest references and
//! that are older than the grace period (a client uploads layers before the manifest
//! that names them). Last, content no remaining link names and older than the grace
//! period is deleted: that is where bytes come back (`gc_in_place.rs` does the same for
//! blobs committed in place on S3).
//!
//! Deletions go in that order, so a process killed at any instant leaves only garbage,
//! never a kept object that refers to a deleted one. Writes during the run are covered
//! by the [`SweepGate`](super::sweep_gate): what a writer claims is never deleted.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use jiff::Timestamp;
use object_store::ObjectMeta;
use object_store::path::Path;
use serde::Serialize;
use tracing::Instrument;

use super::Store;
use super::error::{Result, StorageError};
use super::layout::Key;
use super::manifests::{ManifestLink, TagLink};
use super::sweep_gate::Sweep;
use crate::oci::{Digest, Manifest, ManifestKind, RepositoryName};

/// Reads and deletes run this many at once (they are small objects, or S3 requests).
const CONCURRENCY: usize = 32;

/// How a collection decides what is old enough to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcOptions {
    /// Blob links and content younger than this are kept even when nothing references
    /// them: uploads whose manifest has not been pushed yet, and writes by other
    /// processes sharing the storage.
    pub grace: Duration,
    /// Manifests no tag reaches are kept this long after they were last pushed.
    pub untagged_delay: Duration,
    /// On a shared bucket, how long the sweep marker stays valid without a renewal: the
    /// longest that writers on other replicas wait for a sweeper that died.
    pub marker_duration: Duration,
    /// A pause between sweeping the repositories and sweeping content, for tests that
    /// need writes to land while a sweep runs. Zero in production.
    pub pause_before_content: Duration,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace: Duration::from_secs(3600),
            untagged_delay: Duration::from_secs(24 * 3600),
            marker_duration: Duration::from_secs(30),
            pause_before_content: Duration::ZERO,
        }
    }
}

/// What one collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GcReport {
    pub repositories: u64,
    /// Manifest revisions deleted because no tag reaches them.
    pub manifests_deleted: u64,
    /// Blob links deleted because no kept manifest references them.
    pub blob_links_deleted: u64,
    /// Content objects (blobs and manifest bodies) deleted.
    pub blobs_deleted: u64,
    /// Bytes of content deleted.
    pub bytes_freed: u64,
    /// Unreferenced objects kept because they are younger than the grace period or delay.
    pub kept_recent: u64,
    /// Unreferenced objects kept because a push claimed them while the run went on.
    pub kept_claimed: u64,
    pub duration_ms: u64,
}

/// One object found by a listing: what it names and when it was written.
struct Listed {
    digest: Digest,
    written: Timestamp,
    size: u64,
}

impl Store {
    /// Runs one garbage collection over the whole store. Fails with `SweepRunning`
    /// when one is running already in this process, or on another replica sharing the
    /// bucket (see `sweep_marker.rs`).
    pub async fn collect_garbage(&self, options: &GcOptions) -> Result<GcReport> {
        let started = Instant::now();
        let mut sweep = self
            .sweeps
            .start_sweep()
            .await
            .ok_or(StorageError::SweepRunning)?;
        // After the in-process gate: this process's writers that started before are done,
        // so none of them waits for this marker while the sweep waits for it.
        let marker = match self.local {
            Some(_) => None,
            None => Some(self.hold_sweep_marker(options.marker_duration).await?),
        };
        if let Some(marker) = &marker {
            sweep.fenced(marker.fence());
        }
        let id = marker.as_ref().map(|m| m.id()).unwrap_or_default();
        let span = tracing::info_span!("sweep", sweep = %id);
        let result = self
            .sweep_all(&sweep, options, started)
            .instrument(span)
            .await;
        if let Some(marker) = marker {
            marker.release().await;
        }
        result
    }

    async fn sweep_all(
        &self,
        sweep: &Sweep,
        options: &GcOptions,
        started: Instant,
    ) -> Result<GcReport> {
        let now = Timestamp::now();
        let mut report = GcReport::default();
        let mut live: HashSet<Digest> = HashSet::new();
        for name in self.list_repositories().await? {
            let Ok(repo) = name.parse::<RepositoryName>() else {
                continue;
            };
            self.sweep_repository(sweep, &repo, options, now, &mut live, &mut report)
                .await?;
            report.repositories += 1;
        }
        if !options.pause_before_content.is_zero() {
            tokio::time::sleep(options.pause_before_content).await;
        }
        self.sweep_content(sweep, options, now, &live, &mut report)
            .await?;
        if self.local.is_none() {
            self.sweep_in_place(sweep, options, now, &live, &mut report)
                .await?;
        }
        report.duration_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    }

    async fn sweep_repository(
        &self,
        sweep: &Sweep,
        repo: &RepositoryName,
        options: &GcOptions,
        now: Timestamp,
        live: &mut HashSet<Digest>,
        report: &mut GcReport,
    ) -> Result<()> {
        let tags: Vec<Path> = self
            .list_all(&Key::Tags(repo).path())
            .await?
            .into_iter()
            .map(|m| m.location)
            .collect();
        let manifests: HashMap<Digest, Listed> = self
            .list_digests(&Key::ManifestLinks(repo).path())
            .await?
            .into_iter()
            .map(|l| (l.digest.clone(), l))
            .collect();
        let blob_links = self.list_digests(&Key::BlobLinks(repo).path()).await?;
        let referrers = self.referrers_by_subject(repo).await?;

        // Roots: what tags point at, and manifests still within the untagged delay.
        let untagged_cutoff = now - options.untagged_delay;
        let mut queue: Vec<Digest> = self.tag_targets(tags).await?;
        queue.extend(
            manifests
                .values()
                .filter(|m| m.written > untagged_cutoff)
                .map(|m| m.digest.clone()),
        );
        let mut reachable: HashSet<Digest> = HashSet::new();
        let mut referenced_blobs: HashSet<Digest> = HashSet::new();
        // When a kept manifest cannot be read, what it references is unknown: then no
        // blob link of the repository is deleted.
        let mut references_known = true;
        while let Some(digest) = queue.pop() {
            if !manifests.contains_key(&digest) || !reachable.insert(digest.clone()) {
                continue;
            }
            if let Some(found) = referrers.get(&digest) {
                queue.extend(found.iter().cloned());
            }
            let Some(manifest) = self.read_manifest(repo, &digest).await? else {
                references_known = false;
                continue;
            };
            match manifest.kind {
                ManifestKind::Index => {
                    queue.extend(manifest.references.into_iter().map(|d| d.digest))
                }
                ManifestKind::Image => {
                    referenced_blobs.extend(manifest.config.into_iter().map(|d| d.digest));
                    referenced_blobs.extend(manifest.references.into_iter().map(|d| d.digest));
                }
            }
        }

        let subject_of: HashMap<&Digest, &Digest> = referrers
            .iter()
            .flat_map(|(subject, rs)| rs.iter().map(move |r| (r, subject)))
            .collect();
        for listed in manifests.values() {
            let digest = &listed.digest;
            if reachable.contains(digest) {
                live.insert(digest.clone());
                continue;
            }
            let link = Key::ManifestLink(repo, digest).path();
            if !sweep.begin_delete(link.as_ref())? {
                report.kept_claimed += 1;
                live.insert(digest.clone());
                continue;
            }
            let result = async {
                if let Some(subject) = subject_of.get(digest) {
                    let entry = Key::Referrer {
                        repo,
                        subject,
                        referrer: digest,
                    };
                    self.delete(&entry.path()).await?;
                }
                self.delete(&link).await
            }
            .await;
            sweep.end_delete(link.as_ref());
            if result? {
                report.manifests_deleted += 1;
                tracing::debug!(repository = %repo, %digest, "deleted a manifest no tag reaches");
            }
        }

        let grace_cutoff = now - options.grace;
        let mut doomed = Vec::new();
        for listed in blob_links {
            if referenced_blobs.contains(&listed.digest) || !references_known {
                live.insert(listed.digest);
            } else if listed.written > grace_cutoff {
                report.kept_recent += 1;
                live.insert(listed.digest);
            } else {
                doomed.push(listed.digest);
            }
        }
        let outcomes: Vec<(Digest, Deleted)> = stream::iter(doomed)
            .map(|digest| async move {
                let key = Key::BlobLink(repo, &digest).path();
                let outcome = self.delete_unclaimed(sweep, &key).await?;
                Ok::<_, StorageError>((digest, outcome))
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        for (digest, outcome) in outcomes {
            match outcome {
                Deleted::Yes => report.blob_links_deleted += 1,
                Deleted::Gone => {}
                Deleted::Claimed => {
                    report.kept_claimed += 1;
                    live.insert(digest);
                }
            }
        }
        Ok(())
    }

    async fn sweep_content(
        &self,
        sweep: &Sweep,
        options: &GcOptions,
        now: Timestamp,
        live: &HashSet<Digest>,
        report: &mut GcReport,
    ) -> Result<()> {
        let grace_cutoff = now - options.grace;
        let mut doomed = Vec::new();
        for listed in self.list_digests(&Path::from("blobs")).await? {
            if live.contains(&listed.digest) {
                continue;
            }
            if listed.written > grace_cutoff {
                report.kept_recent += 1;
                continue;
            }
            doomed.push(listed);
        }
        let outcomes: Vec<(u64, Deleted)> = stream::iter(doomed)
            .map(|listed| async move {
                let key = Key::Blob(&listed.digest).path();
                let outcome = self.delete_unclaimed(sweep, &key).await?;
                if outcome == Deleted::Yes {
                    tracing::debug!(digest = %listed.digest, bytes = listed.size, "deleted content nothing references");
                }
                Ok::<_, StorageError>((listed.size, outcome))
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        for (size, outcome) in outcomes {
            match outcome {
                Deleted::Yes => {
                    report.blobs_deleted += 1;
                    report.bytes_freed += size;
                }
                Deleted::Gone => {}
                Deleted::Claimed => report.kept_claimed += 1,
            }
        }
        Ok(())
    }

    pub(super) async fn delete_unclaimed(&self, sweep: &Sweep, key: &Path) -> Result<Deleted> {
        if !sweep.begin_delete(key.as_ref())? {
            return Ok(Deleted::Claimed);
        }
        let result = self.delete(key).await;
        sweep.end_delete(key.as_ref());
        Ok(if result? { Deleted::Yes } else { Deleted::Gone })
    }

    /// Every object under `prefix`, at any depth.
    async fn list_all(&self, prefix: &Path) -> Result<Vec<ObjectMeta>> {
        self.objects
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|e| StorageError::backend("list", prefix, e))
    }

    /// The objects under `prefix` named `<alg>/<hex>` (content and links), as digests.
    async fn list_digests(&self, prefix: &Path) -> Result<Vec<Listed>> {
        Ok(self
            .list_all(prefix)
            .await?
            .into_iter()
            .filter_map(|meta| {
                let parts: Vec<_> = meta.location.parts().collect();
                let [.., alg, hex] = parts.as_slice() else {
                    return None;
                };
                let digest = format!("{}:{}", alg.as_ref(), hex.as_ref())
                    .parse::<Digest>()
                    .ok()?;
                let nanos = meta.last_modified.timestamp_nanos_opt()?;
                Some(Listed {
                    digest,
                    written: Timestamp::from_nanosecond(nanos as i128).ok()?,
                    size: meta.size,
                })
            })
            .collect())
    }

    /// The digests the tags point at.
    async fn tag_targets(&self, tags: Vec<Path>) -> Result<Vec<Digest>> {
        let targets: Vec<Option<TagLink>> = stream::iter(tags)
            .map(|key| async move { self.get_json::<TagLink>(&key).await })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        Ok(targets.into_iter().flatten().map(|t| t.digest).collect())
    }

    /// Each subject in `repo` with the manifests that refer to it, from the referrers
    /// index's keys alone (`referrers/<alg>/<subject>/<alg>-<referrer>`).
    async fn referrers_by_subject(
        &self,
        repo: &RepositoryName,
    ) -> Result<HashMap<Digest, Vec<Digest>>> {
        let mut found: HashMap<Digest, Vec<Digest>> = HashMap::new();
        for meta in self.list_all(&Key::ReferrersAll(repo).path()).await? {
            let parts: Vec<_> = meta.location.parts().collect();
            let [.., alg, subject, referrer] = parts.as_slice() else {
                continue;
            };
            let subject = format!("{}:{}", alg.as_ref(), subject.as_ref())
                .parse::<Digest>()
                .ok();
            let referrer = referrer
                .as_ref()
                .split_once('-')
                .and_then(|(a, h)| format!("{a}:{h}").parse::<Digest>().ok());
            if let (Some(subject), Some(referrer)) = (subject, referrer) {
                found.entry(subject).or_default().push(referrer);
            }
        }
        Ok(found)
    }

    /// A manifest revision of `repo`, parsed; `None` (and a warning) when it cannot be
    /// read as one, so what it references is not followed (and nothing is deleted for it:
    /// unreadable content is kept by its link).
    async fn read_manifest(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<Manifest>> {
        let Some(link) = self
            .get_json::<ManifestLink>(&Key::ManifestLink(repo, digest).path())
            .await?
        else {
            return Ok(None);
        };
        let body = match self.manifests.get(digest) {
            Some(body) => body,
            None => match self.get_bytes(&Key::Blob(digest).path()).await? {
                Some(body) => body,
                None => {
                    tracing::warn!(repository = %repo, %digest, "manifest content is missing");
                    return Ok(None);
                }
            },
        };
        match Manifest::parse(Some(&link.media_type), &body) {
            Ok(manifest) => Ok(Some(manifest)),
            Err(e) => {
                tracing::warn!(repository = %repo, %digest, error = %e, "stored manifest does not parse; what it references is not followed");
                Ok(None)
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Deleted {
    Yes,
    /// Someone else deleted it first.
    Gone,
    Claimed,
}
