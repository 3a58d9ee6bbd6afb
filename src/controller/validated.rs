//! SyncRule: checked against the cluster and the registry configuration, and reported
//! Ready (or why not). Its behaviour comes with its own feature; until then Ready says
//! so. (Triggers and AgingRules have their own modules.)

use std::sync::Arc;

use futures::Stream;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};

use super::{Context, Error, RESYNC, on_error, status};
use crate::api::{SyncRule, SyncRuleStatus};

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
