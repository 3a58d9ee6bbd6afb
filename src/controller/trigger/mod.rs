//! Triggers: a pushed tag rolls a workload out, at once, and the rollout is followed.
//!
//! Who does what, with several replicas:
//! - **Every replica fires for the pushes it receives** ([`listen`]). The registry
//!   announces each manifest commit in process; the replica matches it against its own
//!   watched copy of the Triggers and patches the workload straight away, so a push is
//!   not delayed by a hop to the leader, and a follower's push is acted on as fast as the
//!   leader's. A firing is a compare-and-swap on the workload (see [`fire`]): several
//!   replicas never patch twice for one push, and an older push never overwrites a newer.
//! - **The leader reconciles** ([`controller`]): it keeps the `Ready` condition true to
//!   the cluster, follows the rollout of the last firing (watching the workloads),
//!   records its outcome, rolls back when asked, and catches up: whenever it reconciles
//!   (at start, on a change of the Trigger or its workload, and every minute) it compares
//!   the workload with the newest matching tag in storage and fires if the workload is
//!   behind. Nothing is missed while berth is down or a replica dies mid-push.
//! - Standalone (`berth serve --config-dir DIR --kubeconfig FILE`) does both in one
//!   process, with Triggers from the folder and their status in the log ([`standalone`]).
//!
//! Which containers: the named one, or every container whose image is the repository
//! on one of the host names this registry serves under ([`RegistryHosts`], from
//! `--registry-host`).

mod fire;
pub mod git;
mod history;
mod metrics;
mod queues;
mod reconcile;
mod select;
pub mod standalone;
mod workload;
mod write_back;

use std::collections::HashSet;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::{broadcast, mpsc};

pub use metrics::TriggerMetrics;
pub use select::{RegistryHosts, parse_image};

use super::{Context, Error, RESYNC, on_error};
use crate::api::{Trigger, WorkloadKind};
use crate::policy::Policy;
use crate::registry::events::PushEvent;
use crate::storage::Store;
use fire::{Push, fire_and_record};
use history::StatusSink;
use select::TagFilter;

/// What firing and reconciling need.
pub struct Env {
    pub client: Client,
    pub store: Store,
    pub policy: Policy,
    pub hosts: RegistryHosts,
    pub metrics: Arc<TriggerMetrics>,
    /// Events for each firing, rollout outcome and rollback.
    pub events: super::events::Announcer,
}

/// The leader's trigger reconciler: conditions, rollouts, rollbacks, catch-up.
pub fn controller(
    client: Client,
    config: watcher::Config,
    ctx: Arc<Context>,
) -> impl Stream<Item = Result<(ObjectRef<Trigger>, Action), impl std::fmt::Display>> {
    let controller = Controller::new(Api::<Trigger>::all(client.clone()), config);
    let triggers = controller.store();
    let every = watcher::Config::default;
    controller
        .watches(
            Api::<Deployment>::all(client.clone()),
            every(),
            targeting(triggers.clone(), WorkloadKind::Deployment),
        )
        .watches(
            Api::<StatefulSet>::all(client.clone()),
            every(),
            targeting(triggers.clone(), WorkloadKind::StatefulSet),
        )
        .watches(
            Api::<DaemonSet>::all(client),
            every(),
            targeting(triggers, WorkloadKind::DaemonSet),
        )
        // A berth Namespace appearing (or going away) decides whether a Trigger on one
        // of its repositories is Ready: GitOps tools apply a folder in any order.
        .reconcile_all_on(ctx.policy.namespace_changes())
        .shutdown_on_signal()
        .run(
            reconcile,
            |t, e, c| on_error("Trigger", history::key(&t), e, &c),
            ctx,
        )
}

/// Maps a workload event to the Triggers that target it.
fn targeting<K: Resource>(
    triggers: reflector::Store<Trigger>,
    kind: WorkloadKind,
) -> impl Fn(K) -> Vec<ObjectRef<Trigger>> + Send + Sync + 'static {
    move |workload: K| {
        let namespace = workload.namespace();
        let name = workload.name_any();
        triggers
            .state()
            .iter()
            .filter(|t| {
                t.namespace() == namespace
                    && t.spec
                        .target
                        .as_ref()
                        .is_some_and(|target| target.kind == kind && target.name == name)
            })
            .map(|t| ObjectRef::from_obj(t.as_ref()))
            .collect()
    }
}

async fn reconcile(trigger: Arc<Trigger>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.start("Trigger");
    let sink = StatusSink::Cluster(ctx.client.clone());
    let next = reconcile::reconcile(&ctx.triggers, &trigger, &sink, RESYNC).await?;
    ctx.backoff.reset(&history::key(&trigger));
    Ok(Action::requeue(next))
}

/// The fast path on every replica: watches the Triggers this operator manages and
/// fires for each push this replica's registry receives.
pub async fn listen_in_cluster(ctx: Arc<Context>) {
    // Subscribe first: pushes received while the Triggers load wait in the channel.
    let pushes = ctx.pushes.subscribe();
    let (triggers, writer) = reflector::store::<Trigger>();
    let watch = reflector::reflector(
        writer,
        watcher(
            Api::<Trigger>::all(ctx.client.clone()),
            ctx.watch_config.clone(),
        ),
    )
    .default_backoff()
    .for_each(|event| async move {
        if let Err(e) = event {
            tracing::warn!(error = %e, "watching Triggers failed; retrying");
        }
    });
    tokio::spawn(watch);
    if triggers.wait_until_ready().await.is_err() {
        return;
    }
    let sink = StatusSink::Cluster(ctx.client.clone());
    let env = ctx.triggers.clone();
    tracing::info!(hosts = ?env.hosts.as_slice(), "Triggers update workloads naming this registry as one of these hosts");
    listen(env, pushes, move || triggers.state(), sink).await;
}

/// Fires the matching, enabled triggers for every push on `pushes`: each trigger's
/// firings one after another, in push order, different triggers concurrently.
pub async fn listen(
    env: Arc<Env>,
    mut pushes: broadcast::Receiver<PushEvent>,
    triggers: impl Fn() -> Vec<Arc<Trigger>>,
    sink: StatusSink,
) {
    let mut queues = queues::Queues::default();
    loop {
        let event = match pushes.recv().await {
            Ok(event) => event,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "pushes came faster than triggers could take them; the leader's catch-up applies what was missed"
                );
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let current = triggers();
        queues.retain(
            &current
                .iter()
                .map(|t| history::key(t))
                .collect::<HashSet<_>>(),
        );
        for trigger in current {
            let Some(tag) = matching_tag(&trigger, &event) else {
                continue;
            };
            let push = Push::new(
                tag.to_string(),
                event.digest.to_string(),
                event.pushed_at,
                false,
            );
            let key = history::key(&trigger);
            if let Err(e) = queues.send(&key, (trigger, push), |rx| {
                worker(env.clone(), sink.clone(), rx)
            }) {
                tracing::warn!(trigger = %key, error = %e, "push not fired now; the leader's catch-up fires the newest tag");
            }
        }
    }
}

/// The first of the pushed tags that fires `trigger`, if it is enabled.
fn matching_tag<'e>(trigger: &Trigger, event: &'e PushEvent) -> Option<&'e str> {
    let spec = &trigger.spec;
    if !spec.enabled || spec.repository != event.repository.as_str() {
        return None;
    }
    let filter = TagFilter::new(&spec.tags).ok()?;
    event
        .tags
        .iter()
        .find(|t| filter.matches(t))
        .map(String::as_str)
}

/// A queue of one trigger's firings, taken one at a time.
fn worker(env: Arc<Env>, sink: StatusSink, mut rx: mpsc::Receiver<(Arc<Trigger>, Push)>) {
    tokio::spawn(async move {
        while let Some((trigger, push)) = rx.recv().await {
            // Errors are logged and counted there; the leader's catch-up retries.
            let _ = fire_and_record(&env, &trigger, &push, &sink).await;
        }
    });
}
