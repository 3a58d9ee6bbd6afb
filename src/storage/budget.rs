//! A process-wide cap on the memory that upload bodies hold while they are written.
//!
//! Each part write reserves its whole working set (the buffers it will fill: three 1 MiB
//! batches on a local disk; on an object store the part being filled, the parts in
//! flight and the hashing batches) before it allocates any of it, and gives it back
//! when it ends. When the budget is spent, further uploads wait their turn: the
//! sender sees TCP back-pressure, and the process never holds more than the cap.
//!
//! All of a working set is taken at once, never piece by piece: uploads each holding
//! half of what they need while waiting for the rest would wait for ever. The
//! semaphore is fair, so a large reservation is not starved by small ones.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::local_write;
use super::part_schedule::{IN_MEMORY_PART, MIN_PART};
use super::pipeline;
use super::uploads::PARTS_IN_FLIGHT;

/// The default cap: 170 concurrent part writes to a local disk, or 9 to S3.
pub const DEFAULT_UPLOAD_BUFFER: usize = 512 << 20;

/// Bytes one part write holds at most on a local directory.
pub(super) const LOCAL_WORKING_SET: usize = local_write::WORKING_SET;
/// Bytes one part write holds at most on an object store: the parts in flight, the
/// bytes held back until they make a part (see `in_place.rs`), and the hashing batches.
pub(super) const REMOTE_WORKING_SET: usize =
    IN_MEMORY_PART * PARTS_IN_FLIGHT + IN_MEMORY_PART + MIN_PART + pipeline::WORKING_SET;

#[derive(Debug, thiserror::Error)]
#[error(
    "an upload buffer cap of {cap} bytes cannot hold one upload's buffers ({needed} bytes on this storage)"
)]
pub struct BudgetTooSmall {
    pub cap: usize,
    pub needed: usize,
}

#[derive(Clone)]
pub struct UploadBudget {
    permits: Arc<Semaphore>,
    cap: usize,
}

/// Memory reserved for one part write; returned to the budget when dropped.
pub(super) struct Reservation(#[allow(dead_code)] OwnedSemaphorePermit);

impl UploadBudget {
    /// A budget of `cap` bytes, for uploads that each need `working_set` bytes.
    pub fn new(cap: usize, working_set: usize) -> Result<Self, BudgetTooSmall> {
        let cap = cap.min(Semaphore::MAX_PERMITS);
        if cap < working_set {
            return Err(BudgetTooSmall {
                cap,
                needed: working_set,
            });
        }
        Ok(UploadBudget {
            permits: Arc::new(Semaphore::new(cap)),
            cap,
        })
    }

    /// Waits until `bytes` fit in the budget, and takes them.
    pub(super) async fn reserve(&self, bytes: usize) -> Reservation {
        // Never more than the whole cap, which `new` checked the working sets against.
        let bytes = u32::try_from(bytes.min(self.cap)).unwrap_or(u32::MAX);
        let permit = self
            .permits
            .clone()
            .acquire_many_owned(bytes)
            .await
            .expect("the upload budget's semaphore is never closed");
        Reservation(permit)
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Bytes not reserved by any upload now.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn uploads_beyond_the_cap_wait_for_memory_to_be_returned() {
        let budget = UploadBudget::new(3 << 20, 2 << 20).unwrap();
        let first = budget.reserve(2 << 20).await;
        assert_eq!(budget.available(), 1 << 20);
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(2 << 20).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the second upload must wait");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the second upload proceeds once memory is returned")
            .unwrap();
        drop(second);
        assert_eq!(budget.available(), 3 << 20);
    }

    #[test]
    fn a_cap_below_one_upload_is_refused() {
        let e = UploadBudget::new(1 << 20, LOCAL_WORKING_SET).err().unwrap();
        assert_eq!(e.needed, LOCAL_WORKING_SET);
        assert!(UploadBudget::new(DEFAULT_UPLOAD_BUFFER, REMOTE_WORKING_SET).is_ok());
    }
}
