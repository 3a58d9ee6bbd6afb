//! Two lanes over one sequence of batches: one hashes them, the other writes them to a
//! file, each in order and at its own pace.
//!
//! Waiting for both stages before handing over the next batch left a core idle whenever
//! one stage finished early: the writer waited for the hasher, the request task for both.
//! Here each lane has its own queue and a worker that takes the next batch as soon as it
//! is done with the last, so the hasher (the slowest stage) never waits for the writer
//! or for the request task to be scheduled.
//!
//! A worker is a blocking task that runs only while its queue holds a batch, and ends
//! when it is empty: no thread ever waits for the client. The batches themselves are a
//! fixed set of [`BUFFERS`] buffers that go round: a buffer returns to the request task
//! when the second lane is done with it, and the task waits for one when all are in use,
//! which slows the sender through TCP back-pressure rather than queueing bytes.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use super::hasher::Hasher;

/// Buffers per writer: the one filling and two in the lanes, so the request task can go
/// on receiving while the hasher works on one batch and the writer on the next.
pub(super) const BUFFERS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum LaneFailed {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A worker panicked, or the runtime shut down before it ran: its hash state or
    /// file went with it.
    #[error("a hashing or writing task was lost")]
    Lost,
}

/// What a lane does to each batch, in order.
trait Stage: Send + 'static {
    fn take(&mut self, batch: &[u8]) -> std::io::Result<()>;
}

impl Stage for Box<Hasher> {
    fn take(&mut self, batch: &[u8]) -> std::io::Result<()> {
        self.update(batch);
        Ok(())
    }
}

impl Stage for File {
    fn take(&mut self, batch: &[u8]) -> std::io::Result<()> {
        self.write_all(batch)
    }
}

struct Lane<S> {
    queue: VecDeque<Arc<Vec<u8>>>,
    /// The stage's state while no worker runs; a worker takes it and puts it back.
    parked: Option<S>,
    /// Bytes this lane is done with.
    done: u64,
}

impl<S> Lane<S> {
    fn new(stage: S) -> Self {
        Lane {
            queue: VecDeque::with_capacity(BUFFERS),
            parked: Some(stage),
            done: 0,
        }
    }

    fn settled(&self) -> bool {
        self.queue.is_empty() && self.parked.is_some()
    }
}

struct State {
    hash: Lane<Box<Hasher>>,
    write: Lane<File>,
    /// Emptied buffers, back from the lanes.
    free: Vec<Vec<u8>>,
    /// The first failure; `Some(None)` once it has been reported.
    failed: Option<Option<LaneFailed>>,
    /// The writer was dropped: workers stop at their next batch.
    abandoned: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the request task: a buffer came back, a lane settled, or one failed. There
    /// is one waiter, so `notify_one`'s stored permit means no wake-up is lost.
    wake: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock, and its data stays consistent anyway.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fail(&self, failure: LaneFailed) {
        let mut state = self.lock();
        if state.failed.is_none() {
            state.failed = Some(Some(failure));
        }
        drop(state);
        self.wake.notify_one();
    }
}

/// The request task's end: hands batches to both lanes and gets buffers back.
pub(super) struct Lanes {
    shared: Arc<Shared>,
    /// Buffers made so far, at most [`BUFFERS`].
    made: usize,
    batch_bytes: usize,
}

impl Lanes {
    pub fn new(hasher: Box<Hasher>, file: File, batch_bytes: usize) -> Self {
        Lanes {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    hash: Lane::new(hasher),
                    write: Lane::new(file),
                    free: Vec::with_capacity(BUFFERS),
                    failed: None,
                    abandoned: false,
                }),
                wake: Notify::new(),
            }),
            made: 0,
            batch_bytes,
        }
    }

    /// Queues `batch` on both lanes, starting the worker of any lane that has none.
    pub fn push(&self, batch: Vec<u8>) -> Result<(), LaneFailed> {
        let batch = Arc::new(batch);
        let mut state = self.shared.lock();
        check(&mut state)?;
        state.hash.queue.push_back(batch.clone());
        state.write.queue.push_back(batch);
        let hasher = state.hash.parked.take();
        let file = state.write.parked.take();
        drop(state);
        if let Some(hasher) = hasher {
            self.start(hasher, |s| &mut s.hash);
        }
        if let Some(file) = file {
            self.start(file, |s| &mut s.write);
        }
        Ok(())
    }

    /// An empty buffer for the next batch: a new one while fewer than [`BUFFERS`]
    /// exist, else the next one both lanes are done with.
    pub async fn buffer(&mut self) -> Result<Vec<u8>, LaneFailed> {
        loop {
            {
                let mut state = self.shared.lock();
                check(&mut state)?;
                if let Some(buffer) = state.free.pop() {
                    return Ok(buffer);
                }
            }
            if self.made < BUFFERS {
                self.made += 1;
                return Ok(Vec::with_capacity(self.batch_bytes));
            }
            self.shared.wake.notified().await;
        }
    }

    /// Bytes written to the file so far (not necessarily synced).
    pub fn written(&self) -> u64 {
        self.shared.lock().write.done
    }

    /// Waits until both lanes are done with every batch pushed, and takes back the hash
    /// state and the file; the lanes are spent after it.
    pub async fn finish(&mut self) -> Result<(Box<Hasher>, File), LaneFailed> {
        loop {
            {
                let mut state = self.shared.lock();
                check(&mut state)?;
                // Settled lanes both hold their stage, so neither is taken in vain.
                if state.hash.settled()
                    && state.write.settled()
                    && let (Some(hasher), Some(file)) =
                        (state.hash.parked.take(), state.write.parked.take())
                {
                    return Ok((hasher, file));
                }
            }
            self.shared.wake.notified().await;
        }
    }

    fn start<S: Stage>(&self, stage: S, lane: fn(&mut State) -> &mut Lane<S>) {
        let unfinished = Unfinished(Some(self.shared.clone()));
        tokio::task::spawn_blocking(move || drain(unfinished, stage, lane));
    }
}

impl Drop for Lanes {
    fn drop(&mut self) {
        self.shared.lock().abandoned = true;
    }
}

fn check(state: &mut State) -> Result<(), LaneFailed> {
    match &mut state.failed {
        None => Ok(()),
        Some(failure) => Err(failure.take().unwrap_or(LaneFailed::Lost)),
    }
}

/// A worker: takes batches off its lane until the queue is empty, then parks the stage.
fn drain<S: Stage>(mut unfinished: Unfinished, mut stage: S, lane: fn(&mut State) -> &mut Lane<S>) {
    let Some(shared) = unfinished.0.clone() else {
        return;
    };
    loop {
        let batch = {
            let mut state = shared.lock();
            if state.abandoned || state.failed.is_some() {
                unfinished.0 = None;
                return;
            }
            let lane = lane(&mut state);
            match lane.queue.pop_front() {
                Some(batch) => batch,
                None => {
                    lane.parked = Some(stage);
                    drop(state);
                    unfinished.0 = None;
                    shared.wake.notify_one();
                    return;
                }
            }
        };
        if let Err(e) = stage.take(&batch) {
            unfinished.0 = None;
            shared.fail(LaneFailed::Io(e));
            return;
        }
        let len = batch.len() as u64;
        // The lane that lets go of a batch last gets its buffer back for the task.
        let recycled = Arc::into_inner(batch);
        let mut state = shared.lock();
        lane(&mut state).done += len;
        if let Some(mut buffer) = recycled {
            buffer.clear();
            state.free.push(buffer);
        }
        drop(state);
        shared.wake.notify_one();
    }
}

/// Marks the lanes failed if a worker ends without parking its stage: it panicked, or
/// the runtime dropped it before it ran. Otherwise the request task would wait forever.
struct Unfinished(Option<Arc<Shared>>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            shared.fail(LaneFailed::Lost);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{Algorithm, Digest};

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_batch_is_hashed_and_written_in_order_with_three_buffers_at_most() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let file = File::create(&path).unwrap();
        let mut lanes = Lanes::new(Box::new(Hasher::new(Algorithm::Sha256)), file, 4096);
        let all = data(200 * 4096 + 17);
        for piece in all.chunks(4096) {
            let mut buffer = lanes.buffer().await.unwrap();
            assert!(buffer.is_empty(), "buffers come back emptied");
            buffer.extend_from_slice(piece);
            lanes.push(buffer).unwrap();
        }
        assert!(lanes.made <= BUFFERS);
        let (hasher, file) = lanes.finish().await.unwrap();
        drop(file);
        assert_eq!(hasher.finish(), Digest::of(Algorithm::Sha256, &all));
        assert_eq!(std::fs::read(&path).unwrap(), all);
    }

    #[tokio::test]
    async fn a_failed_write_is_reported_once_and_then_as_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        File::create(&path).unwrap();
        // Opened for reading only: every write fails.
        let file = File::open(&path).unwrap();
        let mut lanes = Lanes::new(Box::new(Hasher::new(Algorithm::Sha256)), file, 16);
        let mut buffer = lanes.buffer().await.unwrap();
        buffer.extend_from_slice(b"some bytes");
        lanes.push(buffer).unwrap();
        let first = loop {
            let buffer = match lanes.buffer().await {
                Ok(buffer) => buffer,
                Err(e) => break e,
            };
            if let Err(e) = lanes.push(buffer) {
                break e;
            }
        };
        assert!(matches!(first, LaneFailed::Io(_)), "{first:?}");
        assert!(matches!(lanes.finish().await, Err(LaneFailed::Lost)));
    }

    #[tokio::test]
    async fn a_worker_that_ends_without_parking_its_stage_fails_the_lanes_instead_of_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("out")).unwrap();
        let mut lanes = Lanes::new(Box::new(Hasher::new(Algorithm::Sha256)), file, 16);
        let buffer = lanes.buffer().await.unwrap();
        lanes.push(buffer).unwrap();
        // What a worker leaves when it panics, or when the runtime drops it unrun.
        drop(Unfinished(Some(lanes.shared.clone())));
        let finished = tokio::time::timeout(std::time::Duration::from_secs(10), lanes.finish())
            .await
            .expect("finish returns instead of waiting for a stage that will never come back");
        assert!(matches!(finished, Err(LaneFailed::Lost)));
    }
}
