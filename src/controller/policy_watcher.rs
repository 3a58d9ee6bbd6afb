//! Keeps the registry's policy equal to the Namespace and Repository resources. Runs
//! on every replica, leader or not: each one serves the registry.

use futures::{StreamExt, TryStreamExt};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use crate::api::{Namespace, Repository};
use crate::policy::{Broken, Policy};

/// Watches both kinds and swaps in a new snapshot after every change, once both
/// initial lists are in (until then the policy reports not loaded, and readiness waits).
pub async fn watch_policy(client: Client, config: watcher::Config, policy: Policy) {
    let (namespaces, ns_writer) = reflector::store::<Namespace>();
    let (repositories, repo_writer) = reflector::store::<Repository>();
    let ns_events = reflector::reflector(
        ns_writer,
        watcher(
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .map_ok(|_| ())
    .boxed();
    let repo_events =
        reflector::reflector(repo_writer, watcher(Api::<Repository>::all(client), config))
            .default_backoff()
            .map_ok(|_| ())
            .boxed();
    // An invalid Repository keeps the version last enforced, or denies (fails closed).
    let rebuild = |namespaces: &Store<Namespace>, repositories: &Store<Repository>| {
        let ns = namespaces.state();
        let repos = repositories.state();
        crate::config::snapshot_failing_closed(
            ns.iter().map(|n| n.as_ref()),
            repos.iter().map(|r| r.as_ref()),
            Broken::default(),
            &policy.current(),
        )
    };
    let mut reported = Broken::default();
    let mut events = futures::stream::select(ns_events, repo_events);
    while let Some(event) = events.next().await {
        if let Err(e) = event {
            tracing::warn!(error = %e, "watching berth configuration failed; retrying");
            continue;
        }
        let ready = namespaces.wait_until_ready();
        let repos_ready = repositories.wait_until_ready();
        let both_ready = futures::future::join(ready, repos_ready);
        if futures::FutureExt::now_or_never(both_ready).is_none() {
            continue; // still receiving the initial lists
        }
        let first = !policy.is_loaded();
        let (snapshot, broken) = rebuild(&namespaces, &repositories);
        policy.replace(snapshot);
        if broken != reported && !broken.is_empty() {
            tracing::warn!(
                repositories = ?broken.repositories,
                "invalid Repositories fail closed: each keeps its last valid version, or denies everyone but administrators and namespace members (see their Ready condition)"
            );
        }
        reported = broken;
        if first {
            tracing::info!(
                namespaces = namespaces.state().len(),
                repositories = repositories.state().len(),
                "registry policy loaded from the cluster"
            );
        }
    }
}
