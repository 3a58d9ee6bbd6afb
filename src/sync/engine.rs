//! The replication engine: one worker per enabled rule, fed by pushes (push rules),
//! schedules and requests to run now, copying with a bounded number of copies in flight
//! across all rules.
//!
//! Convergence rather than a queue that can be lost: a worker does not persist what it
//! still has to do. It catches up instead — compares every tag in the rule's scope on
//! both sides and copies what differs — at start (so a restart mid-copy finishes the
//! copy), after any failure (retrying with exponential backoff, 1 s to 5 min, until the
//! remote answers), every [`CATCH_UP_EVERY`] (pushes another replica received), on the
//! schedule, and on demand. Pushes are copied at once besides. Tags pushed before the
//! rule existed are left alone unless the rule says `syncExisting`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use tokio::sync::{Semaphore, broadcast, mpsc};

use super::client::{ClientError, Registry};
use super::copy::{Copier, KnownBlobs, Stats, TagOutcome};
use super::metrics::SyncMetrics;
use super::rule::RuleConfig;
use crate::api::SyncDirection;
use crate::registry::events::{PushEvent, PushEvents};
use crate::storage::Store;

/// Records kept per rule (newest first).
pub const RECORDS_KEPT: usize = 20;

/// Copies in flight at once, all rules together.
pub const PARALLEL_COPIES: usize = 4;

/// Attempts per tag within one pass before the pass records a failure.
const ATTEMPTS: u32 = 3;

/// A healthy rule still compares both sides this often.
pub const CATCH_UP_EVERY: Duration = Duration::from_secs(300);

/// Retry delays after failed passes: 1 s, 2 s, 4 s … at most this.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);

/// Pushes waiting for a rule's worker; past this, the next catch-up takes them.
const QUEUE: usize = 256;

/// Whether a task was started by the rule itself or by someone asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    Automatic,
    Manual,
}

impl TaskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Automatic => "Automatic",
            TaskKind::Manual => "Manual",
        }
    }
}

/// One copied (or refused, or failed) tag.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    pub started: Timestamp,
    /// The repository on the side copied from.
    pub repository: String,
    pub tag: String,
    pub digest: Option<String>,
    /// `Succeeded`, `Failed` or `Conflict`.
    pub result: &'static str,
    pub kind: TaskKind,
    pub duration: Duration,
    pub bytes: u64,
    pub message: Option<String>,
}

/// Whether the rule works, as its `Ready` condition says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Nothing tried yet.
    Starting,
    Ok,
    Disabled,
    /// The last attempt failed: `reason` is the condition's reason.
    Failing {
        reason: &'static str,
        message: String,
    },
}

/// What the engine knows about one rule, for its status.
#[derive(Debug, Clone)]
pub struct RuleState {
    pub records: VecDeque<TaskRecord>,
    pub health: Health,
    pub last_success: Option<Timestamp>,
    /// The last `sync-now` request taken (so one request runs once).
    pub last_request: Option<String>,
}

impl Default for RuleState {
    fn default() -> Self {
        RuleState {
            records: VecDeque::new(),
            health: Health::Starting,
            last_success: None,
            last_request: None,
        }
    }
}

enum Job {
    Push(PushEvent),
    Run(TaskKind),
}

struct RuleHandle {
    config: RuleConfig,
    state: Arc<Mutex<RuleState>>,
    jobs: mpsc::Sender<Job>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for RuleHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The engine: rules by name.
pub struct Engine {
    local: Arc<Registry>,
    store: Store,
    metrics: Arc<SyncMetrics>,
    rules: Mutex<HashMap<String, RuleHandle>>,
    changed: broadcast::Sender<String>,
    copies: Arc<Semaphore>,
}

impl Engine {
    /// `local` reaches this berth (in process); `store` lists its repositories and tags.
    pub fn new(local: Registry, store: Store, metrics: Arc<SyncMetrics>) -> Arc<Self> {
        Arc::new(Engine {
            local: Arc::new(local),
            store,
            metrics,
            rules: Mutex::default(),
            changed: broadcast::channel(256).0,
            copies: Arc::new(Semaphore::new(PARALLEL_COPIES)),
        })
    }

    /// Names of rules whose state changed (for status writers).
    pub fn changes(&self) -> broadcast::Receiver<String> {
        self.changed.subscribe()
    }

    /// Starts `config`'s worker, or restarts it if the rule changed. Records are kept.
    pub fn apply(self: &Arc<Self>, config: RuleConfig) {
        let mut rules = self.rules.lock().expect("rules");
        if rules.get(&config.name).is_some_and(|h| h.config == config) {
            return;
        }
        let state = rules
            .remove(&config.name)
            .map(|h| h.state.clone())
            .unwrap_or_default();
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = if config.enabled {
            let worker = Worker::new(self.clone(), config.clone(), state.clone());
            match worker {
                Ok(worker) => Some(tokio::spawn(worker.run(rx))),
                Err(e) => {
                    self.set_health(
                        &config.name,
                        &state,
                        Health::Failing {
                            reason: e.reason(),
                            message: e.to_string(),
                        },
                    );
                    None
                }
            }
        } else {
            self.set_health(&config.name, &state, Health::Disabled);
            None
        };
        rules.insert(
            config.name.clone(),
            RuleHandle {
                config,
                state,
                jobs: tx,
                task,
            },
        );
    }

    /// Stops and forgets rules not in `names`.
    pub fn retain(&self, names: &[String]) {
        self.rules.lock().expect("rules").retain(|name, handle| {
            let keep = names.contains(name);
            if !keep {
                self.forget_health(handle);
            }
            keep
        });
    }

    /// Stops every rule (leadership lost).
    pub fn clear(&self) {
        self.retain(&[]);
    }

    /// A rule going away no longer counts as failing.
    fn forget_health(&self, handle: &RuleHandle) {
        if matches!(
            handle.state.lock().expect("rule state").health,
            Health::Failing { .. }
        ) {
            self.metrics.failing_rules.dec();
        }
    }

    /// Asks rule `name` to compare and copy everything now; `request` identifies the
    /// request (an annotation's value) so it is taken once. False if not taken.
    pub fn run_now(&self, name: &str, request: Option<&str>) -> bool {
        let rules = self.rules.lock().expect("rules");
        let Some(handle) = rules.get(name) else {
            return false;
        };
        if let Some(request) = request {
            let mut state = handle.state.lock().expect("rule state");
            if state.last_request.as_deref() == Some(request) {
                return false;
            }
            state.last_request = Some(request.to_string());
        }
        handle.jobs.try_send(Job::Run(TaskKind::Manual)).is_ok()
    }

    /// Marks a request as already taken (read back from the rule's status after a restart).
    pub fn remember_request(&self, name: &str, request: &str) {
        if let Some(handle) = self.rules.lock().expect("rules").get(name) {
            let mut state = handle.state.lock().expect("rule state");
            if state.last_request.is_none() {
                state.last_request = Some(request.to_string());
            }
        }
    }

    pub fn state(&self, name: &str) -> Option<RuleState> {
        self.rules
            .lock()
            .expect("rules")
            .get(name)
            .map(|h| h.state.lock().expect("rule state").clone())
    }

    /// Hands every push to the push rules it concerns. Runs until `pushes` closes.
    pub async fn listen(self: Arc<Self>, pushes: PushEvents) {
        let mut rx = pushes.subscribe();
        loop {
            match rx.recv().await {
                Ok(event) => self.route(event),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(
                        missed,
                        "pushes came faster than sync rules took them; catching up"
                    );
                    let rules = self.rules.lock().expect("rules");
                    for handle in rules.values() {
                        let _ = handle.jobs.try_send(Job::Run(TaskKind::Automatic));
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    fn route(&self, event: PushEvent) {
        let rules = self.rules.lock().expect("rules");
        for handle in rules.values() {
            let c = &handle.config;
            let wanted = c.enabled
                && c.on_push
                && c.direction == SyncDirection::Push
                && c.local_path(event.repository.as_str()).is_some()
                && event.tags.iter().any(|t| c.covers_tag(t));
            if !wanted {
                continue;
            }
            if handle.jobs.try_send(Job::Push(event.clone())).is_err() {
                // The worker is busy and its queue full: a catch-up will find the tag.
                let _ = handle.jobs.try_send(Job::Run(TaskKind::Automatic));
            }
        }
    }

    fn set_health(&self, name: &str, state: &Mutex<RuleState>, health: Health) {
        let mut s = state.lock().expect("rule state");
        if s.health != health {
            let was_failing = matches!(s.health, Health::Failing { .. });
            let failing = matches!(health, Health::Failing { .. });
            match (was_failing, failing) {
                (false, true) => self.metrics.failing_rules.inc(),
                (true, false) => self.metrics.failing_rules.dec(),
                _ => 0,
            };
            s.health = health;
            drop(s);
            let _ = self.changed.send(name.to_string());
        }
    }
}

/// One rule's worker.
struct Worker {
    engine: Arc<Engine>,
    config: RuleConfig,
    state: Arc<Mutex<RuleState>>,
    remote: Registry,
    known: KnownBlobs,
}

/// One tag to copy, named by its path inside the rule's scope.
struct Item {
    path: String,
    tag: String,
    /// When it was pushed, for the lag metric (pushes only).
    pushed_at: Option<Timestamp>,
}

/// What one pass found.
#[derive(Default)]
struct Pass {
    failures: usize,
    /// The error that says why the remote could not be used, if that was it.
    connection: Option<ClientError>,
    first_error: Option<ClientError>,
}

impl Worker {
    fn new(
        engine: Arc<Engine>,
        config: RuleConfig,
        state: Arc<Mutex<RuleState>>,
    ) -> Result<Self, ClientError> {
        let remote = Registry::remote(&config.remote_url, config.credentials.clone(), &config.tls)?;
        Ok(Worker {
            engine,
            config,
            state,
            remote,
            known: KnownBlobs::default(),
        })
    }

    async fn run(self, mut jobs: mpsc::Receiver<Job>) {
        // A new or restarted worker catches up first: this is how a copy cut short by a
        // restart is finished, and how `syncExisting` brings older tags over.
        let mut catch_up_at = Some(Instant::now());
        let mut retries = 0u32;
        let mut next_scheduled = self.next_scheduled();
        loop {
            let wake = [catch_up_at, next_scheduled.map(|(_, at)| at)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or_else(|| Instant::now() + CATCH_UP_EVERY);
            let outcome = tokio::select! {
                job = jobs.recv() => match job {
                    Some(Job::Push(event)) => self.push(event).await,
                    Some(Job::Run(kind)) => self.pass(kind).await,
                    None => return,
                },
                _ = tokio::time::sleep_until(wake.into()) => {
                    if next_scheduled.is_some_and(|(_, at)| at <= Instant::now()) {
                        next_scheduled = self.next_scheduled();
                    }
                    self.pass(TaskKind::Automatic).await
                }
            };
            if outcome.failures > 0 || outcome.connection.is_some() {
                retries = retries.saturating_add(1);
                let delay = Duration::from_secs(1u64 << retries.min(9).saturating_sub(1))
                    .min(MAX_RETRY_DELAY);
                catch_up_at = Some(Instant::now() + delay);
                let error = outcome.connection.or(outcome.first_error);
                if let Some(e) = error {
                    tracing::warn!(rule = %self.config.name, error = %e, retry_in = ?delay, "sync failed; retrying");
                    self.engine.set_health(
                        &self.config.name,
                        &self.state,
                        Health::Failing {
                            reason: e.reason(),
                            message: e.to_string(),
                        },
                    );
                }
            } else {
                if retries > 0 || catch_up_at.is_some_and(|at| at <= Instant::now()) {
                    catch_up_at = Some(Instant::now() + CATCH_UP_EVERY);
                }
                retries = 0;
                self.engine
                    .set_health(&self.config.name, &self.state, Health::Ok);
                let mut state = self.state.lock().expect("rule state");
                state.last_success = Some(Timestamp::now());
            }
            if catch_up_at.is_none_or(|at| at <= Instant::now()) {
                catch_up_at = Some(Instant::now() + CATCH_UP_EVERY);
            }
        }
    }

    fn next_scheduled(&self) -> Option<(Timestamp, Instant)> {
        let schedule = self.config.schedule.as_ref()?;
        let now = Timestamp::now();
        let at = schedule.next_after(now)?;
        let wait = Duration::try_from(at.duration_since(now)).unwrap_or_default();
        Some((at, Instant::now() + wait))
    }

    /// Copies the pushed tags the rule covers.
    async fn push(&self, event: PushEvent) -> Pass {
        let Some(path) = self.config.local_path(event.repository.as_str()) else {
            return Pass::default();
        };
        let items: Vec<Item> = event
            .tags
            .iter()
            .filter(|t| self.config.covers_tag(t))
            .map(|t| Item {
                path: path.to_string(),
                tag: t.clone(),
                pushed_at: Some(event.pushed_at),
            })
            .collect();
        self.copy_all(items, TaskKind::Automatic).await
    }

    /// Compares everything in scope and copies what differs.
    async fn pass(&self, kind: TaskKind) -> Pass {
        if let Err(e) = self.remote.ping().await {
            return Pass {
                failures: 1,
                connection: Some(e),
                first_error: None,
            };
        }
        let items = match self.config.direction {
            SyncDirection::Push => self.local_items().await,
            SyncDirection::Pull => self.remote_items().await,
        };
        match items {
            Ok(items) => self.copy_all(items, kind).await,
            Err(e) => Pass {
                failures: 1,
                connection: e.is_connection().then(|| e.clone()),
                first_error: Some(e),
            },
        }
    }

    /// The local tags in scope (pushed since the rule exists, or all with syncExisting).
    async fn local_items(&self) -> Result<Vec<Item>, ClientError> {
        let storage = |e: crate::storage::StorageError| ClientError::Body {
            url: "berth storage".into(),
            detail: e.to_string(),
        };
        let mut items = Vec::new();
        for repo in self
            .engine
            .store
            .list_repositories()
            .await
            .map_err(storage)?
        {
            let Some(path) = self.config.local_path(&repo) else {
                continue;
            };
            let Ok(name) = repo.parse() else { continue };
            for (tag, at) in self.engine.store.tag_times(&name).await.map_err(storage)? {
                if self.config.covers_tag(&tag)
                    && (self.config.sync_existing || at >= self.config.since)
                {
                    items.push(Item {
                        path: path.to_string(),
                        tag,
                        pushed_at: None,
                    });
                }
            }
        }
        items.sort_by(|a, b| (&a.path, &a.tag).cmp(&(&b.path, &b.tag)));
        Ok(items)
    }

    /// The remote tags in scope.
    async fn remote_items(&self) -> Result<Vec<Item>, ClientError> {
        let paths: Vec<String> = match self.config.literal_paths() {
            Some(paths) => paths,
            None => self
                .remote
                .catalog()
                .await?
                .iter()
                .filter_map(|r| self.config.remote_path(r).map(str::to_string))
                .collect(),
        };
        let mut items = Vec::new();
        for path in paths {
            for tag in self
                .remote
                .list_tags(&self.config.remote_repo(&path))
                .await?
            {
                if self.config.covers_tag(&tag) {
                    items.push(Item {
                        path: path.clone(),
                        tag,
                        pushed_at: None,
                    });
                }
            }
        }
        Ok(items)
    }

    async fn copy_all(&self, items: Vec<Item>, kind: TaskKind) -> Pass {
        let results: Vec<Result<(), ClientError>> = futures::stream::iter(items)
            .map(|item| self.copy_one(item, kind))
            .buffer_unordered(PARALLEL_COPIES)
            .collect()
            .await;
        let mut pass = Pass::default();
        for e in results.into_iter().filter_map(Result::err) {
            pass.failures += 1;
            if e.is_connection() && pass.connection.is_none() {
                pass.connection = Some(e.clone());
            }
            pass.first_error.get_or_insert(e);
        }
        pass
    }

    /// Copies one tag, trying again on transient errors, and records the outcome.
    async fn copy_one(&self, item: Item, kind: TaskKind) -> Result<(), ClientError> {
        let _permit = self
            .engine
            .copies
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (src, dst, src_repo, dst_repo) = match self.config.direction {
            SyncDirection::Push => (
                self.engine.local.as_ref(),
                &self.remote,
                self.config.local_repo(&item.path),
                self.config.remote_repo(&item.path),
            ),
            SyncDirection::Pull => (
                &self.remote,
                self.engine.local.as_ref(),
                self.config.remote_repo(&item.path),
                self.config.local_repo(&item.path),
            ),
        };
        let started = Timestamp::now();
        let clock = Instant::now();
        let stats = Stats::default();
        let copier = Copier {
            src,
            dst,
            src_repo: &src_repo,
            dst_repo: &dst_repo,
            known: &self.known,
            stats: &stats,
        };
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            match copier.copy_tag(&item.tag, self.config.overwrite).await {
                Err(e) if e.is_transient() && attempt < ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
                }
                other => break other,
            }
        };
        let direction = self.config.direction_label();
        self.engine.metrics.bytes(direction, stats.bytes());
        let record =
            |result: &'static str, digest: Option<String>, message: Option<String>| TaskRecord {
                started,
                repository: src_repo.clone(),
                tag: item.tag.clone(),
                digest,
                result,
                kind,
                duration: clock.elapsed(),
                bytes: stats.bytes(),
                message,
            };
        match outcome {
            Ok(TagOutcome::Copied { digest }) => {
                self.engine.metrics.copied(direction, "Succeeded");
                let since = item.pushed_at.unwrap_or(started);
                let lag = Timestamp::now().duration_since(since).as_secs_f64();
                self.engine.metrics.lag(direction, lag);
                tracing::info!(rule = %self.config.name, repository = %src_repo, tag = %item.tag, %digest, bytes = stats.bytes(), "copied");
                self.record(record("Succeeded", Some(digest.to_string()), None));
                Ok(())
            }
            Ok(TagOutcome::UpToDate { .. } | TagOutcome::Gone) => Ok(()),
            Ok(TagOutcome::Conflict {
                source,
                destination,
            }) => {
                let message = format!(
                    "{dst_repo}:{} at {} is {destination}, not {source}; left as it is (overwrite is false)",
                    item.tag,
                    dst.describe()
                );
                if self.record_conflict(record("Conflict", Some(source.to_string()), Some(message)))
                {
                    self.engine.metrics.copied(direction, "Conflict");
                }
                Ok(())
            }
            Err(e) => {
                // The other side may have lost what it was known to have: check again.
                self.known.clear();
                self.engine.metrics.copied(direction, "Failed");
                self.record(record("Failed", None, Some(e.to_string())));
                Err(e)
            }
        }
    }

    fn record(&self, record: TaskRecord) {
        let mut state = self.state.lock().expect("rule state");
        state.records.push_front(record);
        state.records.truncate(RECORDS_KEPT);
        drop(state);
        let _ = self.engine.changed.send(self.config.name.clone());
    }

    /// Records a conflict unless the same one is already on record (catch-ups would
    /// otherwise fill the records with it). Returns whether it was recorded.
    /// Records a conflict unless the same one is recorded already; checked and
    /// recorded under one lock, so a push event and a catch-up comparing the same tag
    /// at once count it once.
    fn record_conflict(&self, record: TaskRecord) -> bool {
        let mut state = self.state.lock().expect("rule state");
        let known = state.records.iter().any(|r| {
            r.result == "Conflict"
                && r.repository == record.repository
                && r.tag == record.tag
                && r.digest == record.digest
        });
        if !known {
            state.records.push_front(record);
            state.records.truncate(RECORDS_KEPT);
            drop(state);
            let _ = self.engine.changed.send(self.config.name.clone());
        }
        !known
    }
}
