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

use super::{Context, Error, RESYNC, on_error, status};
use crate::api::{DeletionPolicy, Namespace, Repository, RepositoryStatus};
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
    let controller = Controller::new(Api::<Repository>::all(client.clone()), config.clone());
    let repositories = controller.store();
    // A Namespace appearing or going away changes whether its Repositories are Ready.
    controller
        .watches(
            Api::<Namespace>::all(client),
            config,
            move |ns: Namespace| {
                let name = ns.name_any();
                repositories
                    .state()
                    .iter()
                    .filter(|r| r.spec.namespace == name)
                    .map(|r| ObjectRef::from_obj(r.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
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
    let previous = repo.status.as_ref().map(|s| &s.conditions);
    let full_name = repository_name(&repo);
    let invalid = crate::config::validate_repository(&repo).err();
    let mut status = match (full_name.parse::<RepositoryName>(), &invalid) {
        (Ok(full), Some(e)) => RepositoryStatus {
            observed_generation: generation,
            conditions: status::ready_conditions(
                previous,
                false,
                INVALID_SPEC,
                format!(
                    "{e}; until it is fixed, the registry keeps enforcing the last valid version of {full}, or, if it never had one, refuses it to everyone but administrators and namespace {:?}'s members",
                    full.namespace()
                ),
                generation,
            ),
            ..Default::default()
        },
        (Err(e), _) => RepositoryStatus {
            observed_generation: generation,
            conditions: status::ready_conditions(
                previous,
                false,
                "InvalidName",
                e.to_string(),
                generation,
            ),
            ..Default::default()
        },
        (Ok(full), None) if ctx.policy.current().namespace(full.namespace()).is_none() => {
            RepositoryStatus {
                observed_generation: generation,
                conditions: status::ready_conditions(
                    previous,
                    false,
                    "NamespaceNotFound",
                    format!(
                        "berth Namespace {:?} does not exist: create it to use this repository",
                        full.namespace()
                    ),
                    generation,
                ),
                ..Default::default()
            }
        }
        (Ok(full), None) => {
            let usage = ctx.store.repository_usage(&full).await?;
            let pulls = ctx.store.pull_counts(&full).await?;
            RepositoryStatus {
                observed_generation: generation,
                conditions: status::ready_conditions(
                    previous,
                    true,
                    "Reconciled",
                    format!("repository {full} is in effect"),
                    generation,
                ),
                tags: usage.tags as i64,
                size_bytes: usage.bytes as i64,
                pull_count: i64::try_from(pulls.total()).unwrap_or(i64::MAX),
                last_push: usage
                    .last_push
                    .and_then(|secs| Timestamp::from_second(secs).ok())
                    .map(Time),
            }
        }
    };
    let stalled = invalid.map(|e| (INVALID_SPEC, e.to_string()));
    if let Some((_, message)) = &stalled {
        tracing::warn!(repository = %name, %message, "invalid Repository fails closed");
    }
    status::set_stalled(&mut status.conditions, stalled, generation);
    status::apply(&api, &name, repo.status.as_ref(), &status).await?;
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
