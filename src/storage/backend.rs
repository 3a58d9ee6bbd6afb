//! Turns the `--storage` setting into one object store.

use std::path::PathBuf;
use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{MultipartId, ObjectStore, PutPayload};
use tokio::task::JoinHandle;

use super::part_schedule::PartSchedule;
use super::s3_parts::{PartFeed, PartStreamer};

/// Where registry content lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageLocation {
    /// A directory on the local filesystem.
    Local(PathBuf),
    /// An S3 bucket (and optional key prefix).
    S3(Box<S3Settings>),
}

/// An S3 bucket and how to reach it. Settings left `None` come from the usual `AWS_*`
/// variables (`AWS_ENDPOINT` and `AWS_ALLOW_HTTP=true` for MinIO and other
/// S3-compatible stores); `--storage s3://…` sets only the bucket and prefix.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct S3Settings {
    pub bucket: String,
    /// Key prefix without leading or trailing `/`; empty for the whole bucket.
    pub prefix: String,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub allow_http: Option<bool>,
    pub virtual_hosted_style: Option<bool>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Settings {
    // Never print the secret key or session token (logs, panics).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("allow_http", &self.allow_http)
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "…"),
            )
            .field("session_token", &self.session_token.as_ref().map(|_| "…"))
            .finish()
    }
}

impl S3Settings {
    /// The bucket as these settings reach it (without the key prefix).
    pub(super) fn build(&self) -> object_store::Result<object_store::aws::AmazonS3> {
        self.builder().build()
    }

    fn builder(&self) -> AmazonS3Builder {
        let mut b = AmazonS3Builder::from_env().with_bucket_name(&self.bucket);
        if let Some(v) = &self.region {
            b = b.with_region(v);
        }
        if let Some(v) = &self.endpoint {
            b = b.with_endpoint(v);
        }
        if let Some(v) = self.allow_http {
            b = b.with_allow_http(v);
        }
        if let Some(v) = self.virtual_hosted_style {
            b = b.with_virtual_hosted_style_request(v);
        }
        if let Some(v) = &self.access_key_id {
            b = b.with_access_key_id(v);
        }
        if let Some(v) = &self.secret_access_key {
            b = b.with_secret_access_key(v);
        }
        if let Some(v) = &self.session_token {
            b = b.with_token(v);
        }
        b
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("storage location {0:?} is not a directory path or s3://bucket[/prefix]")]
    BadLocation(String),
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open storage {location}: {source}")]
    Open {
        location: String,
        #[source]
        source: object_store::Error,
    },
}

impl StorageLocation {
    pub fn parse(s: &str) -> Result<Self, BackendError> {
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(BackendError::BadLocation(s.to_string()));
            }
            return Ok(StorageLocation::S3(Box::new(S3Settings {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
                ..S3Settings::default()
            })));
        }
        let path = s.strip_prefix("file://").unwrap_or(s);
        if path.is_empty() || path.contains("://") {
            return Err(BackendError::BadLocation(s.to_string()));
        }
        Ok(StorageLocation::Local(PathBuf::from(path)))
    }

    /// The low-level multipart API of the same bucket and prefix, for upload sessions
    /// that span requests and replicas (see `in_place.rs`); `None` for a directory.
    pub fn open_multipart(&self) -> Result<Option<Multipart>, BackendError> {
        let StorageLocation::S3(settings) = self else {
            return Ok(None);
        };
        let s3 = self.s3(settings)?;
        let streamer = PartStreamer::new(s3.clone()).map_err(|e| BackendError::Open {
            location: self.to_string(),
            source: object_store::Error::Generic {
                store: "S3",
                source: Box::new(e),
            },
        })?;
        let prefix = (!settings.prefix.is_empty()).then(|| Path::from(settings.prefix.as_str()));
        Ok(Some(
            Multipart::new(Arc::new(s3), prefix).with_streamer(Arc::new(streamer)),
        ))
    }

    fn s3(&self, settings: &S3Settings) -> Result<object_store::aws::AmazonS3, BackendError> {
        settings.build().map_err(|source| BackendError::Open {
            location: self.to_string(),
            source,
        })
    }

    pub fn open(&self) -> Result<Arc<dyn ObjectStore>, BackendError> {
        match self {
            StorageLocation::Local(path) => Ok(Arc::new(local_filesystem(path)?)),
            StorageLocation::S3(settings) => {
                let s3 = self.s3(settings)?;
                if settings.prefix.is_empty() {
                    Ok(Arc::new(s3))
                } else {
                    Ok(Arc::new(PrefixStore::new(s3, settings.prefix.as_str())))
                }
            }
        }
    }
}

/// A bucket's multipart API under the key prefix berth's objects live in (object_store's
/// `PrefixStore` offers only the high-level API, whose uploads cannot outlive a request).
#[derive(Clone)]
pub struct Multipart {
    inner: Arc<dyn MultipartStore>,
    prefix: Option<Path>,
    /// Sends parts as their bytes arrive; without it (a store in memory, in unit tests)
    /// a streamed part is gathered and sent whole.
    streamer: Option<Arc<PartStreamer>>,
    schedule: PartSchedule,
}

impl Multipart {
    pub fn new(inner: Arc<dyn MultipartStore>, prefix: Option<Path>) -> Self {
        Multipart {
            inner,
            prefix,
            streamer: None,
            schedule: PartSchedule::default(),
        }
    }

    fn with_streamer(mut self, streamer: Arc<PartStreamer>) -> Self {
        self.streamer = Some(streamer);
        self
    }

    pub fn with_schedule(mut self, schedule: PartSchedule) -> Self {
        self.schedule = schedule;
        self
    }

    pub fn schedule(&self) -> &PartSchedule {
        &self.schedule
    }

    fn full(&self, key: &Path) -> Path {
        match &self.prefix {
            None => key.clone(),
            Some(prefix) => prefix.parts().chain(key.parts()).collect(),
        }
    }

    pub async fn create(&self, key: &Path) -> object_store::Result<MultipartId> {
        self.inner.create_multipart(&self.full(key)).await
    }

    pub async fn put_part(
        &self,
        key: &Path,
        id: &MultipartId,
        index: usize,
        data: PutPayload,
    ) -> object_store::Result<PartId> {
        self.inner.put_part(&self.full(key), id, index, data).await
    }

    /// Starts part `index` of `len` bytes, sent as they are fed.
    pub fn put_part_streamed(
        &self,
        key: &Path,
        id: &MultipartId,
        index: usize,
        len: u64,
    ) -> (PartFeed, JoinHandle<object_store::Result<PartId>>) {
        if let Some(streamer) = &self.streamer {
            return streamer.start(self.full(key), id.clone(), index, len);
        }
        let (feed, mut rx) = PartFeed::gathered();
        let (multipart, key, id) = (self.clone(), key.clone(), id.clone());
        let task = tokio::spawn(async move {
            let mut chunks = Vec::new();
            while let Some(chunk) = rx.recv().await {
                chunks.push(chunk.map_err(|e| object_store::Error::Generic {
                    store: "memory",
                    source: Box::new(e),
                })?);
            }
            let payload: PutPayload = chunks.into_iter().collect();
            multipart.put_part(&key, &id, index, payload).await
        });
        (feed, task)
    }

    pub async fn complete(
        &self,
        key: &Path,
        id: &MultipartId,
        parts: Vec<PartId>,
    ) -> object_store::Result<()> {
        self.inner
            .complete_multipart(&self.full(key), id, parts)
            .await
            .map(|_| ())
    }

    pub async fn abort(&self, key: &Path, id: &MultipartId) -> object_store::Result<()> {
        self.inner.abort_multipart(&self.full(key), id).await
    }
}

/// The local directory as an object store, created if missing.
pub(super) fn local_filesystem(path: &std::path::Path) -> Result<LocalFileSystem, BackendError> {
    std::fs::create_dir_all(path).map_err(|source| BackendError::CreateDir {
        path: path.to_path_buf(),
        source,
    })?;
    // fsync makes a committed blob or tag survive power loss, not only a killed process.
    Ok(LocalFileSystem::new_with_prefix(path)
        .map_err(|source| BackendError::Open {
            location: path.display().to_string(),
            source,
        })?
        .with_fsync(true)
        .with_automatic_cleanup(true))
}

impl std::fmt::Display for StorageLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageLocation::Local(p) => write!(f, "{}", p.display()),
            StorageLocation::S3(s3) => {
                write!(f, "s3://{}/{}", s3.bucket, s3.prefix)?;
                match &s3.endpoint {
                    Some(endpoint) => write!(f, " at {endpoint}"),
                    None => Ok(()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_and_s3_urls() {
        assert_eq!(
            StorageLocation::parse("./data").unwrap(),
            StorageLocation::Local("./data".into())
        );
        assert_eq!(
            StorageLocation::parse("s3://bucket/some/prefix/").unwrap(),
            StorageLocation::S3(Box::new(S3Settings {
                bucket: "bucket".into(),
                prefix: "some/prefix".into(),
                ..S3Settings::default()
            }))
        );
        assert!(StorageLocation::parse("s3:///x").is_err());
        assert!(StorageLocation::parse("gs://x").is_err());
    }
}
