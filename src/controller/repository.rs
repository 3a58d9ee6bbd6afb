//! Repository: reports what storage holds, and with `deletionPolicy: Delete` removes
//! the content when the resource is deleted (the only case that needs a finalizer).

use std::sync::Arc;

use futures::Stream;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};

use super::status::{self, Health};
use super::{Context, Error, RESYNC, on_error};
use crate::api::{DeletionPolicy, Repository, RepositoryStatus};
use crate::config::repository_name;
use crate::oci::RepositoryName;

const KIND: &str = "Repository";
pub const FINALIZER: &str = "berth.dev/delete-content";
/// The `Ready` reason of a Repository whose spec cannot be enforced as written.
const INVALID_SPEC: &str = "InvalidSpec";

pub fn controller(
    client: Client,
    config: watcher::Config,
    ctx: Arc<Context>,
) -> impl Stream<Item = Result<(ObjectRef<Repository>, Action), impl std::fmt::Display>> {
    // A berth Namespace appearing or going away changes whether its Repositories are
    // Ready. Followed through the registry's policy rather than a watch of Namespaces:
    // Ready is judged from the policy, which the Namespace watch can overtake.
    Controller::new(Api::<Repository>::all(client), config)
        .reconcile_all_on(ctx.policy.namespace_changes())
        .with_config(kube::runtime::controller::Config::default().debounce(super::PUSH_DEBOUNCE))
        .reconcile_all_on(ctx.pushes.ticks())
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
}

async fn reconcile(repo: Arc<Repository>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.start(KIND);
    let api = Api::<Repository>::all(ctx.client.clone());
    let name = repo.name_any();
    let has_finalizer = repo.finalizers().iter().any(|f| f == FINALIZER);
    let wants_content_deleted = repo.spec.deletion_policy == DeletionPolicy::Delete;

    if repo.metadata.deletion_timestamp.is_some() {
        if has_finalizer {
            if wants_content_deleted
                && let Ok(full) = repository_name(&repo).parse::<RepositoryName>()
            {
                let removed = ctx.store.delete_repository(&full).await?;
                tracing::info!(repository = %full, removed, "deleted repository content (deletionPolicy Delete)");
            }
            set_finalizer(&api, &repo, false).await?;
        }
        return Ok(Action::await_change());
    }
    if wants_content_deleted != has_finalizer {
        set_finalizer(&api, &repo, wants_content_deleted).await?;
    }

    let generation = repo.metadata.generation;
    let previous = repo.status.as_ref().map_or(&[][..], |s| &s.conditions);
    let full_name = repository_name(&repo);
    let invalid = crate::config::validate_repository(&repo).err();
    let (health, usage) = match (full_name.parse::<RepositoryName>(), &invalid) {
        (Ok(full), Some(e)) => {
            tracing::warn!(repository = %name, message = %e, "invalid Repository fails closed");
            let message = format!(
                "{e}; until it is fixed, the registry keeps enforcing the last valid version of {full}, or, if it never had one, refuses it to everyone but administrators and namespace {:?}'s members",
                full.namespace()
            );
            (Health::stalled(INVALID_SPEC, message), None)
        }
        (Err(e), _) => (Health::stalled("InvalidName", e.to_string()), None),
        (Ok(full), None) if ctx.policy.current().namespace(full.namespace()).is_none() => {
            let message = format!(
                "berth Namespace {:?} does not exist: create it to use this repository",
                full.namespace()
            );
            (Health::waiting("NamespaceNotFound", message), None)
        }
        (Ok(full), None) => {
            let usage = ctx.store.repository_usage(&full).await?;
            let pulls = ctx.store.pull_counts(&full).await?;
            let health = Health::ready("Reconciled", format!("repository {full} is in effect"));
            (health, Some((usage, pulls.total())))
        }
    };
    let status = RepositoryStatus {
        observed_generation: generation,
        conditions: health.conditions(previous, generation),
        tags: usage.as_ref().map_or(0, |(u, _)| u.tags as i64),
        size_bytes: usage.as_ref().map_or(0, |(u, _)| u.bytes as i64),
        pull_count: usage
            .as_ref()
            .map_or(0, |(_, pulls)| i64::try_from(*pulls).unwrap_or(i64::MAX)),
        last_push: usage
            .and_then(|(u, _)| u.last_push)
            .and_then(|secs| Timestamp::from_second(secs).ok())
            .map(Time),
    };
    status::write(
        &api,
        &ctx.events,
        repo.as_ref(),
        repo.status.as_ref(),
        &status,
        |s| &s.conditions,
    )
    .await?;
    ctx.backoff.reset(&name);
    Ok(Action::requeue(RESYNC))
}

/// Adds or removes berth's finalizer, keeping any others.
async fn set_finalizer(
    api: &Api<Repository>,
    repo: &Repository,
    present: bool,
) -> Result<(), Error> {
    let mut finalizers: Vec<String> = repo
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if present {
        finalizers.push(FINALIZER.to_string());
    }
    // The resourceVersion makes this a compare-and-swap: a concurrent change fails it and we retry.
    let patch = serde_json::json!({
        "metadata": {
            "finalizers": finalizers,
            "resourceVersion": repo.resource_version(),
        }
    });
    api.patch(
        &repo.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

fn error_policy(repo: Arc<Repository>, error: &Error, ctx: Arc<Context>) -> Action {
    on_error(KIND, repo.name_any(), error, &ctx)
}
