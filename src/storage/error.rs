use crate::oci::{Digest, RepositoryName, Tag};

/// What can go wrong below the HTTP layer. Each variant is either the caller's fault
/// (and maps to a spec error code) or a backend failure (a 500 with context).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage backend failed to {op} {key}: {source}")]
    Backend {
        op: &'static str,
        key: String,
        #[source]
        source: object_store::Error,
    },
    #[error("stored object {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("blob {0} is not known to this repository")]
    BlobUnknown(Digest),
    #[error(
        "upload {0} does not exist in this repository (it may have finished, been cancelled or expired)"
    )]
    UploadUnknown(String),
    #[error(
        "chunk starts at byte {got}, but the upload has {expected} bytes: send the chunk that starts at {expected}"
    )]
    UploadOutOfOrder { expected: u64, got: u64 },
    /// The session's saved hash state is in a format this version cannot continue (an
    /// upgrade happened mid-upload): it has been discarded, and the client starts again.
    #[error(
        "upload {id} cannot be continued by this version of berth ({reason}); it was discarded: start the upload again"
    )]
    UploadRestart { id: String, reason: String },
    #[error("content does not match digest {expected}: it hashes to {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("upload body could not be read ({0}); nothing from this request was stored")]
    BodyRead(String),
    #[error("manifest {0} is not known to this repository")]
    ManifestUnknown(String),
    #[error("manifest references {0}, which is not in this repository: push it first")]
    ManifestBlobUnknown(Digest),
    #[error("repository {0} is not known")]
    NameUnknown(RepositoryName),
    #[error("a garbage collection is running already")]
    SweepRunning,
    /// The running sweep could not renew its marker in the bucket (or another replica
    /// took it over): it stopped deleting before other replicas could think it dead.
    #[error("garbage collection stopped: its sweep marker could not be renewed")]
    SweepMarkerLost,
    /// The upload has used every part one S3 multipart upload may have.
    #[error(
        "the upload has filled the 10,000 parts of one S3 upload; parts grow up to 4 GiB, but a request ends its last part: send a large blob in few requests"
    )]
    UploadTooLarge,
    /// A part of a body of unknown length could not be gathered on local disk.
    #[error("could not gather an upload part in a temporary file: {0}")]
    Spool(#[source] std::io::Error),
    /// A tag written create-only (an immutable tag) already points elsewhere.
    #[error("tag {tag} already points to {existing}")]
    TagTaken { tag: Tag, existing: Digest },
}

impl StorageError {
    pub fn backend(
        op: &'static str,
        key: &object_store::path::Path,
        source: object_store::Error,
    ) -> Self {
        StorageError::Backend {
            op,
            key: key.to_string(),
            source,
        }
    }

    pub fn corrupt(key: &object_store::path::Path, reason: impl ToString) -> Self {
        StorageError::Corrupt {
            key: key.to_string(),
            reason: reason.to_string(),
        }
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;
