//! Keeps the registry's policy equal to the Namespace and Repository resources. Runs
//! on every replica, leader or not: each one serves the registry.

use futures::{StreamExt, TryStreamExt};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use crate::api::{Namespace, Repository};
use crate::policy::Policy;

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
    let rebuild = |namespaces: &Store<Namespace>, repositories: &Store<Repository>| {
        let ns = namespaces.state();
        let repos = repositories.state();
        crate::config::snapshot(
            ns.iter().map(|n| n.as_ref()),
            repos.iter().map(|r| r.as_ref()),
        )
    };
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
        policy.replace(rebuild(&namespaces, &repositories));
        if first {
            tracing::info!(
                namespaces = namespaces.state().len(),
                repositories = repositories.state().len(),
                "registry policy loaded from the cluster"
            );
        }
    }
}
