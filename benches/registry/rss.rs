//! The server's resident memory during a measurement, sampled from `/proc`: the peak
//! matters (a registry that buffers blobs shows it under concurrency), not the average.
//! It is the anonymous part (`RssAnon`): memory the server allocated. Pages of files it
//! maps to serve them (berth maps large blobs) are page cache, shared and reclaimable,
//! and would otherwise count as if the server held them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// `RssAnon` of a process in KiB, or `None` when it cannot be read.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Samples a process's RSS every 20 ms until stopped; reports the highest seen.
pub struct PeakRss {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl PeakRss {
    pub fn watch(pid: Option<u32>) -> PeakRss {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let task = pid.map(|pid| {
            let (peak, stop) = (peak.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(kib) = rss_kib(pid) {
                        peak.fetch_max(kib, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        });
        PeakRss { peak, stop, task }
    }

    /// The peak in MiB, or `None` without a process id.
    pub async fn finish(mut self) -> Option<f64> {
        self.stop.store(true, Ordering::Relaxed);
        let task = self.task.take()?;
        let _ = task.await;
        Some(self.peak.load(Ordering::Relaxed) as f64 / 1024.0)
    }
}

pub fn fmt_mib(m: Option<f64>) -> String {
    m.map_or("?".to_string(), |m| format!("{m:.0} MiB anon"))
}
