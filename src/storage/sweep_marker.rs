//! The sweep marker: what a garbage collection on a bucket shared by replicas tells the
//! other replicas (see `sweep_gate.rs` for the whole design and its proof). One object,
//! `gc/sweep`, never deleted:
//!
//! * a sweep writes it `sweeping` (create-only, or `If-Match` on the version it read)
//!   before it lists anything, renews it (`If-Match`, every fifth of its duration) while
//!   it runs, and writes it `done` (`If-Match`) when it has deleted everything it will;
//! * every write names the sweep (a fresh id) and counts its renewals, so no two writes
//!   have the same content, and so the same version (ETag): a reader that sees one
//!   version twice knows nobody wrote the marker in between;
//! * a `sweeping` marker whose version this process has seen unchanged for longer than
//!   its duration (by this process's monotonic clock: clocks of other hosts are never
//!   compared) is expired: its sweeper died or lost the bucket. A sweeper stops deleting
//!   when it could not renew for two thirds of the duration, before anyone sees its
//!   marker expire, and a new sweep takes an expired marker over (`If-Match`).
//!
//! A link-only writer opens a window ([`Store::open_sweep_window`]) before it checks
//! what it relies on: the last version of the marker this process saw, which costs
//! nothing once any read was made. After writing its links it reads the marker once
//! ([`Store::sweep_crossed`]): the same version, quiet (`done`, absent or expired) when
//! the window opened, means no sweep deleted anything in the window; anything else means
//! one may have, and the writer waits for it to end and verifies what it relies on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use object_store::{GetOptions, UpdateVersion};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use super::Store;
use super::error::{Result, StorageError};
use super::layout::Key;

/// What the marker object holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct SweepMarker {
    /// The sweep's id, fresh for every sweep.
    pub sweep: String,
    /// The replica running it (informational).
    pub sweeper: String,
    pub state: MarkerState,
    /// Informational: written by the sweeper's clock, never compared with another's.
    pub started_at: String,
    pub renewed_at: String,
    /// Makes every write of one sweep's marker differ from the one before.
    pub renewals: u64,
    /// How long the marker stays valid without a renewal.
    pub duration_ms: u64,
}

/// How long an unreadable marker (written by something else than berth) holds linking
/// writes back: as long as a dead sweeper's marker with the default duration.
const UNREADABLE_MARKER_DURATION: Duration = if cfg!(test) {
    Duration::from_millis(300)
} else {
    Duration::from_secs(30)
};

impl SweepMarker {
    /// What an unreadable marker is taken for: a sweep that may be deleting, until it
    /// expires like one whose sweeper died. Never an error: writes on every replica
    /// would fail until someone deleted the object by hand.
    fn unreadable() -> Self {
        SweepMarker {
            sweep: "unreadable".into(),
            sweeper: String::new(),
            state: MarkerState::Sweeping,
            started_at: String::new(),
            renewed_at: String::new(),
            renewals: 0,
            duration_ms: UNREADABLE_MARKER_DURATION.as_millis() as u64,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) enum MarkerState {
    Sweeping,
    Done,
}

/// A version of the marker object; `None` parts when absent.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Version {
    e_tag: Option<String>,
    version: Option<String>,
}

impl From<&Version> for UpdateVersion {
    fn from(v: &Version) -> Self {
        UpdateVersion {
            e_tag: v.e_tag.clone(),
            version: v.version.clone(),
        }
    }
}

/// The marker as this process last saw it.
#[derive(Debug, Clone)]
struct Seen {
    /// `None` when the object did not exist.
    found: Option<(SweepMarker, Version)>,
    /// When this process first saw this version (after the read that returned it, so
    /// expiry is judged late rather than early).
    since: Instant,
}

impl Seen {
    fn same_version(&self, other: &Seen) -> bool {
        match (&self.found, &other.found) {
            (None, None) => true,
            (Some((_, a)), Some((_, b))) => a == b,
            _ => false,
        }
    }

    /// No sweep may be deleting: no marker, a finished one, or one expired.
    fn quiet(&self) -> bool {
        match &self.found {
            None => true,
            Some((marker, _)) => {
                marker.state == MarkerState::Done
                    || self.since.elapsed() > Duration::from_millis(marker.duration_ms)
            }
        }
    }

    fn sweeping_id(&self) -> Option<&str> {
        match &self.found {
            Some((m, _)) if m.state == MarkerState::Sweeping => Some(&m.sweep),
            _ => None,
        }
    }
}

/// What a link-only writer saw of the marker before it checked what it relies on, and
/// whether that was quiet then.
pub(super) struct SweepWindow(Option<(Seen, bool)>);

/// This process's view of the marker, shared by every clone of a store.
#[derive(Default)]
pub(super) struct MarkerView {
    seen: Mutex<Option<Seen>>,
    /// The id of the sweep this process runs, if any (its writers are covered by the
    /// in-process gate).
    own: Mutex<Option<String>>,
    metrics: SweepMarkerMetrics,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(super) enum Crossed {
    /// A sweep ran across the write and what it relies on is still there.
    kept,
    /// What it relied on was gone; the write put its own bytes in place instead.
    rewritten,
    /// What it relied on was gone and the client must upload it again.
    refused,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CrossedLabels {
    outcome: Crossed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum MarkerEvent {
    /// A sweep took over the marker of a sweep that stopped renewing it.
    takeover,
    /// A sweep stopped because it could not renew its marker.
    lost,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: MarkerEvent,
}

#[derive(Clone)]
struct SweepMarkerMetrics {
    crossed: Family<CrossedLabels, Counter>,
    wait: Histogram,
    events: Family<EventLabels, Counter>,
}

impl Default for SweepMarkerMetrics {
    fn default() -> Self {
        SweepMarkerMetrics {
            crossed: Family::default(),
            wait: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            events: Family::default(),
        }
    }
}

/// The sweep marker as held by the running sweep: renewed in the background; deletes
/// ask [`MarkerHold::fence`] first.
pub(super) struct MarkerHold {
    store: Store,
    marker: Arc<Mutex<(SweepMarker, Version)>>,
    fence: Arc<Fence>,
    /// Tells the renewer to stop between renewals (never in the middle of one: a write
    /// cut off after it reached the bucket would leave this hold naming an old version).
    stop: tokio::sync::oneshot::Sender<()>,
    renewer: tokio::task::JoinHandle<()>,
}

/// Whether the sweep may still delete.
pub(super) struct Fence {
    renewed: Mutex<Instant>,
    lost: AtomicBool,
    deadline: Duration,
}

impl Fence {
    /// Fails once the marker could not be renewed for two thirds of its duration, or
    /// another sweep took it over: others may see it expired, and their writes are no
    /// longer waited for.
    pub fn check(&self) -> Result<()> {
        let renewed = *self.renewed.lock().expect("fence lock");
        if self.lost.load(Ordering::SeqCst) || renewed.elapsed() >= self.deadline {
            return Err(StorageError::SweepMarkerLost);
        }
        Ok(())
    }
}

impl Store {
    /// Registers the counters of sweeps and of writes a sweep ran across.
    pub fn register_sweep_metrics(&self, registry: &mut Registry) {
        let m = &self.marker.metrics;
        registry.register(
            "gc_writes_crossed_by_sweep",
            "Link-only writes (deduplicated upload commits, mounts, manifest pushes) that a \
             garbage collection on another replica ran across, by outcome: kept (what they \
             rely on stayed), rewritten (their own bytes were committed instead), refused \
             (the client must upload again)",
            m.crossed.clone(),
        );
        registry.register(
            "gc_sweep_wait_seconds",
            "How long a write waited for a garbage collection running across it to end",
            m.wait.clone(),
        );
        registry.register(
            "gc_sweep_marker_events",
            "Sweep marker events: takeover (a sweep took over the marker of a sweeper that \
             stopped renewing it), lost (a sweep stopped because it could not renew its own)",
            m.events.clone(),
        );
    }

    pub(super) fn count_crossed(&self, outcome: Crossed) {
        self.marker
            .metrics
            .crossed
            .get_or_create(&CrossedLabels { outcome })
            .inc();
    }

    /// Reads the marker, and remembers it (with when this version was first seen).
    async fn observe_marker(&self) -> Result<Seen> {
        let key = Key::SweepMarker.path();
        let found = match self.os_get(&key, GetOptions::default()).await {
            Ok(result) => {
                let version = Version {
                    e_tag: result.meta.e_tag.clone(),
                    version: result.meta.version.clone(),
                };
                let bytes = result
                    .bytes()
                    .await
                    .map_err(|e| StorageError::backend("read", &key, e))?;
                let marker = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                    tracing::warn!(%key, error = %e, "the sweep marker is unreadable: taken for a sweep until it stays unchanged for {UNREADABLE_MARKER_DURATION:?}, then replaced by the next one");
                    SweepMarker::unreadable()
                });
                Some((marker, version))
            }
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => return Err(StorageError::backend("read", &key, e)),
        };
        let mut seen = Seen {
            found,
            since: Instant::now(),
        };
        let mut cached = self.marker.seen.lock().expect("marker view lock");
        if let Some(before) = cached.as_ref()
            && before.same_version(&seen)
        {
            seen.since = before.since.min(seen.since);
        }
        *cached = Some(seen.clone());
        Ok(seen)
    }

    /// Opens a link-only writer's window: call before checking what the write relies on.
    /// Free once this process read the marker; nothing on a local directory.
    pub(super) async fn open_sweep_window(&self) -> Result<SweepWindow> {
        if self.local.is_some() {
            return Ok(SweepWindow(None));
        }
        let cached = self.marker.seen.lock().expect("marker view lock").clone();
        let seen = match cached {
            Some(seen) => seen,
            None => self.observe_marker().await?,
        };
        let quiet = seen.quiet();
        Ok(SweepWindow(Some((seen, quiet))))
    }

    /// Called by a link-only writer once its links are written: whether a sweep may have
    /// deleted what it relies on since its window opened. When one may have, this waits
    /// until no sweep is deleting any more, so that what the writer then finds is final.
    /// One GET when no sweep ran.
    pub(super) async fn sweep_crossed(&self, window: &SweepWindow) -> Result<bool> {
        let Some((opened, quiet_when_opened)) = &window.0 else {
            return Ok(false);
        };
        let mut now = self.observe_marker().await?;
        if now.same_version(opened) && *quiet_when_opened {
            return Ok(false);
        }
        // The sweep this process runs, running since before the window opened: the
        // in-process gate covers this writer (it claimed what it relies on).
        let own = self.marker.own.lock().expect("marker view lock").clone();
        if own.is_some()
            && opened.sweeping_id() == own.as_deref()
            && now.sweeping_id() == own.as_deref()
        {
            return Ok(false);
        }
        let started = Instant::now();
        let mut waited = false;
        while !now.quiet() {
            if !waited {
                waited = true;
                tracing::info!(
                    sweep = now.sweeping_id().unwrap_or_default(),
                    "a garbage collection runs across this write: waiting for it to end"
                );
            }
            let poll = now.found.as_ref().map_or(Duration::ZERO, |(m, _)| {
                Duration::from_millis(m.duration_ms) / 10
            });
            tokio::time::sleep(poll.clamp(Duration::from_millis(50), Duration::from_secs(1))).await;
            now = self.observe_marker().await?;
        }
        if waited {
            self.marker
                .metrics
                .wait
                .observe(started.elapsed().as_secs_f64());
        }
        Ok(true)
    }

    /// Takes the marker for a new sweep of `duration`: creates it, or replaces a finished
    /// or expired one. Fails with `SweepRunning` while another replica's sweep renews it.
    pub(super) async fn hold_sweep_marker(&self, duration: Duration) -> Result<MarkerHold> {
        let renew_every = (duration / 5).max(Duration::from_millis(100));
        // Another sweep renewing its marker for this long is alive: give up.
        let give_up = Instant::now() + duration * 2;
        loop {
            let seen = self.observe_marker().await?;
            let expired = seen.sweeping_id().is_some() && seen.quiet();
            if !seen.quiet() {
                if Instant::now() > give_up {
                    return Err(StorageError::SweepRunning);
                }
                tokio::time::sleep(renew_every).await;
                continue;
            }
            let now = Timestamp::now().to_string();
            let marker = SweepMarker {
                sweep: uuid::Uuid::new_v4().simple().to_string(),
                sweeper: self.replica.to_string(),
                state: MarkerState::Sweeping,
                started_at: now.clone(),
                renewed_at: now,
                renewals: 0,
                duration_ms: duration.as_millis() as u64,
            };
            let request = Instant::now();
            let previous = seen.found.as_ref().map(|(_, v)| v);
            let Some(version) = self.write_marker(&marker, previous).await? else {
                continue; // another replica wrote it first: look again
            };
            if expired {
                self.marker
                    .metrics
                    .events
                    .get_or_create(&EventLabels {
                        event: MarkerEvent::takeover,
                    })
                    .inc();
                let (stale, _) = seen.found.as_ref().expect("an expired marker exists");
                tracing::warn!(
                    stale = %stale.sweep,
                    sweeper = %stale.sweeper,
                    "took over the sweep marker of a garbage collection that stopped renewing it"
                );
            }
            *self.marker.own.lock().expect("marker view lock") = Some(marker.sweep.clone());
            let fence = Arc::new(Fence {
                renewed: Mutex::new(request),
                lost: AtomicBool::new(false),
                deadline: duration * 2 / 3,
            });
            let held = Arc::new(Mutex::new((marker, version)));
            let (stop, stopped) = tokio::sync::oneshot::channel();
            let renewer = tokio::spawn(renew(
                self.clone(),
                held.clone(),
                fence.clone(),
                renew_every,
                stopped,
            ));
            return Ok(MarkerHold {
                store: self.clone(),
                marker: held,
                fence,
                stop,
                renewer,
            });
        }
    }

    /// Writes the marker create-only (`previous` = `None`) or over `previous`; the new
    /// version, or `None` when another write came first.
    async fn write_marker(
        &self,
        marker: &SweepMarker,
        previous: Option<&Version>,
    ) -> Result<Option<Version>> {
        let key = Key::SweepMarker.path();
        let Some(result) = self
            .put_json_if(&key, marker, previous.map(UpdateVersion::from))
            .await?
        else {
            return Ok(None);
        };
        let version = Version {
            e_tag: result.e_tag,
            version: result.version,
        };
        // What this process wrote is what it saw last: its own writers open their
        // windows on it (see `sweep_crossed`).
        *self.marker.seen.lock().expect("marker view lock") = Some(Seen {
            found: Some((marker.clone(), version.clone())),
            since: Instant::now(),
        });
        Ok(Some(version))
    }
}

/// Renews the marker every `every` until the sweep ends or the marker is lost.
async fn renew(
    store: Store,
    held: Arc<Mutex<(SweepMarker, Version)>>,
    fence: Arc<Fence>,
    every: Duration,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = &mut stopped => return,
        }
        let (mut marker, version) = held.lock().expect("marker lock").clone();
        marker.renewals += 1;
        marker.renewed_at = Timestamp::now().to_string();
        let request = Instant::now();
        match store.write_marker(&marker, Some(&version)).await {
            Ok(Some(version)) => {
                *held.lock().expect("marker lock") = (marker, version);
                *fence.renewed.lock().expect("fence lock") = request;
            }
            Ok(None) => {
                fence.lost.store(true, Ordering::SeqCst);
                tracing::warn!(sweep = %marker.sweep, "another replica took over this sweep's marker");
                return;
            }
            Err(e) => {
                tracing::warn!(sweep = %marker.sweep, error = %e, "renewing the sweep marker failed")
            }
        }
    }
}

impl MarkerHold {
    pub fn fence(&self) -> Arc<Fence> {
        self.fence.clone()
    }

    pub fn id(&self) -> String {
        self.marker.lock().expect("marker lock").0.sweep.clone()
    }

    /// Ends the sweep: writes the marker `done`. A marker that cannot be written now
    /// expires for every reader after its duration.
    pub async fn release(self) {
        let _ = self.stop.send(());
        let _ = self.renewer.await;
        *self.store.marker.own.lock().expect("marker view lock") = None;
        if self.fence.lost.load(Ordering::SeqCst) {
            self.store
                .marker
                .metrics
                .events
                .get_or_create(&EventLabels {
                    event: MarkerEvent::lost,
                })
                .inc();
            return;
        }
        let (mut marker, version) = self.marker.lock().expect("marker lock").clone();
        marker.state = MarkerState::Done;
        marker.renewals += 1;
        marker.renewed_at = Timestamp::now().to_string();
        match self.store.write_marker(&marker, Some(&version)).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                tracing::warn!(sweep = %marker.sweep, "the sweep marker was taken over before the sweep ended")
            }
            Err(e) => {
                tracing::warn!(sweep = %marker.sweep, error = %e, "could not mark the sweep done; it expires on its own")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    const DURATION: Duration = Duration::from_millis(400);

    /// Two processes on one bucket: a sweeper and a writer.
    fn two_replicas() -> (Store, Store) {
        let bucket = Arc::new(InMemory::new());
        (Store::new(bucket.clone()), Store::new(bucket))
    }

    #[tokio::test]
    async fn a_write_no_sweep_ran_across_costs_one_read_and_is_not_crossed() {
        let (sweeper, writer) = two_replicas();
        // No marker yet, then a finished sweep: both quiet.
        let window = writer.open_sweep_window().await.unwrap();
        assert!(!writer.sweep_crossed(&window).await.unwrap());
        sweeper
            .hold_sweep_marker(DURATION)
            .await
            .unwrap()
            .release()
            .await;
        let window = writer.open_sweep_window().await.unwrap();
        assert!(
            writer.sweep_crossed(&window).await.unwrap(),
            "a sweep ran since the version this process knew"
        );
        let window = writer.open_sweep_window().await.unwrap();
        assert!(!writer.sweep_crossed(&window).await.unwrap());
    }

    #[tokio::test]
    async fn a_write_a_sweep_runs_across_waits_for_its_end() {
        let (sweeper, writer) = two_replicas();
        let window = writer.open_sweep_window().await.unwrap();
        let hold = sweeper.hold_sweep_marker(DURATION).await.unwrap();
        let crossed = tokio::spawn(async move { writer.sweep_crossed(&window).await.unwrap() });
        // Longer than the marker's duration: renewals keep it live meanwhile.
        tokio::time::sleep(DURATION * 2).await;
        assert!(
            !crossed.is_finished(),
            "the writer waits while the sweep renews"
        );
        assert!(hold.fence().check().is_ok());
        hold.release().await;
        assert!(crossed.await.unwrap());
    }

    #[tokio::test]
    async fn an_unreadable_marker_holds_writes_back_until_it_expires_and_the_next_sweep_replaces_it()
     {
        let (sweeper, writer) = two_replicas();
        let key = Key::SweepMarker.path();
        writer
            .objects
            .put_opts(
                &key,
                object_store::PutPayload::from_static(b"not json"),
                Default::default(),
            )
            .await
            .unwrap();
        let window = writer.open_sweep_window().await.unwrap();
        let started = Instant::now();
        assert!(
            writer.sweep_crossed(&window).await.unwrap(),
            "taken for a sweep that may have run"
        );
        assert!(started.elapsed() >= UNREADABLE_MARKER_DURATION);
        // Expired, it is taken over like a dead sweeper's marker.
        let hold = sweeper.hold_sweep_marker(DURATION).await.unwrap();
        hold.release().await;
        let window = writer.open_sweep_window().await.unwrap();
        assert!(writer.sweep_crossed(&window).await.unwrap(), "a sweep ran");
        let window = writer.open_sweep_window().await.unwrap();
        assert!(!writer.sweep_crossed(&window).await.unwrap(), "quiet again");
    }

    #[tokio::test]
    async fn a_dead_sweepers_marker_expires_for_writers_and_the_next_sweep_takes_it_over() {
        let (sweeper, writer) = two_replicas();
        let hold = sweeper.hold_sweep_marker(DURATION).await.unwrap();
        let dead = hold.id();
        // The sweeper dies: no renewal, no release.
        let fence = hold.fence();
        let MarkerHold { renewer, .. } = hold;
        renewer.abort();
        let _ = renewer.await;
        let window = writer.open_sweep_window().await.unwrap();
        assert!(
            writer.sweep_crossed(&window).await.unwrap(),
            "returns once the marker expired"
        );
        assert!(
            fence.check().is_err(),
            "the dead sweeper's fence was down before writers saw it expire"
        );
        // Now it is known expired: no wait, not crossed.
        let window = writer.open_sweep_window().await.unwrap();
        assert!(!writer.sweep_crossed(&window).await.unwrap());
        let next = writer.hold_sweep_marker(DURATION).await.unwrap();
        assert_ne!(next.id(), dead);
        next.release().await;
        let seen = writer.observe_marker().await.unwrap();
        let (marker, _) = seen.found.unwrap();
        assert_eq!(marker.state, MarkerState::Done);
    }

    #[tokio::test]
    async fn a_sweep_does_not_start_while_another_renews_its_marker() {
        let (first, second) = two_replicas();
        let hold = first.hold_sweep_marker(DURATION).await.unwrap();
        let refused = second.hold_sweep_marker(DURATION).await;
        assert!(
            matches!(refused, Err(StorageError::SweepRunning)),
            "{:?}",
            refused.err()
        );
        hold.release().await;
        second
            .hold_sweep_marker(DURATION)
            .await
            .unwrap()
            .release()
            .await;
    }
}
