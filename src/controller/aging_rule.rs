//! The AgingRule reconciler: runs each rule on its cron schedule, or at once when its
//! `berth.dev/run-now` annotation changes; keeps every tag a workload in the cluster
//! uses; then has garbage collection free what the deleted tags held, and reports the
//! run in status.

use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ListParams;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};

use super::status::Health;
use super::trigger::{RegistryHosts, parse_image};
use super::{Context, Error, on_error, status};
use crate::aging::{self, AgingPolicy, AgingReport, DEFAULT_SCHEDULE, InUse, RUN_NOW, Scope};
use crate::api::{AgingRule, AgingRuleStatus, DeletedTag, KeptTag};
use crate::schedule::Schedule;

/// Status lists are cut at this many entries; the counts stay exact.
const LISTED: usize = 100;

/// Checked at least this often, so a schedule fires on time even without events.
const RECHECK: Duration = Duration::from_secs(60);

pub fn controller(
    client: Client,
    config: watcher::Config,
    ctx: Arc<Context>,
) -> impl Stream<Item = Result<(ObjectRef<AgingRule>, Action), impl std::fmt::Display>> {
    Controller::new(Api::<AgingRule>::all(client), config)
        // A rule applied before its berth Namespace is Ready as soon as that appears.
        .reconcile_all_on(ctx.policy.namespace_changes())
        .shutdown_on_signal()
        .run(
            reconcile,
            |r, e, c| on_error("AgingRule", r.name_any(), e, &c),
            ctx,
        )
}

/// Why a run happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    Schedule,
    Request,
}

async fn reconcile(rule: Arc<AgingRule>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.start("AgingRule");
    let api = Api::<AgingRule>::all(ctx.client.clone());
    let name = rule.name_any();
    let generation = rule.metadata.generation;
    let previous = rule.status.clone().unwrap_or_default();
    let mut next = previous.clone();
    next.observed_generation = generation;

    let schedule_text = rule.spec.schedule.as_deref().unwrap_or(DEFAULT_SCHEDULE);
    let schedule = match Schedule::parse(schedule_text) {
        Ok(schedule)
            if ctx
                .policy
                .current()
                .namespace(&rule.spec.namespace)
                .is_some() =>
        {
            schedule
        }
        refused => {
            let health = match refused {
                Err(e) => Health::stalled("InvalidSchedule", e.to_string()),
                Ok(_) => Health::waiting(
                    "NamespaceNotFound",
                    format!("berth Namespace {:?} does not exist", rule.spec.namespace),
                ),
            };
            next.conditions = health.conditions(&previous.conditions, generation);
            next.next_run = None;
            write(&api, &ctx, &rule, &next).await?;
            return Ok(Action::requeue(RECHECK));
        }
    };

    let now = Timestamp::now();
    let since = previous
        .last_run
        .as_ref()
        .map(|t| t.0)
        .or_else(|| rule.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(now);
    let scheduled = schedule.next_after(since);
    let requested = rule
        .annotations()
        .get(RUN_NOW)
        .filter(|v| previous.last_run_request.as_ref() != Some(*v))
        .cloned();
    let due = match (&requested, scheduled) {
        (Some(_), _) => Some(Due::Request),
        (None, Some(at)) if at <= now => Some(Due::Schedule),
        _ => None,
    };

    if let Some(due) = due {
        let outcome = run_once(&rule, &ctx).await;
        next.last_run = Some(Time(now));
        next.last_run_dry = rule.spec.dry_run;
        if let Some(value) = requested {
            next.last_run_request = Some(value);
        }
        match outcome {
            Ok((report, freed)) => {
                record(&mut next, &report, freed);
                let message = summary(&report, freed, rule.spec.dry_run, due);
                tracing::info!(rule = %name, "{message}");
                let reason = if rule.spec.dry_run {
                    "DryRun"
                } else {
                    "Succeeded"
                };
                next.conditions =
                    Health::ready(reason, message).conditions(&previous.conditions, generation);
            }
            Err(e) => {
                // Retried on the next schedule or request; not a spec error.
                next.conditions = Health::waiting("RunFailed", e.to_string())
                    .conditions(&previous.conditions, generation);
                tracing::warn!(rule = %name, error = %e, "aging run failed");
            }
        }
    } else if !previous
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True")
        || previous.observed_generation != generation
    {
        next.conditions = Health::ready(
            "Scheduled",
            format!("runs on schedule {:?}", schedule.as_str()),
        )
        .conditions(&previous.conditions, generation);
    }
    let after = next.last_run.as_ref().map(|t| t.0).unwrap_or(since);
    let upcoming = schedule.next_after(after.max(now));
    next.next_run = upcoming.map(Time);
    write(&api, &ctx, &rule, &next).await?;
    ctx.backoff.reset(&name);
    let wait = upcoming
        .map(|at| Duration::try_from(at.duration_since(Timestamp::now())).unwrap_or_default())
        .unwrap_or(RECHECK)
        .min(RECHECK);
    Ok(Action::requeue(wait.max(Duration::from_secs(1))))
}

async fn write(
    api: &Api<AgingRule>,
    ctx: &Context,
    rule: &AgingRule,
    next: &AgingRuleStatus,
) -> Result<(), Error> {
    status::write(api, &ctx.events, rule, rule.status.as_ref(), next, |s| {
        &s.conditions
    })
    .await
}

#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error("cannot tell which images workloads use, so nothing was deleted: {0}")]
    InUseUnknown(#[from] kube::Error),
    #[error("{0}")]
    Storage(#[from] crate::storage::StorageError),
}

/// One run: the workloads' images, the deletions, and the collection after them.
async fn run_once(rule: &AgingRule, ctx: &Context) -> Result<(AgingReport, u64), RunError> {
    let in_use = images_in_use(&ctx.client, &ctx.triggers.hosts).await?;
    let spec = &rule.spec;
    let policy = AgingPolicy::from_spec(spec);
    let scope = Scope::from_spec(spec);
    let report = aging::run(
        &ctx.store,
        &ctx.policy,
        &scope,
        &policy,
        &in_use,
        spec.dry_run,
    )
    .await?;
    let mut freed = 0;
    if !spec.dry_run
        && !report.deleted.is_empty()
        && let Some(gc) = &ctx.gc
    {
        match gc.run("aging").await {
            Ok(gc_report) => freed = gc_report.bytes_freed,
            Err(e) => tracing::warn!(error = %e, "garbage collection after aging failed"),
        }
    }
    Ok((report, freed))
}

/// What the cluster runs or is about to: digests of running containers, and images
/// named by Pods and by Deployment, StatefulSet and DaemonSet templates.
async fn images_in_use(client: &Client, hosts: &RegistryHosts) -> Result<InUse, kube::Error> {
    let mut in_use = InUse::default();
    let lp = ListParams::default();
    for pod in Api::<Pod>::all(client.clone()).list(&lp).await? {
        let who = format!(
            "Pod {}/{}",
            pod.namespace().unwrap_or_default(),
            pod.name_any()
        );
        if let Some(status) = &pod.status {
            let statuses = [
                &status.container_statuses,
                &status.init_container_statuses,
                &status.ephemeral_container_statuses,
            ];
            for list in statuses.into_iter().flatten() {
                for s in list {
                    // `docker-pullable://host/repo@sha256:…` or `host/repo@sha256:…`
                    if let Some((_, digest)) = s.image_id.rsplit_once('@') {
                        in_use.add_digest(digest, &who);
                    }
                }
            }
        }
        if let Some(spec) = &pod.spec {
            add_spec(&mut in_use, spec, hosts, &who);
        }
    }
    for d in Api::<Deployment>::all(client.clone()).list(&lp).await? {
        let who = format!(
            "Deployment {}/{}",
            d.namespace().unwrap_or_default(),
            d.name_any()
        );
        if let Some(spec) = d.spec.as_ref().and_then(|s| s.template.spec.as_ref()) {
            add_spec(&mut in_use, spec, hosts, &who);
        }
    }
    for s in Api::<StatefulSet>::all(client.clone()).list(&lp).await? {
        let who = format!(
            "StatefulSet {}/{}",
            s.namespace().unwrap_or_default(),
            s.name_any()
        );
        if let Some(spec) = s.spec.as_ref().and_then(|s| s.template.spec.as_ref()) {
            add_spec(&mut in_use, spec, hosts, &who);
        }
    }
    for d in Api::<DaemonSet>::all(client.clone()).list(&lp).await? {
        let who = format!(
            "DaemonSet {}/{}",
            d.namespace().unwrap_or_default(),
            d.name_any()
        );
        if let Some(spec) = d.spec.as_ref().and_then(|s| s.template.spec.as_ref()) {
            add_spec(&mut in_use, spec, hosts, &who);
        }
    }
    Ok(in_use)
}

fn add_spec(in_use: &mut InUse, spec: &PodSpec, hosts: &RegistryHosts, who: &str) {
    let images = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .filter_map(|c| c.image.as_deref());
    for image in images {
        let name = parse_image(image);
        if !name.host.is_some_and(|h| hosts.contains(h)) {
            continue;
        }
        if let Some(digest) = name.digest {
            in_use.add_digest(digest, who);
        }
        in_use.add_tag(name.path, name.tag.unwrap_or("latest"), who);
    }
}

fn record(status: &mut AgingRuleStatus, report: &AgingReport, freed: u64) {
    status.deleted_count = report.deleted.len() as i64;
    status.kept_count = report.kept.len() as i64;
    status.bytes_freed = freed as i64;
    status.deleted = report
        .deleted
        .iter()
        .take(LISTED)
        .map(|t| DeletedTag {
            repository: t.repository.clone(),
            tag: t.tag.clone(),
            digest: t.digest.clone(),
        })
        .collect();
    // The reasons worth reading: not the tags the policy itself keeps (recent, newest).
    status.kept = report
        .kept
        .iter()
        .filter(|t| !matches!(t.reason, Some("Recent" | "AmongNewest" | "NotIncluded")))
        .take(LISTED)
        .map(|t| KeptTag {
            repository: t.repository.clone(),
            tag: t.tag.clone(),
            digest: t.digest.clone(),
            reason: t.reason.unwrap_or_default().to_string(),
            message: t.message.clone().unwrap_or_default(),
        })
        .collect();
}

fn summary(report: &AgingReport, freed: u64, dry_run: bool, due: Due) -> String {
    let how = match due {
        Due::Schedule => "scheduled run",
        Due::Request => "run on request",
    };
    let protected = report
        .kept
        .iter()
        .filter(|t| matches!(t.reason, Some("InUse" | "Immutable")))
        .count();
    if dry_run {
        format!(
            "dry {how}: would delete {} tags in {} repositories; {} kept, {protected} of them in use or immutable",
            report.deleted.len(),
            report.repositories,
            report.kept.len()
        )
    } else {
        format!(
            "{how}: deleted {} tags ({} manifests) in {} repositories, freed {freed} bytes; {} kept, {protected} of them in use or immutable",
            report.deleted.len(),
            report.manifests_deleted,
            report.repositories,
            report.kept.len()
        )
    }
}
