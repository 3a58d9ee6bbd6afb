//! Direct access to objects when the store is a local directory.
//!
//! object_store's local backend runs every call on the blocking pool: a manifest GET by
//! tag cost four thread hand-offs (open and read, for the tag pointer and the manifest),
//! more than a third of its CPU. The pointers and links berth reads on every request are
//! a few hundred bytes; reading them in place takes a few µs from the page cache, less
//! than one hand-off, so they are read on the calling task. Anything that may be large
//! still goes to a blocking thread, in one hand-off.
//!
//! Paths come from the same `LocalFileSystem`, so both views name the same files.

use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use object_store::local::LocalFileSystem;
use object_store::path::Path;

use super::error::{Result, StorageError};

#[derive(Clone)]
pub(super) struct LocalDir {
    fs: Arc<LocalFileSystem>,
    blob_reads: BlobReads,
}

/// How blob content is read from a local directory to be served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BlobReads {
    /// Ranges of 4 MiB and more as slices of a mapping of the file, written to the
    /// socket from the page cache (`mapped.rs`): one copy fewer per byte served.
    #[default]
    Mapped,
    /// `read` into a buffer on a blocking thread, then written: for storage folders whose
    /// files something other than berth might truncate while they are served.
    Copied,
}

impl std::str::FromStr for BlobReads {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "mapped" => Ok(BlobReads::Mapped),
            "copied" => Ok(BlobReads::Copied),
            _ => Err(format!("{s:?}: expected mapped or copied")),
        }
    }
}

/// An I/O failure in the form the rest of the store reports backend failures.
pub(super) fn io_error(op: &'static str, key: &Path, e: std::io::Error) -> StorageError {
    StorageError::backend(
        op,
        key,
        object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(e),
        },
    )
}

impl LocalDir {
    pub fn new(fs: Arc<LocalFileSystem>) -> Self {
        LocalDir {
            fs,
            blob_reads: BlobReads::default(),
        }
    }

    pub fn with_blob_reads(mut self, reads: BlobReads) -> Self {
        self.blob_reads = reads;
        self
    }

    pub fn blob_reads(&self) -> BlobReads {
        self.blob_reads
    }

    pub fn file_path(&self, key: &Path) -> Result<PathBuf> {
        self.fs
            .path_to_filesystem(key)
            .map_err(|e| StorageError::backend("locate", key, e))
    }

    /// Reads a small object (a pointer or link) on the calling task.
    pub fn read_small(&self, key: &Path) -> Result<Option<Bytes>> {
        read_file(&self.file_path(key)?, key)
    }

    /// Reads an object of any size on a blocking thread, in one hand-off.
    pub async fn read(&self, key: &Path) -> Result<Option<Bytes>> {
        let path = self.file_path(key)?;
        let owned_key = key.clone();
        tokio::task::spawn_blocking(move || read_file(&path, &owned_key))
            .await
            .map_err(|e| StorageError::backend("read", key, e.into()))?
    }

    /// Whether the object exists, checked on the calling task (a lookup, like a small read).
    pub fn exists(&self, key: &Path) -> Result<bool> {
        match std::fs::metadata(self.file_path(key)?) {
            Ok(meta) => Ok(meta.is_file()),
            Err(e) if is_missing(&e) => Ok(false),
            Err(e) => Err(io_error("stat", key, e)),
        }
    }

    /// Opens an object for reading on the calling task (an open is a lookup, like a
    /// small read); `None` when it does not exist.
    pub fn open(&self, key: &Path) -> Result<Option<std::fs::File>> {
        match std::fs::File::open(self.file_path(key)?) {
            Ok(file) => Ok(Some(file)),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(io_error("open", key, e)),
        }
    }
}

fn read_file(path: &std::path::Path, key: &Path) -> Result<Option<Bytes>> {
    match std::fs::read(path) {
        Ok(data) => Ok(Some(data.into())),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(io_error("read", key, e)),
    }
}

/// A key that names a directory is no object, as object_store's local backend sees it.
fn is_missing(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::NotFound | ErrorKind::IsADirectory | ErrorKind::NotADirectory
    )
}
