//! The disk's share of a push: what a registry left for the disk to write after it
//! answered, and how fast the disk itself takes fsynced writes.
//!
//! Both berth and distribution fsync an upload's data before they answer 201, but either
//! may leave other dirty pages behind, and the next fsync on the file system (or the
//! kernel's writeback, ext4's ordered journal included) would flush them at the expense
//! of whichever registry pushes next. So before every timed push the bench syncs the file
//! system holding both data folders, outside the timing, and records how long that took
//! as the previous push's *writeback*: the disk work it left behind. "until on disk" adds
//! it back, the figure for a registry whose data is on the disk when it answers.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::Row;

/// Where both registries keep their data, when the bench was told (`--data-dir`).
#[derive(Clone, Debug)]
pub struct DataDir(PathBuf);

impl DataDir {
    pub fn new(path: PathBuf) -> DataDir {
        DataDir(path)
    }

    /// Writes out every dirty page of the file system holding the data folder and returns
    /// how long that took: the disk work the last writer left behind.
    pub fn settle(&self) -> anyhow::Result<Duration> {
        let dir = File::open(&self.0).with_context(|| format!("opening {}", self.0.display()))?;
        let started = Instant::now();
        syncfs(&dir).with_context(|| format!("syncfs {}", self.0.display()))?;
        Ok(started.elapsed())
    }

    /// The disk's own rate for a blob of `bytes`: written in 1 MiB pieces and fsynced, as a
    /// registry that keeps its promise writes it; the median of three, from a settled disk.
    pub fn write_limit(&self, bytes: usize, data: &[u8]) -> anyhow::Result<f64> {
        let mut rates = Vec::new();
        for rep in 0..3 {
            let path = self.0.join(format!("write-limit-{rep}"));
            self.settle()?;
            let started = Instant::now();
            write_synced(&path, bytes, data)
                .with_context(|| format!("writing {}", path.display()))?;
            rates.push(bytes as f64 / started.elapsed().as_secs_f64() / 1e6);
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        Ok(super::median(&mut rates))
    }
}

fn write_synced(path: &Path, bytes: usize, data: &[u8]) -> std::io::Result<()> {
    let mut file = File::create(path)?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(data.len()).min(1 << 20);
        file.write_all(&data[..n])?;
        left -= n;
    }
    file.sync_all()
}

fn syncfs(dir: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: syncfs only reads the descriptor, which `dir` keeps open for the call.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Rows for one push mode from each registry's `(answered after, writeback left)`
/// samples: the median writeback, and the rate once the blob is on disk.
pub fn rows(label: &str, bytes: usize, timed: &[Vec<(Duration, Option<Duration>)>]) -> Vec<Row> {
    let left: Vec<f64> = timed
        .iter()
        .map(|v| super::median_by(v, |(_, w)| w.map_or(f64::NAN, |w| w.as_secs_f64() * 1e3)))
        .collect();
    let on_disk: Vec<f64> = timed
        .iter()
        .map(|v| {
            super::median_by(v, |(total, w)| {
                bytes as f64 / (*total + w.unwrap_or_default()).as_secs_f64() / 1e6
            })
        })
        .collect();
    vec![
        Row::reported(format!("{label}: writeback left after 201 (ms)"), &left),
        Row {
            metric: format!("{label}, until on disk (MB/s)"),
            berth: on_disk[0],
            peer: on_disk.get(1).copied(),
            target: "ahead".to_string(),
            verdict: on_disk.get(1).map(|&p| on_disk[0] > p),
        },
    ]
}
