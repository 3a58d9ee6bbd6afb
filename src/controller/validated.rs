//! AgingRule: checked against the registry configuration, and reported Ready (or why
//! not). Its behaviour comes with its own feature; until then Ready says so. (Triggers
//! and SyncRules have their own modules, `trigger` and `sync_rule`.)

use std::sync::Arc;

use futures::Stream;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};

use super::{Context, Error, RESYNC, on_error, status};
use crate::api::{AgingRule, AgingRuleStatus};

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
