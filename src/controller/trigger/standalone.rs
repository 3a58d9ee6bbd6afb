//! Triggers in standalone `berth serve --config-dir DIR`, read from the folder's YAML
//! (a Trigger without `metadata.namespace` targets the `default` namespace).
//!
//! With `--kubeconfig FILE` berth acts on that cluster's workloads as the operator does:
//! it fires on push, and every few seconds follows rollouts and catches up. A Trigger
//! here is a file, and the cluster may have no Trigger resource (nor its CRD) to write
//! status to, so the status lives in memory and is reported in the log — each firing,
//! its outcome, each change of the `Ready` condition — and in the metrics
//! (`berth_trigger_firings_total`, `berth_trigger_rollouts_total`, the latency histograms).
//!
//! With replicas sharing a bucket only the leader (see `crate::replicas`) fires and
//! reconciles; it hears the other replicas' pushes through the push log.
//!
//! Without `--kubeconfig` there is no cluster to patch, and berth says so: a warning
//! naming each Trigger when it is loaded, and for every push that matches one a warning
//! and `berth_trigger_firings_total{result="NoCluster"}`.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kube::ResourceExt;
use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};
use tokio::sync::{broadcast, watch};

use super::history::{self, StatusSink};
use super::{Env, RegistryHosts, TriggerMetrics, listen, matching_tag, reconcile};
use crate::api::Trigger;
use crate::config::ConfigFolder;
use crate::policy::Policy;
use crate::registry::events::PushEvents;
use crate::storage::Store;

/// What standalone Triggers work with, besides the cluster.
pub struct Parts {
    pub store: Store,
    pub policy: Policy,
    pub hosts: RegistryHosts,
    pub metrics: Arc<TriggerMetrics>,
    pub pushes: PushEvents,
    /// Whether this replica leads: only the leader fires and reconciles.
    pub leading: watch::Receiver<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("reading --kubeconfig {0}: {1}")]
    Kubeconfig(String, KubeconfigError),
    #[error("connecting with --kubeconfig {0}: {1}")]
    Client(String, kube::Error),
}

/// Starts the Triggers of `config_dir` in the background: against the cluster of
/// `kubeconfig`, or, without one, reporting that they have none.
pub async fn start(
    config_dir: Option<&Path>,
    kubeconfig: Option<&Path>,
    parts: Parts,
) -> Result<(), StartError> {
    let Some(dir) = config_dir else {
        if kubeconfig.is_some() {
            tracing::warn!(
                "--kubeconfig has no effect without --config-dir: Triggers come from the folder"
            );
        }
        return Ok(());
    };
    let folder = ConfigFolder::new(dir);
    let Some(path) = kubeconfig else {
        tokio::spawn(run_without_cluster(
            folder,
            parts.pushes,
            parts.metrics,
            parts.leading,
        ));
        return Ok(());
    };
    let shown = path.display().to_string();
    let config =
        Kubeconfig::read_from(path).map_err(|e| StartError::Kubeconfig(shown.clone(), e))?;
    let config = kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
        .await
        .map_err(|e| StartError::Kubeconfig(shown.clone(), e))?;
    let client = kube::Client::try_from(config).map_err(|e| StartError::Client(shown, e))?;
    tracing::info!(hosts = ?parts.hosts.as_slice(), "Triggers update workloads naming this registry as one of these hosts");
    let env = Arc::new(Env {
        client,
        store: parts.store,
        policy: parts.policy,
        hosts: parts.hosts,
        metrics: parts.metrics,
        // A Trigger here is a file: there may be no resource to attach an Event to.
        events: crate::controller::events::Announcer::disabled(),
    });
    let pushes = parts.pushes;
    tokio::spawn(crate::replicas::while_leading(parts.leading, move || {
        run(ConfigFolder::new(folder.dir()), env.clone(), pushes.clone())
    }));
    Ok(())
}

/// How often the folder is checked for changes.
const POLL: Duration = Duration::from_secs(1);

/// How often every trigger is reconciled (rollouts followed, missed pushes caught up).
const RECONCILE_EVERY: Duration = Duration::from_secs(2);

/// The folder's Triggers, reloaded when its files change.
struct FolderTriggers {
    folder: ConfigFolder,
    fingerprint: Option<String>,
    triggers: Arc<RwLock<Vec<Arc<Trigger>>>>,
}

impl FolderTriggers {
    fn new(folder: ConfigFolder) -> Self {
        FolderTriggers {
            folder,
            fingerprint: None,
            triggers: Arc::default(),
        }
    }

    /// Reloads if the folder changed; returns the Triggers that are new or changed.
    fn refresh(&mut self) -> Vec<Arc<Trigger>> {
        let fingerprint = self.folder.fingerprint().ok();
        if fingerprint.is_some() && fingerprint == self.fingerprint {
            return Vec::new();
        }
        self.fingerprint = fingerprint;
        let loaded: Vec<Arc<Trigger>> = self
            .folder
            .load()
            .triggers
            .into_iter()
            .map(|mut t| {
                if t.metadata.namespace.is_none() {
                    t.metadata.namespace = Some("default".into());
                }
                Arc::new(t)
            })
            .collect();
        let mut current = self.triggers.write().expect("triggers lock poisoned");
        let changed = loaded
            .iter()
            .filter(|t| {
                !current
                    .iter()
                    .any(|c| c.metadata == t.metadata && c.spec == t.spec)
            })
            .cloned()
            .collect();
        *current = loaded;
        changed
    }

    fn current(&self) -> Vec<Arc<Trigger>> {
        self.triggers
            .read()
            .expect("triggers lock poisoned")
            .clone()
    }

    fn reader(&self) -> impl Fn() -> Vec<Arc<Trigger>> + use<> {
        let triggers = self.triggers.clone();
        move || triggers.read().expect("triggers lock poisoned").clone()
    }
}

/// Runs the folder's Triggers against the cluster of `env` until dropped (when this
/// replica stops leading).
async fn run(folder: ConfigFolder, env: Arc<Env>, pushes: PushEvents) {
    let receiver = pushes.subscribe();
    let mut triggers = FolderTriggers::new(folder);
    triggers.refresh();
    let sink = StatusSink::local();
    let listening = listen(env.clone(), receiver, triggers.reader(), sink.clone());
    let reconciling = async {
        loop {
            for trigger in triggers.refresh() {
                tracing::info!(trigger = %history::key(&trigger), "trigger loaded from the config folder");
            }
            for trigger in triggers.current() {
                if let Err(e) = reconcile::reconcile(&env, &trigger, &sink, RECONCILE_EVERY).await {
                    tracing::warn!(trigger = %history::key(&trigger), error = %e, "trigger reconcile failed; retrying");
                }
            }
            tokio::time::sleep(RECONCILE_EVERY).await;
        }
    };
    tokio::join!(listening, reconciling);
}

/// Reports that the folder's Triggers cannot act: there is no cluster. Never returns.
async fn run_without_cluster(
    folder: ConfigFolder,
    pushes: PushEvents,
    metrics: Arc<TriggerMetrics>,
    leading: watch::Receiver<bool>,
) {
    let mut receiver = pushes.subscribe();
    let mut triggers = FolderTriggers::new(folder);
    let mut warned = HashSet::new();
    let mut poll = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            _ = poll.tick() => {
                for trigger in triggers.refresh() {
                    if warned.insert(history::key(&trigger)) {
                        let target = trigger.spec.target.clone().unwrap_or_else(|| crate::api::TriggerTarget {
                            kind: Default::default(),
                            name: "(none: writeBack)".into(),
                            container: None,
                        });
                        tracing::warn!(
                            trigger = %history::key(&trigger),
                            "Trigger {} has no cluster: berth serve was started without --kubeconfig, \
                             so pushes of {} will not update {:?} {}/{}",
                            history::key(&trigger),
                            trigger.spec.repository,
                            target.kind,
                            trigger.namespace().unwrap_or_default(),
                            target.name,
                        );
                    }
                }
            }
            event = receiver.recv() => match event {
                // Every replica hears the pushes it takes; the leader speaks for all.
                Ok(_) if !*leading.borrow() => {}
                Ok(event) => {
                    for trigger in triggers.current() {
                        if let Some(tag) = matching_tag(&trigger, &event) {
                            metrics.firing("NoCluster");
                            tracing::warn!(
                                trigger = %history::key(&trigger),
                                "push of {}:{tag} matches Trigger {}, but berth serve has no --kubeconfig: \
                                 {:?} {} is not updated",
                                event.repository,
                                history::key(&trigger),
                                trigger.spec.target.as_ref().map(|t| t.kind).unwrap_or_default(),
                                trigger.spec.target.as_ref().map(|t| t.name.as_str()).unwrap_or("(none)"),
                            );
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}
