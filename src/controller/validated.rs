//! SyncRule, AgingRule and Trigger: checked against the cluster and the registry
//! configuration, and reported Ready (or why not). Their behaviour comes with their
//! own features; until then Ready says so.

use std::sync::Arc;

use futures::Stream;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};

use super::{Context, Error, RESYNC, on_error, status};
use crate::api::{
    AgingRule, AgingRuleStatus, SyncRule, SyncRuleStatus, TagMatchMode, Trigger, TriggerStatus,
    WorkloadKind,
};

/// The outcome of validating one resource.
struct Verdict {
    ready: bool,
    reason: &'static str,
    message: String,
}

impl Verdict {
    fn accepted(message: impl Into<String>) -> Self {
        Verdict {
            ready: true,
            reason: "Accepted",
            message: message.into(),
        }
    }

    fn refused(reason: &'static str, message: impl Into<String>) -> Self {
        Verdict {
            ready: false,
            reason,
            message: message.into(),
        }
    }
}

fn namespace_missing(ctx: &Context, namespace: &str) -> Option<Verdict> {
    ctx.policy
        .current()
        .namespace(namespace)
        .is_none()
        .then(|| {
            Verdict::refused(
                "NamespaceNotFound",
                format!("berth Namespace {namespace:?} does not exist"),
            )
        })
}

pub fn sync_rules(
    client: Client,
    config: watcher::Config,
    ctx: Arc<Context>,
) -> impl Stream<Item = Result<(ObjectRef<SyncRule>, Action), impl std::fmt::Display>> {
    Controller::new(Api::<SyncRule>::all(client), config)
        .shutdown_on_signal()
        .run(
            reconcile_sync_rule,
            |r, e, c| on_error("SyncRule", r.name_any(), e, &c),
            ctx,
        )
}

async fn reconcile_sync_rule(rule: Arc<SyncRule>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.start("SyncRule");
    let verdict = match namespace_missing(&ctx, &rule.spec.namespace) {
        Some(v) => v,
        None => match &rule.spec.remote.credentials_secret {
            Some(secret) => {
                let ns = secret
                    .namespace
                    .clone()
                    .unwrap_or_else(|| ctx.own_namespace.clone());
                match Api::<Secret>::namespaced(ctx.client.clone(), &ns)
                    .get_opt(&secret.name)
                    .await?
                {
                    None => Verdict::refused(
                        "SecretNotFound",
                        format!("credentials Secret {ns}/{} does not exist", secret.name),
                    ),
                    Some(_) => Verdict::accepted(
                        "valid; replication runs are not performed by this version of berth",
                    ),
                }
            }
            None => Verdict::accepted(
                "valid; replication runs are not performed by this version of berth",
            ),
        },
    };
    let generation = rule.metadata.generation;
    let status = SyncRuleStatus {
        observed_generation: generation,
        conditions: status::ready_conditions(
            rule.status.as_ref().map(|s| &s.conditions),
            verdict.ready,
            verdict.reason,
            verdict.message,
            generation,
        ),
        runs: rule
            .status
            .as_ref()
            .map(|s| s.runs.clone())
            .unwrap_or_default(),
        last_success: rule.status.as_ref().and_then(|s| s.last_success.clone()),
    };
    status::apply(
        &Api::<SyncRule>::all(ctx.client.clone()),
        &rule.name_any(),
        rule.status.as_ref(),
        &status,
    )
    .await?;
    ctx.backoff.reset(&rule.name_any());
    Ok(Action::requeue(RESYNC))
}

pub fn aging_rules(
    client: Client,
    config: watcher::Config,
    ctx: Arc<Context>,
) -> impl Stream<Item = Result<(ObjectRef<AgingRule>, Action), impl std::fmt::Display>> {
    Controller::new(Api::<AgingRule>::all(client), config)
        .shutdown_on_signal()
        .run(
            reconcile_aging_rule,
            |r, e, c| on_error("AgingRule", r.name_any(), e, &c),
            ctx,
        )
}

async fn reconcile_aging_rule(rule: Arc<AgingRule>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.start("AgingRule");
    let verdict = namespace_missing(&ctx, &rule.spec.namespace)
        .unwrap_or_else(|| Verdict::accepted("valid; tags are not aged by this version of berth"));
    let generation = rule.metadata.generation;
    let status = AgingRuleStatus {
        observed_generation: generation,
        conditions: status::ready_conditions(
            rule.status.as_ref().map(|s| &s.conditions),
            verdict.ready,
            verdict.reason,
            verdict.message,
            generation,
        ),
        last_run: rule.status.as_ref().and_then(|s| s.last_run.clone()),
        deleted: rule
            .status
            .as_ref()
            .map(|s| s.deleted.clone())
            .unwrap_or_default(),
    };
    status::apply(
        &Api::<AgingRule>::all(ctx.client.clone()),
        &rule.name_any(),
        rule.status.as_ref(),
        &status,
    )
    .await?;
    ctx.backoff.reset(&rule.name_any());
    Ok(Action::requeue(RESYNC))
}

pub fn triggers(
    client: Client,
    config: watcher::Config,
    ctx: Arc<Context>,
) -> impl Stream<Item = Result<(ObjectRef<Trigger>, Action), impl std::fmt::Display>> {
    Controller::new(Api::<Trigger>::all(client), config)
        .shutdown_on_signal()
        .run(
            reconcile_trigger,
            |r, e, c| {
                on_error(
                    "Trigger",
                    format!("{}/{}", r.namespace().unwrap_or_default(), r.name_any()),
                    e,
                    &c,
                )
            },
            ctx,
        )
}

async fn target_exists(
    client: &Client,
    namespace: &str,
    kind: WorkloadKind,
    name: &str,
) -> Result<bool, Error> {
    Ok(match kind {
        WorkloadKind::Deployment => Api::<Deployment>::namespaced(client.clone(), namespace)
            .get_opt(name)
            .await?
            .is_some(),
        WorkloadKind::StatefulSet => Api::<StatefulSet>::namespaced(client.clone(), namespace)
            .get_opt(name)
            .await?
            .is_some(),
        WorkloadKind::DaemonSet => Api::<DaemonSet>::namespaced(client.clone(), namespace)
            .get_opt(name)
            .await?
            .is_some(),
    })
}

async fn reconcile_trigger(trigger: Arc<Trigger>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.start("Trigger");
    let namespace = trigger.namespace().unwrap_or_default();
    let spec = &trigger.spec;
    let registry_namespace = spec.repository.split('/').next().unwrap_or_default();
    let verdict = if let Some(v) = namespace_missing(&ctx, registry_namespace) {
        v
    } else if let (TagMatchMode::Regex, Some(Err(e))) = (
        spec.tags.mode,
        spec.tags.regex.as_deref().map(regex::Regex::new),
    ) {
        Verdict::refused(
            "InvalidRegex",
            format!("spec.tags.regex does not compile: {e}"),
        )
    } else if !target_exists(&ctx.client, &namespace, spec.target.kind, &spec.target.name).await? {
        Verdict::refused(
            "TargetNotFound",
            format!(
                "{:?} {namespace}/{} does not exist",
                spec.target.kind, spec.target.name
            ),
        )
    } else if !spec.enabled {
        Verdict::refused(
            "Disabled",
            "the trigger is disabled (spec.enabled is false)",
        )
    } else {
        Verdict::accepted("valid; workloads are not updated on push by this version of berth")
    };
    let generation = trigger.metadata.generation;
    let status = TriggerStatus {
        observed_generation: generation,
        conditions: status::ready_conditions(
            trigger.status.as_ref().map(|s| &s.conditions),
            verdict.ready,
            verdict.reason,
            verdict.message,
            generation,
        ),
        history: trigger
            .status
            .as_ref()
            .map(|s| s.history.clone())
            .unwrap_or_default(),
    };
    status::apply(
        &Api::<Trigger>::namespaced(ctx.client.clone(), &namespace),
        &trigger.name_any(),
        trigger.status.as_ref(),
        &status,
    )
    .await?;
    ctx.backoff
        .reset(&format!("{namespace}/{}", trigger.name_any()));
    Ok(Action::requeue(RESYNC))
}
