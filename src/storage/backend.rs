//! Turns the `--storage` setting into one object store.

use std::path::PathBuf;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;

/// Where registry content lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageLocation {
    /// A directory on the local filesystem.
    Local(PathBuf),
    /// An S3 bucket (and optional key prefix), configured by the usual `AWS_*` variables
    /// (`AWS_ENDPOINT` and `AWS_ALLOW_HTTP=true` for MinIO and other S3-compatible stores).
    S3 { bucket: String, prefix: String },
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
            return Ok(StorageLocation::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        let path = s.strip_prefix("file://").unwrap_or(s);
        if path.is_empty() || path.contains("://") {
            return Err(BackendError::BadLocation(s.to_string()));
        }
        Ok(StorageLocation::Local(PathBuf::from(path)))
    }

    pub fn open(&self) -> Result<Arc<dyn ObjectStore>, BackendError> {
        match self {
            StorageLocation::Local(path) => Ok(Arc::new(local_filesystem(path)?)),
            StorageLocation::S3 { bucket, prefix } => {
                let s3 = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .build()
                    .map_err(|source| BackendError::Open {
                        location: format!("s3://{bucket}"),
                        source,
                    })?;
                if prefix.is_empty() {
                    Ok(Arc::new(s3))
                } else {
                    Ok(Arc::new(PrefixStore::new(s3, prefix.as_str())))
                }
            }
        }
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
            StorageLocation::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
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
            StorageLocation::S3 {
                bucket: "bucket".into(),
                prefix: "some/prefix".into()
            }
        );
        assert!(StorageLocation::parse("s3:///x").is_err());
        assert!(StorageLocation::parse("gs://x").is_err());
    }
}
