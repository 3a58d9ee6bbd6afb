//! SyncRule and AgingRule: checked against the cluster and the registry
//! configuration, and reported Ready (or why not). Their behaviour comes with their
//! own features; until then Ready says so. (Triggers have their own module, `trigger`.)

use std::sync::Arc;

use futures::Stream;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};

use super::status::{self, Health};
use super::{Context, Error, RESYNC, on_error};
use crate::api::{AgingRule, AgingRuleStatus, SyncRule, SyncRuleStatus};

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

    /// Every refusal here waits for another resource (a Namespace, a Secret) to appear.
    fn health(&self) -> Health {
        if self.ready {
            Health::ready(self.reason, self.message.clone())
        } else {
            Health::waiting(self.reason, self.message.clone())
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
        .reconcile_all_on(ctx.policy.namespace_changes())
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
        conditions: verdict.health().conditions(
            rule.status.as_ref().map_or(&[][..], |s| &s.conditions),
            generation,
        ),
        runs: rule
            .status
            .as_ref()
            .map(|s| s.runs.clone())
            .unwrap_or_default(),
        last_success: rule.status.as_ref().and_then(|s| s.last_success.clone()),
    };
    status::write(
        &Api::<SyncRule>::all(ctx.client.clone()),
        &ctx.events,
        rule.as_ref(),
        rule.status.as_ref(),
        &status,
        |s| &s.conditions,
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
        .reconcile_all_on(ctx.policy.namespace_changes())
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
        conditions: verdict.health().conditions(
            rule.status.as_ref().map_or(&[][..], |s| &s.conditions),
            generation,
        ),
        last_run: rule.status.as_ref().and_then(|s| s.last_run.clone()),
        deleted: rule
            .status
            .as_ref()
            .map(|s| s.deleted.clone())
            .unwrap_or_default(),
    };
    status::write(
        &Api::<AgingRule>::all(ctx.client.clone()),
        &ctx.events,
        rule.as_ref(),
        rule.status.as_ref(),
        &status,
        |s| &s.conditions,
    )
    .await?;
    ctx.backoff.reset(&rule.name_any());
    Ok(Action::requeue(RESYNC))
}
