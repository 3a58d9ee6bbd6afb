//! Writing an upload's bytes into a local file while hashing them.
//!
//! The request task copies the body into 1 MiB batches; each full batch goes to two
//! lanes (`batch_lanes.rs`), one hashing and one writing, each on a blocking thread and
//! each at its own pace, while the task fills the next one. A push costs about the time
//! of its slowest stage rather than the sum of all three.
//!
//! A fixed set of batch buffers goes round, so memory per upload is [`WORKING_SET`]
//! whatever the blob size, and nothing is allocated per chunk. The copy is what makes
//! that possible: keeping hyper's chunks alive while they are hashed and written made
//! hyper allocate a fresh read buffer for every chunk, and faulting in that memory cost
//! more than copying the bytes while they are still in cache.
//!
//! The file is staged next to its destination under a name object_store's listing
//! ignores (`<name>#<n>`), synced and renamed into place only when complete, so a
//! killed process leaves a part either whole or absent.
//!
//! On a disk, that final sync would write the whole part at once while the client
//! waits for its answer. So every [`WRITEBACK_STEP`] written is also handed to the
//! kernel's writeback (`sync_file_range`, Linux) on a thread of its own: the disk writes
//! while the next batches arrive, and the final `fsync` finds little left to do. Off the
//! write path, because starting writeback blocks while the disk's queue is full: done
//! after every 1 MiB write it held the writer to the disk's pace in small requests, and
//! a 100 MiB push to ext4 took longer than writing it all and then fsyncing.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::mem;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::task::JoinHandle;

use super::batch_lanes::{BUFFERS, LaneFailed, Lanes};
use super::hasher::Hasher;

/// Bytes per hand-off: large enough that handing a batch over costs nothing next to
/// hashing and writing it (about 1 ms), small enough to stay in cache. Measured
/// (benches/README.md): 512 KiB pushed at 1.04× distribution v3 on tmpfs, 1 MiB at
/// 1.40×, 4 MiB at 1.29× (when both stages were waited for at every hand-off).
const BATCH_BYTES: usize = 1 << 20;
/// The most one writer holds: every batch buffer.
pub(super) const WORKING_SET: usize = BUFFERS * BATCH_BYTES;
/// Written bytes handed to writeback at once: large requests for the disk, and few
/// enough hand-offs that their threads cost nothing.
const WRITEBACK_STEP: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LocalWriteError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A blocking task panicked or the runtime is shutting down.
    #[error("writing task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("{0}")]
    Lane(#[from] LaneFailed),
}

type Result<T, E = LocalWriteError> = std::result::Result<T, E>;

pub(super) struct LocalPartWriter {
    dest: PathBuf,
    /// `None` once renamed into place; otherwise removed on drop.
    staging: Option<PathBuf>,
    lanes: Lanes,
    filling: Vec<u8>,
    /// The file again, for writeback hints while the lane writes to it.
    hints: Arc<File>,
    writeback: Writeback,
}

impl LocalPartWriter {
    /// Starts a new file at `dest` (created with its folders) that will be hashed with
    /// `hasher` carried on.
    pub async fn create(dest: PathBuf, hasher: Hasher) -> Result<Self> {
        let target = dest.clone();
        let (file, staging) = tokio::task::spawn_blocking(move || new_staged(&target)).await??;
        let hints = Arc::new(file.try_clone()?);
        let mut lanes = Lanes::new(Box::new(hasher), file, BATCH_BYTES);
        let filling = lanes.buffer().await?;
        Ok(LocalPartWriter {
            dest,
            staging: Some(staging),
            lanes,
            filling,
            hints,
            writeback: Writeback::default(),
        })
    }

    pub async fn write(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let room = BATCH_BYTES - self.filling.len();
            let (now, later) = data.split_at(room.min(data.len()));
            self.filling.extend_from_slice(now);
            data = later;
            if self.filling.len() == BATCH_BYTES {
                self.hand_off().await?;
            }
        }
        Ok(())
    }

    /// Syncs the file and renames it into place; returns the hasher after every byte.
    pub async fn finish(mut self) -> Result<Hasher> {
        if !self.filling.is_empty() {
            self.lanes.push(mem::take(&mut self.filling))?;
        }
        let (hasher, file) = self.lanes.finish().await?;
        let staging = self.staging.clone().ok_or(LaneFailed::Lost)?;
        let dest = self.dest.clone();
        tokio::task::spawn_blocking(move || publish(file, &staging, &dest)).await??;
        self.staging = None;
        Ok(*hasher)
    }

    async fn hand_off(&mut self) -> Result<()> {
        // The full batch goes first, so the lanes start on it while this waits for a
        // buffer if all are taken.
        self.lanes.push(mem::take(&mut self.filling))?;
        self.writeback.advance(&self.hints, self.lanes.written());
        self.filling = self.lanes.buffer().await?;
        Ok(())
    }
}

impl Drop for LocalPartWriter {
    fn drop(&mut self) {
        // Failed or abandoned (the client went away): nothing may stay behind. A write
        // still running on the unlinked file only fills an inode that its close frees.
        if let Some(staging) = self.staging.take() {
            let _ = std::fs::remove_file(staging);
        }
    }
}

/// Hands written bytes to the kernel's writeback in [`WRITEBACK_STEP`]s, one request at a
/// time, each on a blocking thread of its own.
#[derive(Default)]
struct Writeback {
    /// Bytes already handed over.
    started: u64,
    running: Option<JoinHandle<()>>,
}

impl Writeback {
    /// Hands over what was written up to `written` when that is a step or more and the
    /// previous request is done; otherwise the next call takes a larger range.
    fn advance(&mut self, file: &Arc<File>, written: u64) {
        if written - self.started < WRITEBACK_STEP
            || self.running.as_ref().is_some_and(|r| !r.is_finished())
        {
            return;
        }
        let file = Arc::clone(file);
        let (offset, len) = (self.started, written - self.started);
        self.started = written;
        self.running = Some(tokio::task::spawn_blocking(move || {
            start_writeback(&file, offset, len)
        }));
    }
}

/// Asks the kernel to start writing `len` bytes at `offset` to the disk, without waiting
/// for them (a hint: on failure, or off Linux, the final `fsync` writes them all).
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: a plain system call on a descriptor `file` keeps open; it reads no memory.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

/// Creates `<dest>#<n>` with the first free `n`, and `dest`'s folders if missing.
fn new_staged(dest: &Path) -> std::io::Result<(File, PathBuf)> {
    // An empty session folder can be removed between creating it and creating the file
    // in it (clean-up of abandoned uploads removes empty folders): create it again, a
    // few times, rather than fail the request.
    let mut folder_attempts = 0;
    for n in 1u32.. {
        let mut name = dest.as_os_str().to_owned();
        name.push(format!("#{n}"));
        let staging = PathBuf::from(name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&staging)
        {
            Ok(file) => return Ok((file, staging)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) if e.kind() == ErrorKind::NotFound && folder_attempts < 5 => {
                let parent = dest.parent().ok_or(e)?;
                folder_attempts += 1;
                match std::fs::create_dir_all(parent) {
                    Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("some staging name is free")
}

/// Makes the staged file durable and visible as `dest`, as object_store does with fsync
/// enabled: contents first, then the rename, then the folder entry.
fn publish(file: File, staging: &Path, dest: &Path) -> std::io::Result<()> {
    file.sync_all()?;
    drop(file);
    std::fs::rename(staging, dest)?;
    if let Some(parent) = dest.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{Algorithm, Digest};

    #[tokio::test]
    async fn writes_and_hashes_in_batches_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3_500_000u32).map(|i| (i % 251) as u8).collect();
        let dest = dir.path().join("a/b/part");
        let mut writer = LocalPartWriter::create(dest.clone(), Hasher::new(Algorithm::Sha256))
            .await
            .unwrap();
        for piece in data.chunks(300_007) {
            writer.write(piece).await.unwrap();
        }
        let digest = writer.finish().await.unwrap().finish();
        assert_eq!(digest, Digest::of(Algorithm::Sha256, &data));
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        let names: Vec<_> = std::fs::read_dir(dest.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["part"], "no staging file is left");

        // Abandoned half-way: neither the part nor its staging file remain.
        let other = dir.path().join("a/b/other");
        let mut writer = LocalPartWriter::create(other.clone(), Hasher::new(Algorithm::Sha256))
            .await
            .unwrap();
        writer.write(&data).await.unwrap();
        drop(writer);
        let names: Vec<_> = std::fs::read_dir(dest.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["part"]);
    }
}
