//! Writing this replica's pushes to the bucket's push log, and — on the leader —
//! tailing it.
//!
//! The tail lists the log every [`PushLogSettings::poll`] from a little before the
//! newest record it has seen ([`LOOKBACK`]), because names are ordered by their
//! writers' clocks and a slow append can land behind a newer one. Names it has seen are
//! remembered for that window only, so each record is delivered once and memory stays
//! bounded by the pushes of one window. Records this process wrote are skipped (they
//! were announced here when taken). A tail delivers only what was written after it
//! started (on becoming leader): pushes from before are the new leader's catch-up's, as
//! are records later than the window or lost in a crash between commit and append.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::sync::mpsc;

use super::ReplicaMetrics;
use crate::registry::events::{PushEvent, PushEvents};
use crate::storage::layout::push_record_time;
use crate::storage::{ListedRecord, PushRecord, Store};

/// How far behind the newest record seen each listing starts: appends that take longer,
/// or writers whose clock is behind by more, are left to the leader's catch-up.
pub const LOOKBACK: Duration = Duration::from_secs(10);

/// How often the leader deletes records older than the retention.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Attempts to append one record before it is given up (and left to catch-up).
const APPEND_ATTEMPTS: u32 = 3;

#[derive(Debug, Clone, Copy)]
pub struct PushLogSettings {
    /// How often the leader lists the log: the delay a follower's push may wait, and
    /// one LIST request each time.
    pub poll: Duration,
    /// Records older than this are deleted by the leader.
    pub retention: Duration,
}

impl Default for PushLogSettings {
    fn default() -> Self {
        PushLogSettings {
            poll: Duration::from_millis(200),
            retention: Duration::from_secs(600),
        }
    }
}

/// Appends every push of `outbox` to the log as `writer`, in order. Runs until the
/// outbox closes.
pub async fn write(
    store: Store,
    writer: String,
    mut outbox: mpsc::Receiver<PushEvent>,
    metrics: Arc<ReplicaMetrics>,
) {
    let mut seq: u64 = 0;
    while let Some(event) = outbox.recv().await {
        let record = PushRecord {
            repository: event.repository.to_string(),
            digest: event.digest.to_string(),
            tags: event.tags.clone(),
            pushed_at: event.pushed_at.to_string(),
        };
        for attempt in 1..=APPEND_ATTEMPTS {
            let appended = store.append_push_record(&writer, seq, &record).await;
            metrics.request("append", &appended);
            match appended {
                Ok(_) => break,
                Err(e) if attempt == APPEND_ATTEMPTS => {
                    tracing::warn!(repository = %event.repository, error = %e, "push not written to the push log; the leader's catch-up finds it");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await,
            }
        }
        seq += 1;
    }
}

/// The leader's reader of the push log.
pub struct PushLogTail {
    store: Store,
    /// This process's writer name: its own records are not delivered again.
    writer: String,
    events: PushEvents,
    settings: PushLogSettings,
    metrics: Arc<ReplicaMetrics>,
}

/// Record names seen within the lookback window, and the newest record's time.
#[derive(Default)]
struct Seen {
    names: BTreeSet<String>,
    newest_micros: i64,
    /// Records older than this were written before the tail started: they were the
    /// previous leader's to act on (or its successor's catch-up's), not delivered.
    from: i64,
}

impl Seen {
    fn starting_now() -> Self {
        let now = Timestamp::now().as_microsecond();
        Seen {
            names: BTreeSet::new(),
            newest_micros: now,
            from: now,
        }
    }

    /// Notes `record`; `false` if it was seen before.
    fn insert(&mut self, record: &ListedRecord) -> bool {
        self.newest_micros = self.newest_micros.max(record.micros);
        self.names.insert(record.name.clone())
    }

    /// Where the next listing starts.
    fn since(&self) -> i64 {
        self.newest_micros - LOOKBACK.as_micros() as i64
    }

    /// Forgets names the next listing will not return.
    fn forget_old(&mut self) {
        let keep_from = push_record_time(self.since());
        self.names = self.names.split_off(&keep_from);
    }
}

impl PushLogTail {
    pub fn new(
        store: Store,
        writer: String,
        events: PushEvents,
        settings: PushLogSettings,
        metrics: Arc<ReplicaMetrics>,
    ) -> Self {
        PushLogTail {
            store,
            writer,
            events,
            settings,
            metrics,
        }
    }

    /// Tails the log and prunes it, until dropped (when leadership is lost).
    pub async fn run(&self) {
        self.follow(Seen::starting_now()).await
    }

    async fn follow(&self, mut seen: Seen) {
        tracing::info!(poll = ?self.settings.poll, "tailing the push log for other replicas' pushes");
        let mut pruned = Instant::now();
        loop {
            if let Err(e) = self.poll(&mut seen).await {
                tracing::warn!(error = %e, "reading the push log failed; retrying");
            }
            if pruned.elapsed() >= PRUNE_EVERY {
                pruned = Instant::now();
                self.prune().await;
            }
            tokio::time::sleep(self.settings.poll).await;
        }
    }

    /// One listing: delivers the records not seen yet.
    async fn poll(&self, seen: &mut Seen) -> Result<(), crate::storage::StorageError> {
        let listed = self.store.push_records_since(seen.since()).await;
        self.metrics.request("list", &listed);
        for record in listed? {
            if !seen.insert(&record) || record.writer == self.writer || record.micros < seen.from {
                continue;
            }
            let read = self.store.read_push_record(&record.name).await;
            self.metrics.request("read", &read);
            match read {
                Ok(Some(pushed)) => match event_of(&pushed) {
                    Some(event) => {
                        tracing::debug!(repository = %event.repository, tags = ?event.tags, writer = %record.writer, "push from another replica");
                        self.metrics.delivered();
                        self.events.deliver_from_replica(event);
                    }
                    None => {
                        tracing::warn!(record = %record.name, "push log record does not name a repository and digest; skipped")
                    }
                },
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(record = %record.name, error = %e, "push log record unreadable; the leader's catch-up covers it")
                }
            }
        }
        seen.forget_old();
        Ok(())
    }

    async fn prune(&self) {
        let cutoff = Timestamp::now().as_microsecond() - self.settings.retention.as_micros() as i64;
        let pruned = self.store.prune_push_records(cutoff).await;
        self.metrics.request("prune", &pruned);
        match pruned {
            Ok(0) => {}
            Ok(n) => tracing::debug!(records = n, "pruned the push log"),
            Err(e) => tracing::warn!(error = %e, "pruning the push log failed"),
        }
    }
}

fn event_of(record: &PushRecord) -> Option<PushEvent> {
    Some(PushEvent {
        repository: record.repository.parse().ok()?,
        digest: record.digest.parse().ok()?,
        tags: record.tags.clone(),
        pushed_at: record.pushed_at.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageLocation;

    fn event(tag: &str) -> PushEvent {
        PushEvent {
            repository: "team/app".parse().unwrap(),
            digest: format!("sha256:{}", "ab".repeat(32)).parse().unwrap(),
            tags: vec![tag.into()],
            pushed_at: Timestamp::now(),
        }
    }

    /// Two replicas on one store: the follower's push reaches the leader once, the
    /// leader's own push is not delivered to it a second time.
    #[tokio::test]
    async fn a_followers_push_reaches_the_leader_once_and_its_own_not_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StorageLocation::Local(dir.path().into())).unwrap();
        let metrics = Arc::new(ReplicaMetrics::default());
        let (follower, follower_outbox) = PushEvents::with_outbox();
        let (leader, leader_outbox) = PushEvents::with_outbox();
        tokio::spawn(write(
            store.clone(),
            "follower".into(),
            follower_outbox,
            metrics.clone(),
        ));
        tokio::spawn(write(
            store.clone(),
            "leader".into(),
            leader_outbox,
            metrics.clone(),
        ));
        let settings = PushLogSettings {
            poll: Duration::from_millis(20),
            ..PushLogSettings::default()
        };
        let tail = PushLogTail::new(store, "leader".into(), leader.clone(), settings, metrics);
        let mut heard = leader.subscribe();
        // The tail starts now (as `run` does), before any push: both are after it.
        let seen = Seen::starting_now();
        let tailing = tokio::spawn(async move { tail.follow(seen).await });

        leader.publish(event("leaders-own"));
        assert_eq!(heard.recv().await.unwrap().tags, ["leaders-own"]);
        follower.publish(event("followers"));
        let delivered = tokio::time::timeout(Duration::from_secs(5), heard.recv())
            .await
            .expect("the follower's push reaches the leader")
            .unwrap();
        assert_eq!(delivered.tags, ["followers"]);
        // A third push after both: the next thing heard is it, so nothing came twice
        // and the leader's own push did not come back.
        follower.publish(event("third"));
        let next = tokio::time::timeout(Duration::from_secs(5), heard.recv())
            .await
            .expect("the third push reaches the leader")
            .unwrap();
        assert_eq!(next.tags, ["third"]);
        tailing.abort();
    }

    #[test]
    fn the_tail_forgets_names_older_than_its_window() {
        let mut seen = Seen::default();
        let at = |micros: i64, name: &str| ListedRecord {
            name: format!("{}-{name}-00000000", push_record_time(micros)),
            micros,
            writer: name.into(),
        };
        let window = LOOKBACK.as_micros() as i64;
        assert!(seen.insert(&at(1_000, "a")));
        assert!(!seen.insert(&at(1_000, "a")));
        assert!(seen.insert(&at(1_000 + 2 * window, "b")));
        seen.forget_old();
        assert_eq!(seen.names.len(), 1, "only b is inside the window");
        assert_eq!(seen.since(), 1_000 + window);
    }
}
