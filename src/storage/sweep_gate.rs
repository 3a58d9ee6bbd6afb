//! What lets garbage collection run while the registry accepts pushes.
//!
//! A sweep decides from listings what nothing references, then deletes it. Two kinds of
//! write could make such a decision wrong after it was taken, because they add a
//! reference without writing new content: committing an upload whose content exists
//! already, and a cross-repository mount (both only write a link), and a manifest push
//! that references links which exist already. So every write that creates or relies on
//! a link *claims* the objects it depends on, and a sweep deletes nothing claimed:
//!
//! * a writer that starts while no sweep runs is waited for when a sweep starts, before
//!   it lists anything: its links are in the listing;
//! * a writer that starts during a sweep claims its keys; the sweep checks for a claim
//!   and marks the key as being deleted under one mutex, so either the sweep sees the
//!   claim and keeps the object, or the writer waits until the delete is done and then
//!   finds the object missing (and uploads it again, or is told to).
//!
//! Claims are in this process's memory: one process sweeps a store (the leader). On a
//! local directory that is the whole story (one process). On a bucket shared by
//! replicas, writes on *other* replicas are not claimed. Those that write something new
//! are covered by the grace period and the untagged delay: a sweep deletes only keys
//! it listed, and only old ones. Those that only *link* existing content (an upload
//! committed onto content that exists, a mount) or push a manifest naming existing
//! links and content are covered by the sweep marker (`sweep_marker.rs`):
//!
//! * the sweep, before it lists anything, writes the marker `sweeping` with a fresh id
//!   (create-only or `If-Match`: never while another sweep's marker is live), renews it
//!   while it runs, stops deleting if it could not renew for two thirds of its duration,
//!   and writes it `done` after its last delete;
//! * a link-only writer, before it checks what it relies on, opens a *window*: the
//!   version of the marker this process last read (every read is remembered; the first
//!   writer of a process reads it). After writing its links (and before writing a tag)
//!   it reads the marker once more. The *same version*, *quiet* when the window opened
//!   (`done`, absent, or `sweeping` but unchanged for longer than its duration), means
//!   no sweep deleted anything during the window: that costs one small GET. Otherwise it
//!   waits until the marker is quiet (polling it), then checks what it relies on: the
//!   content it linked (mount, deduplicated commit), and for a manifest every link and
//!   content it references, and its own content and link.
//!
//! Why that is enough. Let a writer W open its window at t0 (version V, quiet), check
//! at t1 > t0, write its links at t2, and read version V' at t3. Let a sweep S write its
//! marker at ta, list at tb > ta and delete at tc > tb, and write `done` at td > tc.
//!
//! * V' = V and V quiet: no marker write happened in [t0, t3] (each write has distinct
//!   content, so a distinct version). So no sweep started in it (ta would be a write),
//!   and none was deleting at t0: a `done` marker is written after the last delete; an
//!   expired one was last renewed more than a duration before t0, and its sweeper
//!   stopped deleting two thirds of a duration after that renewal. No delete of S falls
//!   in [t0, t3]: W's check at t1 stays true. A sweep starting after t3 lists after t2
//!   and sees W's links (fresh, so kept by the grace period or untagged delay).
//! * otherwise: W waits until it reads a quiet marker at t4 ≥ t3. Any sweep that
//!   started before t3 has, by t4, written `done` (all its deletes are done) or expired
//!   (it stopped deleting before). A sweep that started after t3 lists after W's links.
//!   So what W finds at t4 is final: if it is all there, W is safe; if not, W undoes
//!   (removes the link it wrote) and a mount answers 202 (upload instead), an upload
//!   commit puts its own bytes in place (its multipart upload, staged chunk or parts
//!   are still there: discarded only after the commit returns), and a manifest push is
//!   refused with `MANIFEST_BLOB_UNKNOWN` before any tag points at it (its own content
//!   or link, if the sweep took them, is written again).
//! * the sweeper's own writers: the in-process gate covers them. A writer holding a pass
//!   entered before the sweep is waited for before the marker is written (so it never
//!   waits for this process's marker while the sweep waits for it), and one that
//!   entered after claimed its keys.
//!
//! Expiry is judged by each reader's monotonic clock from how long it saw one version
//! (as the bucket lease is): clocks of different hosts are never compared. A dead
//! sweeper delays link-only writes by at most one marker duration, and the next sweep
//! takes its marker over after one duration.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::error::Result;
use super::sweep_marker::Fence;

#[derive(Clone, Default)]
pub(super) struct SweepGate(Arc<Shared>);

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Woken when a delete finishes or an unclaimed writer leaves.
    changed: Notify,
}

#[derive(Default)]
struct State {
    /// The running sweep's claims; `None` when no sweep runs.
    sweep: Option<Claims>,
    /// Writers that entered while no sweep ran and are still at work.
    unclaimed_writers: usize,
}

#[derive(Default)]
struct Claims {
    claimed: HashSet<String>,
    deleting: HashSet<String>,
}

/// Held by a writer while it relies on the keys it claimed.
pub(super) struct WritePass {
    shared: Arc<Shared>,
    unclaimed: bool,
}

impl Drop for WritePass {
    fn drop(&mut self) {
        if self.unclaimed {
            let mut state = self.shared.state.lock().expect("sweep gate poisoned");
            state.unclaimed_writers -= 1;
            drop(state);
            self.shared.changed.notify_waiters();
        }
    }
}

/// Held by the sweep; dropping it ends the sweep and forgets its claims.
pub(super) struct Sweep {
    shared: Arc<Shared>,
    /// On a shared bucket: whether the sweep's marker still holds (see `sweep_marker.rs`).
    fence: Option<Arc<Fence>>,
}

impl Drop for Sweep {
    fn drop(&mut self) {
        self.shared.state.lock().expect("sweep gate poisoned").sweep = None;
        self.shared.changed.notify_waiters();
    }
}

impl SweepGate {
    /// Called by a writer before it checks for, writes or links `keys`; held until its
    /// links are written.
    pub async fn enter<I>(&self, keys: I) -> WritePass
    where
        I: IntoIterator<Item = String>,
    {
        let mut keys = keys.into_iter().peekable();
        loop {
            let notified = self.0.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.0.state.lock().expect("sweep gate poisoned");
                match state.sweep.as_mut() {
                    None => {
                        state.unclaimed_writers += 1;
                        return WritePass {
                            shared: self.0.clone(),
                            unclaimed: true,
                        };
                    }
                    Some(claims) => {
                        // Claim keys in order; wait on the first one being deleted.
                        while let Some(key) = keys.peek() {
                            if claims.deleting.contains(key) {
                                break;
                            }
                            let key = keys.next().expect("peeked");
                            claims.claimed.insert(key);
                        }
                        if keys.peek().is_none() {
                            return WritePass {
                                shared: self.0.clone(),
                                unclaimed: false,
                            };
                        }
                    }
                }
            }
            notified.await;
        }
    }

    /// Starts a sweep: returns once every writer that started before it is done, so the
    /// sweep's listings include their links. Only one sweep runs at a time.
    pub async fn start_sweep(&self) -> Option<Sweep> {
        {
            let mut state = self.0.state.lock().expect("sweep gate poisoned");
            if state.sweep.is_some() {
                return None;
            }
            state.sweep = Some(Claims::default());
        }
        let sweep = Sweep {
            shared: self.0.clone(),
            fence: None,
        };
        loop {
            let notified = self.0.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self
                .0
                .state
                .lock()
                .expect("sweep gate poisoned")
                .unclaimed_writers
                == 0
            {
                return Some(sweep);
            }
            notified.await;
        }
    }
}

impl Sweep {
    /// Deletes of this sweep go on only while `fence` holds.
    pub fn fenced(&mut self, fence: Arc<Fence>) {
        self.fence = Some(fence);
    }

    /// Fails when the sweep must stop deleting: its marker was not renewed in time.
    pub fn check_fence(&self) -> Result<()> {
        match &self.fence {
            Some(fence) => fence.check(),
            None => Ok(()),
        }
    }

    /// Marks `key` as being deleted unless a writer claimed it; `false` means keep it.
    pub fn begin_delete(&self, key: &str) -> Result<bool> {
        self.check_fence()?;
        let mut state = self.shared.state.lock().expect("sweep gate poisoned");
        let claims = state.sweep.as_mut().expect("a sweep is running");
        if claims.claimed.contains(key) {
            return Ok(false);
        }
        claims.deleting.insert(key.to_string());
        Ok(true)
    }

    /// The delete of `key` is done (or failed): writers waiting on it go on.
    pub fn end_delete(&self, key: &str) {
        let mut state = self.shared.state.lock().expect("sweep gate poisoned");
        if let Some(claims) = state.sweep.as_mut() {
            claims.deleting.remove(key);
        }
        drop(state);
        self.shared.changed.notify_waiters();
    }

    /// Whether a writer claimed `key` since the sweep started.
    #[cfg(test)]
    pub fn is_claimed(&self, key: &str) -> bool {
        let state = self.shared.state.lock().expect("sweep gate poisoned");
        state
            .sweep
            .as_ref()
            .is_some_and(|c| c.claimed.contains(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_sweep_waits_for_writers_that_started_before_it() {
        let gate = SweepGate::default();
        let pass = gate.enter(["a".to_string()]).await;
        let started = tokio::spawn({
            let gate = gate.clone();
            async move { gate.start_sweep().await.is_some() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!started.is_finished(), "the sweep must wait for the writer");
        drop(pass);
        assert!(started.await.unwrap());
    }

    #[tokio::test]
    async fn a_claimed_key_is_kept_and_a_key_being_deleted_makes_the_writer_wait() {
        let gate = SweepGate::default();
        let sweep = gate.start_sweep().await.unwrap();
        assert!(gate.start_sweep().await.is_none(), "one sweep at a time");

        let _pass = gate.enter(["claimed".to_string()]).await;
        assert!(!sweep.begin_delete("claimed").unwrap());

        assert!(sweep.begin_delete("doomed").unwrap());
        let writer = tokio::spawn({
            let gate = gate.clone();
            async move {
                let _pass = gate.enter(["doomed".to_string()]).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!writer.is_finished(), "the writer waits for the delete");
        sweep.end_delete("doomed");
        writer.await.unwrap();
        assert!(sweep.is_claimed("doomed"));
        assert!(!sweep.begin_delete("doomed").unwrap());
    }

    #[tokio::test]
    async fn writers_do_not_wait_when_no_sweep_runs_and_claims_end_with_the_sweep() {
        let gate = SweepGate::default();
        let sweep = gate.start_sweep().await.unwrap();
        drop(gate.enter(["k".to_string()]).await);
        drop(sweep);
        let sweep = gate.start_sweep().await.unwrap();
        assert!(!sweep.is_claimed("k"));
        assert!(sweep.begin_delete("k").unwrap());
    }
}
