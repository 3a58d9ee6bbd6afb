//! The content-addressed store: blobs, manifests, tags, referrers and upload sessions,
//! on any `object_store` backend. Only this module touches the object store, and only
//! `layout.rs` knows object keys.
//!
//! Ordering rules that keep data whole when the process dies at any instant:
//! content is written (and verified) before any link to it, and a tag pointer is
//! written last, with a single atomic put; readers therefore never see a tag whose
//! manifest or blobs are missing.

mod backend;
mod batch_lanes;
mod blob_index;
mod blobs;
pub mod budget;
mod cache;
pub mod config;
mod error;
mod gc;
mod gc_in_place;
mod hasher;
mod in_place;
mod keyed_locks;
pub mod layout;
mod lease;
mod local;
mod local_write;
mod manifests;
mod mapped;
mod part_schedule;
mod part_spool;
mod parts;
mod pipeline;
mod probe;
pub mod pull_counts;
mod push_log;
mod read;
mod redirect;
mod repositories;
mod s3_parts;
mod shared_secret;
pub mod summaries;
mod sweep_gate;
mod sweep_marker;
mod sync_state;
mod tag_times;
mod upload_expiry;
pub use pull_counts::{PullCounts, flush_pull_counts_periodically};
pub use upload_expiry::expire_uploads_periodically;
mod uploads;

use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, MultipartUpload, ObjectMeta, ObjectStore, PutMode, PutMultipartOptions,
    PutOptions, PutPayload, RenameOptions, RenameTargetMode, UpdateVersion,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use backend::{BackendError, Multipart, S3Settings, StorageLocation};
pub use blobs::BlobStat;
pub use config::ConfigError;
pub use error::{Result, StorageError};
pub use gc::{GcOptions, GcReport};
pub use hasher::Hasher;
pub use keyed_locks::KeyedGuard;
pub use lease::{BucketLease, LeaseVersion};
pub use local::BlobReads;
pub use manifests::{ManifestLink, StoredManifest, TagLink};
pub use part_schedule::{PartSchedule, PartScheduleError};
pub use push_log::{ListedRecord, PushRecord};
pub use read::{BlobBody, ByteRange, RangeError};
pub use redirect::{BlobRedirect, RedirectError, RedirectSettings};
pub use repositories::RepositoryUsage;
pub use uploads::UploadState;

use budget::{
    BudgetTooSmall, DEFAULT_UPLOAD_BUFFER, LOCAL_WORKING_SET, REMOTE_WORKING_SET, UploadBudget,
};
use cache::ManifestCache;
use keyed_locks::KeyedLocks;
use local::LocalDir;
use sweep_gate::SweepGate;

/// Registry content on one object store.
#[derive(Clone)]
pub struct Store {
    objects: Arc<dyn ObjectStore>,
    /// The same objects as files, when the store is a local directory.
    local: Option<LocalDir>,
    /// The bucket's multipart API, when upload sessions commit in place (S3; see
    /// `in_place.rs`).
    multipart: Option<Multipart>,
    /// Where blobs committed in place live (see `blob_index.rs`).
    index_cache: blob_index::IndexCache,
    /// One lock per upload session (see `uploads.rs`).
    uploads: KeyedLocks,
    /// One lock per tag-writing scope (see [`Store::lock_tags`]).
    tags: KeyedLocks,
    manifests: ManifestCache,
    /// Memory upload bodies may hold, shared by every clone of this store.
    upload_budget: UploadBudget,
    /// Keeps garbage collection off what pushes are linking (see `sweep_gate.rs`).
    sweeps: SweepGate,
    /// What this process saw of sweeps by any replica (see `sweep_marker.rs`).
    marker: Arc<sweep_marker::MarkerView>,
    /// This process's name among replicas sharing the storage.
    replica: Arc<str>,
    /// Pull counts not yet written (see `pull_counts.rs`).
    pulls: Arc<pull_counts::PullCounter>,
    /// What listings show of each repository, kept up to date by writes (see `summaries.rs`).
    summaries: Arc<summaries::Summaries>,
    /// Presigned redirects for large blob GETs, when configured (see `redirect.rs`).
    redirects: Option<Arc<redirect::BlobRedirects>>,
}

impl Store {
    /// A store on any object store, reached only through its API.
    pub fn new(objects: Arc<dyn ObjectStore>) -> Self {
        Store {
            objects,
            local: None,
            multipart: None,
            index_cache: Default::default(),
            uploads: KeyedLocks::default(),
            tags: KeyedLocks::default(),
            manifests: ManifestCache::default(),
            upload_budget: UploadBudget::new(DEFAULT_UPLOAD_BUFFER, REMOTE_WORKING_SET)
                .expect("the default budget holds an upload"),
            sweeps: SweepGate::default(),
            marker: Arc::default(),
            replica: Arc::from("standalone"),
            pulls: Arc::new(pull_counts::PullCounter::new("standalone")),
            summaries: Arc::default(),
            redirects: None,
        }
    }

    /// A store on the same storage as this one, sharing nothing in memory with it: what
    /// another process (a restart, another replica) opening it sees.
    pub fn another_process(&self) -> Self {
        let mut other = Store::new(self.objects.clone());
        other.multipart = self.multipart.clone();
        other
    }

    /// Names this process's pull-count objects: one name per replica sharing the
    /// storage, so each writes only its own (see `pull_counts.rs`).
    pub fn with_replica(mut self, replica: &str) -> Self {
        self.pulls = Arc::new(pull_counts::PullCounter::new(replica));
        self.replica = Arc::from(replica);
        self
    }

    /// Caps the memory that in-flight upload bodies hold at `bytes` (see `budget.rs`);
    /// refused when one upload on this storage would not fit.
    pub fn with_upload_buffer(mut self, bytes: usize) -> Result<Self, BudgetTooSmall> {
        self.upload_budget = UploadBudget::new(bytes, self.upload_working_set())?;
        Ok(self)
    }

    pub fn upload_budget(&self) -> &UploadBudget {
        &self.upload_budget
    }

    /// The memory one part write holds on this store's kind of storage.
    fn upload_working_set(&self) -> usize {
        if self.local.is_some() {
            LOCAL_WORKING_SET
        } else {
            REMOTE_WORKING_SET
        }
    }

    /// The store at `location`; a local directory is also read directly (see `local.rs`).
    pub fn open(location: &StorageLocation) -> Result<Self, BackendError> {
        match location {
            StorageLocation::Local(path) => {
                let fs = Arc::new(backend::local_filesystem(path)?);
                let mut store = Store::new(fs.clone());
                store.local = Some(LocalDir::new(fs));
                Ok(store)
            }
            StorageLocation::S3(_) => {
                let store = Store::new(location.open()?);
                Ok(match location.open_multipart()? {
                    Some(multipart) => store.with_multipart(multipart),
                    None => store,
                })
            }
        }
    }

    /// S3 multipart parts sized by `schedule` instead of the default one.
    pub fn with_part_schedule(mut self, schedule: PartSchedule) -> Self {
        self.multipart = self.multipart.map(|m| m.with_schedule(schedule));
        self
    }

    /// Upload sessions on this store write one multipart upload each and commit it in
    /// place, copying no bytes (see `in_place.rs`).
    pub fn with_multipart(mut self, multipart: Multipart) -> Self {
        self.multipart = Some(multipart);
        self
    }

    /// How blob content of a local directory is read to be served (see `local.rs`);
    /// remote stores stream from the backend whatever this says.
    pub fn with_blob_reads(mut self, reads: BlobReads) -> Self {
        if let Some(local) = self.local.take() {
            self.local = Some(local.with_blob_reads(reads));
        }
        self
    }

    /// Whether the store is a local directory (rather than a remote object store).
    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }

    pub fn objects(&self) -> &Arc<dyn ObjectStore> {
        &self.objects
    }

    // The object store's convenience methods (`ObjectStoreExt`) return futures that are
    // not `Send`, so berth calls the base trait through these few wrappers.

    async fn os_get(&self, key: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.objects.get_opts(key, options).await
    }

    async fn os_head(&self, key: &Path) -> object_store::Result<ObjectMeta> {
        Ok(self
            .os_get(key, GetOptions::new().with_head(true))
            .await?
            .meta)
    }

    async fn os_delete(&self, key: &Path) -> object_store::Result<()> {
        let key = key.clone();
        let mut results = self
            .objects
            .delete_stream(futures::stream::once(async move { Ok(key) }).boxed());
        while results.try_next().await?.is_some() {}
        Ok(())
    }

    async fn os_rename(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        let options = RenameOptions::new().with_target_mode(RenameTargetMode::Overwrite);
        self.objects.rename_opts(from, to, options).await
    }

    async fn os_put_multipart(&self, key: &Path) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.objects
            .put_multipart_opts(key, PutMultipartOptions::default())
            .await
    }

    /// Reads an object of any size.
    async fn get_bytes(&self, key: &Path) -> Result<Option<Bytes>> {
        if let Some(local) = &self.local {
            return local.read(key).await;
        }
        self.os_get_bytes(key).await
    }

    /// Reads a pointer, link or session record: an object of at most a few KiB.
    async fn get_small(&self, key: &Path) -> Result<Option<Bytes>> {
        if let Some(local) = &self.local {
            return local.read_small(key);
        }
        self.os_get_bytes(key).await
    }

    async fn os_get_bytes(&self, key: &Path) -> Result<Option<Bytes>> {
        match self.os_get(key, GetOptions::default()).await {
            Ok(r) => r
                .bytes()
                .await
                .map(Some)
                .map_err(|e| StorageError::backend("read", key, e)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(StorageError::backend("read", key, e)),
        }
    }

    /// Reads a small JSON record (a pointer, link, descriptor or session).
    async fn get_json<T: DeserializeOwned>(&self, key: &Path) -> Result<Option<T>> {
        match self.get_small(key).await? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| StorageError::corrupt(key, e)),
        }
    }

    /// Reads a small JSON record together with the version a conditional replace of it
    /// must name. On a local directory the version is `None`: one process owns a
    /// directory, and its in-process locks serialise the writers.
    async fn get_json_versioned<T: DeserializeOwned>(
        &self,
        key: &Path,
    ) -> Result<Option<(T, Option<UpdateVersion>)>> {
        if self.local.is_some() {
            return Ok(self.get_json(key).await?.map(|v| (v, None)));
        }
        let result = match self.os_get(key, GetOptions::default()).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(StorageError::backend("read", key, e)),
        };
        let version = UpdateVersion {
            e_tag: result.meta.e_tag.clone(),
            version: result.meta.version.clone(),
        };
        let bytes = result
            .bytes()
            .await
            .map_err(|e| StorageError::backend("read", key, e))?;
        let value = serde_json::from_slice(&bytes).map_err(|e| StorageError::corrupt(key, e))?;
        Ok(Some((value, Some(version))))
    }

    /// Replaces a record only if it is still at `version` (`If-Match` on S3); returns
    /// `false` when another writer (another replica) replaced or deleted it first.
    /// Without a version (a local directory) the write is unconditional.
    async fn replace_json<T: Serialize>(
        &self,
        key: &Path,
        value: &T,
        version: Option<UpdateVersion>,
    ) -> Result<bool> {
        let Some(version) = version else {
            self.put_json(key, value).await?;
            return Ok(true);
        };
        let data = serde_json::to_vec(value).expect("storage records always serialize");
        let options = PutOptions {
            mode: PutMode::Update(version),
            ..Default::default()
        };
        match self
            .objects
            .put_opts(key, PutPayload::from(data), options)
            .await
        {
            Ok(_) => Ok(true),
            Err(
                object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. },
            ) => Ok(false),
            // A backend without conditional writes (a local folder opened without its
            // direct view, as `Store::new` does): as on a local directory, the write is
            // unconditional, and this process's upload lock is what orders writers.
            Err(object_store::Error::NotImplemented { .. }) => {
                self.put_json(key, value).await?;
                Ok(true)
            }
            Err(e) => Err(StorageError::backend("replace", key, e)),
        }
    }

    async fn put_bytes(&self, key: &Path, data: Bytes) -> Result<()> {
        let written = self
            .objects
            .put_opts(key, PutPayload::from_bytes(data), PutOptions::default())
            .await
            .map(|_| ())
            .map_err(|e| StorageError::backend("write", key, e));
        self.summaries.invalidate_key(key);
        written
    }

    /// Writes `value` at `key` only if nothing is there (`version` `None`) or it is
    /// still at `version`: what S3 answered, or `None` when another writer was first.
    async fn put_json_if<T: Serialize>(
        &self,
        key: &Path,
        value: &T,
        version: Option<UpdateVersion>,
    ) -> Result<Option<object_store::PutResult>> {
        let mode = match version {
            None => PutMode::Create,
            Some(v) => PutMode::Update(v),
        };
        let data = serde_json::to_vec(value).expect("storage records always serialize");
        let options = PutOptions {
            mode,
            ..Default::default()
        };
        match self
            .objects
            .put_opts(key, PutPayload::from(data), options)
            .await
        {
            Ok(result) => Ok(Some(result)),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. }
                | object_store::Error::NotFound { .. },
            ) => Ok(None),
            Err(e) => Err(StorageError::backend("write", key, e)),
        }
    }

    async fn put_json<T: Serialize>(&self, key: &Path, value: &T) -> Result<()> {
        let data = serde_json::to_vec(value).expect("storage records always serialize");
        self.put_bytes(key, data.into()).await
    }

    async fn exists(&self, key: &Path) -> Result<bool> {
        if let Some(local) = &self.local {
            return local.exists(key);
        }
        match self.os_head(key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(StorageError::backend("stat", key, e)),
        }
    }

    /// Deletes `key`; returns whether it existed.
    async fn delete(&self, key: &Path) -> Result<bool> {
        // S3 answers a delete of a missing key with success (only the local filesystem
        // says NotFound), so ask first: callers answer 404 on `false`.
        if !self.exists(key).await? {
            return Ok(false);
        }
        let deleted = self.os_delete(key).await;
        self.summaries.invalidate_key(key);
        match deleted {
            Ok(()) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(StorageError::backend("delete", key, e)),
        }
    }

    /// Names of the objects and folders directly under `prefix`.
    async fn list_children(&self, prefix: &Path) -> Result<(Vec<String>, Vec<String>)> {
        let listing = self
            .objects
            .list_with_delimiter(Some(prefix))
            .await
            .map_err(|e| StorageError::backend("list", prefix, e))?;
        let names = |p: &Path| p.filename().unwrap_or_default().to_string();
        Ok((
            listing.objects.iter().map(|o| names(&o.location)).collect(),
            listing.common_prefixes.iter().map(names).collect(),
        ))
    }
}
