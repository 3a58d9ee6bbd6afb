//! Namespace: the policy watcher puts it in effect; this reconciler reports what the
//! registry holds in it.

use std::sync::Arc;

use futures::Stream;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};

use super::status::{self, Health};
use super::{Context, Error, RESYNC, on_error};
use crate::api::{Namespace, NamespaceStatus};
use crate::oci::RepositoryName;

const KIND: &str = "Namespace";

pub fn controller(
    client: Client,
    config: watcher::Config,
    ctx: Arc<Context>,
) -> impl Stream<Item = Result<(ObjectRef<Namespace>, Action), impl std::fmt::Display>> {
    Controller::new(Api::<Namespace>::all(client), config)
        .with_config(kube::runtime::controller::Config::default().debounce(super::PUSH_DEBOUNCE))
        .reconcile_all_on(ctx.pushes.ticks())
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.start(KIND);
    let name = ns.name_any();
    let prefix = format!("{name}/");
    let mut usage = NamespaceStatus::default();
    for repo in ctx.store.list_repositories().await? {
        if !repo.starts_with(&prefix) {
            continue;
        }
        let Ok(repo) = repo.parse::<RepositoryName>() else {
            continue;
        };
        let u = ctx.store.repository_usage(&repo).await?;
        usage.repositories += 1;
        usage.tags += u.tags as i64;
        usage.bytes_used += u.bytes as i64;
    }
    // Ready means "in effect": wait until this replica's registry policy has caught up.
    let in_effect =
        ctx.policy.current().namespace(&name) == Some(&crate::config::namespace_policy(&ns));
    let health = if in_effect {
        let visibility = serde_json::to_value(ns.spec.visibility)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        Health::ready(
            "Reconciled",
            format!("namespace {name} is in effect ({visibility} visibility)"),
        )
    } else {
        Health::waiting(
            "Applying",
            "waiting for the registry to load this namespace",
        )
    };
    let generation = ns.metadata.generation;
    let previous = ns.status.as_ref().map_or(&[][..], |s| &s.conditions);
    let status = NamespaceStatus {
        observed_generation: generation,
        conditions: health.conditions(previous, generation),
        ..usage
    };
    status::write(
        &Api::<Namespace>::all(ctx.client.clone()),
        &ctx.events,
        ns.as_ref(),
        ns.status.as_ref(),
        &status,
        |s| &s.conditions,
    )
    .await?;
    if !in_effect {
        return Ok(Action::requeue(std::time::Duration::from_millis(500)));
    }
    ctx.backoff.reset(&name);
    Ok(Action::requeue(RESYNC))
}

fn error_policy(ns: Arc<Namespace>, error: &Error, ctx: Arc<Context>) -> Action {
    on_error(KIND, ns.name_any(), error, &ctx)
}
