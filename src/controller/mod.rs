//! The reconcilers: one per resource kind, sharing a [`Context`]. Every replica
//! watches Namespaces and Repositories to keep the registry's policy current, and fires
//! the Triggers matching the pushes it receives (see [`trigger`]); only the leader (see
//! [`leader`]) runs the reconcilers that write status and storage.

pub mod aging_rule;
pub mod auth_secrets;
mod backoff;
mod error;
pub mod events;
pub mod leader;
mod metrics;
mod namespace;
mod policy_watcher;
pub mod pull_secrets;
mod repository;
mod status;
mod sync_rule;
pub mod token_review;
pub mod trigger;

use std::sync::Arc;

use futures::StreamExt;
use kube::Client;
use kube::runtime::controller::Action;
use kube::runtime::watcher;

pub use error::Error;
pub use metrics::ControllerMetrics;
pub use policy_watcher::watch_policy;

use crate::gc::Collector;
use crate::policy::Policy;
use crate::registry::events::PushEvents;
use crate::storage::Store;
use backoff::Backoff;

/// The field manager berth writes with (server-side apply).
pub const FIELD_MANAGER: &str = "berth";

/// What every reconcile gets.
pub struct Context {
    pub client: Client,
    pub store: Store,
    pub policy: Policy,
    pub metrics: Arc<ControllerMetrics>,
    /// The Kubernetes namespace berth runs in: default for Secret references.
    pub own_namespace: String,
    /// Which berth resources this operator manages (all, or those matching a label selector).
    pub watch_config: watcher::Config,
    /// Pushes from the registry, so usage in status follows a push at once.
    pub pushes: PushEvents,
    /// What the Triggers need: the cluster, storage, and this registry's host names.
    pub triggers: Arc<trigger::Env>,
    /// Garbage collection: on while this replica leads, run after aging rules delete.
    pub gc: Option<Arc<Collector>>,
    /// The replication engine the SyncRules run on (leader only).
    pub sync: Arc<crate::sync::Engine>,
    /// Kubernetes Events about the resources (condition changes, Trigger firings).
    pub events: events::Announcer,
    /// The reader of the other replicas' pushes, run while this replica leads.
    push_log: Option<Arc<crate::replicas::push_log::PushLogTail>>,
    replica_metrics: Option<Arc<crate::replicas::ReplicaMetrics>>,
    backoff: Backoff,
}

impl Context {
    #[allow(
        clippy::too_many_arguments,
        reason = "each is a separate dependency of the reconcilers, built once in main"
    )]
    pub fn new(
        client: Client,
        store: Store,
        policy: Policy,
        metrics: Arc<ControllerMetrics>,
        own_namespace: String,
        selector: Option<String>,
        pushes: PushEvents,
        sync: Arc<crate::sync::Engine>,
    ) -> Self {
        let watch_config = match selector {
            Some(s) => watcher::Config::default().labels(&s),
            None => watcher::Config::default(),
        };
        let triggers = Arc::new(trigger::Env {
            client: client.clone(),
            store: store.clone(),
            policy: policy.clone(),
            hosts: trigger::RegistryHosts::default(),
            metrics: Arc::default(),
            events: events::Announcer::disabled(),
        });
        Context {
            client,
            store,
            policy,
            metrics,
            own_namespace,
            watch_config,
            pushes,
            triggers,
            gc: None,
            sync,
            events: events::Announcer::disabled(),
            push_log: None,
            replica_metrics: None,
            backoff: Backoff::default(),
        }
    }

    /// Reads the pushes other replicas took into `pushes` while this replica leads
    /// (`tail`), and reports whether it leads in `metrics`.
    pub fn with_replicas(
        mut self,
        tail: Option<crate::replicas::push_log::PushLogTail>,
        metrics: Arc<crate::replicas::ReplicaMetrics>,
    ) -> Self {
        self.push_log = tail.map(Arc::new);
        self.replica_metrics = Some(metrics);
        self
    }

    /// The garbage collector this replica runs while it leads.
    pub fn with_gc(mut self, gc: Arc<Collector>) -> Self {
        self.gc = Some(gc);
        self
    }

    fn set_leading(&self, leading: bool) {
        if let Some(gc) = &self.gc {
            gc.set_active(leading);
        }
        if let Some(metrics) = &self.replica_metrics {
            metrics.set_leading(leading);
        }
    }

    /// Publishes Kubernetes Events as `instance` (this replica's Pod name), from the
    /// reconcilers and the Triggers.
    pub fn with_events(mut self, instance: &str) -> Self {
        self.events = events::Announcer::new(self.client.clone(), instance);
        self.triggers = Arc::new(trigger::Env {
            client: self.client.clone(),
            store: self.store.clone(),
            policy: self.policy.clone(),
            hosts: self.triggers.hosts.clone(),
            metrics: self.triggers.metrics.clone(),
            events: self.events.clone(),
        });
        self
    }

    /// The host names under which workloads name this registry, and the metrics the
    /// Triggers report to.
    pub fn with_triggers(
        mut self,
        hosts: trigger::RegistryHosts,
        metrics: Arc<trigger::TriggerMetrics>,
    ) -> Self {
        self.triggers = Arc::new(trigger::Env {
            client: self.client.clone(),
            store: self.store.clone(),
            policy: self.policy.clone(),
            hosts,
            metrics,
            events: self.events.clone(),
        });
        self
    }
}

/// Pushes arriving within this window cause one round of status refreshes, not one each.
const PUSH_DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(300);

/// How often status is refreshed from storage when nothing else happens.
const RESYNC: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs the operator side of berth: the policy watcher and the Triggers' push path on
/// every replica, and the reconcilers on whichever replica holds the Lease. Never returns.
pub async fn run_operator(ctx: Arc<Context>, election: leader::LeaderElection) {
    let (leading_tx, mut leading) = tokio::sync::watch::channel(false);
    tokio::spawn(watch_policy(
        ctx.client.clone(),
        ctx.watch_config.clone(),
        ctx.policy.clone(),
    ));
    tokio::spawn(trigger::listen_in_cluster(ctx.clone()));
    tokio::spawn(election.run(leading_tx));
    tokio::spawn(ctx.sync.clone().listen(ctx.pushes.clone()));
    loop {
        // Wait to lead, then reconcile until leadership is lost (dropping the controllers).
        if leading.wait_for(|l| *l).await.is_err() {
            return;
        }
        tracing::info!("starting reconcilers");
        ctx.set_leading(true);
        let tail = async {
            match &ctx.push_log {
                Some(tail) => tail.run().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = run_controllers(ctx.clone()) => {}
            _ = tail => {}
            _ = leading.wait_for(|l| !*l) => tracing::warn!("stopped reconciling: no longer the leader"),
        }
        ctx.set_leading(false);
        // Only the leader replicates: another replica's rules take over from here.
        ctx.sync.clear();
    }
}

/// Runs every reconciler until the future is dropped (when leadership is lost).
pub async fn run_controllers(ctx: Arc<Context>) {
    let c = ctx.client.clone();
    let cfg = ctx.watch_config.clone();
    tokio::join!(
        drain(namespace::controller(c.clone(), cfg.clone(), ctx.clone())),
        drain(repository::controller(c.clone(), cfg.clone(), ctx.clone())),
        drain(sync_rule::controller(c.clone(), cfg.clone(), ctx.clone())),
        drain(aging_rule::controller(c.clone(), cfg.clone(), ctx.clone())),
        drain(trigger::controller(c.clone(), cfg.clone(), ctx.clone())),
    );
}

async fn drain<S, T, E>(stream: S)
where
    S: futures::Stream<Item = Result<T, E>>,
    E: std::fmt::Display,
{
    stream
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile did not complete");
            }
        })
        .await;
}

/// The shared error policy: count the failure, back off exponentially per object.
fn on_error(kind: &'static str, key: String, error: &Error, ctx: &Context) -> Action {
    ctx.metrics.failure(kind, error);
    let delay = ctx.backoff.next(&key);
    tracing::warn!(kind, object = %key, error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}
