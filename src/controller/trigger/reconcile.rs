//! One reconcile of a trigger, the same on the leader in a cluster and in standalone
//! `berth serve`: check it, follow the rollout of its last firing (rolling back when it
//! failed and `rollback` is set), and catch up with the newest matching tag in storage,
//! so a push that no replica acted on (berth down, a replica that died before patching,
//! a burst that overflowed the event channel) still reaches the workload.

use std::time::Duration;

use jiff::Timestamp;

use super::Env;
use super::fire::{Push, carries, fire_and_record, mark_failed, namespace_of, roll_back};
use super::history::{self, FAILED, PROGRESSING, ROLLED_BACK, SUCCEEDED, SUPERSEDED, StatusSink};
use super::select::{TagFilter, select_containers};
use super::workload::{Rollout, Workload};
use super::write_back;
use crate::api::{
    ImageReference, TagMatchMode, Trigger, TriggerFiring, WorkloadKind, WriteBackMode,
};
use crate::controller::Error;
use crate::controller::status::Health;
use crate::oci::{RepositoryName, Tag};
use kube::runtime::events::EventType;

/// A StatefulSet or DaemonSet has no progress deadline of its own: berth calls its
/// rollout failed when it has not completed this long after the patch.
pub const ROLLOUT_DEADLINE: Duration = Duration::from_secs(600);

/// How soon a rollout in progress is looked at again (watch events usually come first).
pub const FOLLOW_EVERY: Duration = Duration::from_secs(2);

/// Reconciles one trigger; returns when to look again.
pub async fn reconcile(
    env: &Env,
    trigger: &Trigger,
    sink: &StatusSink,
    resync: Duration,
) -> Result<Duration, Error> {
    let (health, progressing) = act(env, trigger, sink).await?;
    let following = progressing.is_some();
    let health = match progressing {
        Some(rollout) => health.working("RollingOut", rollout),
        None => health,
    };
    let generation = trigger.metadata.generation;
    let before = sink.current(trigger).conditions;
    let wrote = sink
        .update(trigger, |status| {
            status.observed_generation = generation;
            health.apply_to(&mut status.conditions, generation);
        })
        .await?;
    if wrote {
        let after = health.conditions(&before, generation);
        env.events.condition_changes(trigger, &before, &after).await;
    }
    Ok(if following { FOLLOW_EVERY } else { resync })
}

/// Checks the trigger and, when it is in effect, follows and catches up. Returns the
/// verdict, and the rollout still in progress, if one is.
async fn act(
    env: &Env,
    trigger: &Trigger,
    sink: &StatusSink,
) -> Result<(Health, Option<String>), Error> {
    let spec = &trigger.spec;
    let namespace = namespace_of(trigger);
    let registry_namespace = spec.repository.split('/').next().unwrap_or_default();
    let policy = env.policy.current();
    if !policy.open && policy.namespace(registry_namespace).is_none() {
        let message = format!("berth Namespace {registry_namespace:?} does not exist");
        return Ok((Health::waiting("NamespaceNotFound", message), None));
    }
    let filter = match TagFilter::new(&spec.tags) {
        Ok(f) => f,
        Err(e) => {
            let message = format!("spec.tags.regex does not compile: {e}");
            return Ok((Health::stalled("InvalidRegex", message), None));
        }
    };
    if !spec.enabled {
        let message = "the trigger is disabled (spec.enabled is false): pushes change nothing";
        return Ok((Health::suspended("Disabled", message), None));
    }
    if spec.mode() != WriteBackMode::Cluster {
        if let Some(health) = recent_stall(trigger, sink) {
            return Ok((health, None));
        }
        // No workload to check or follow: the GitOps tool rolls it out.
        if let Some(health) = catch_up(env, trigger, &filter, sink).await? {
            return Ok((health, None));
        }
        let health = Health::ready("Watching", write_back::describe(env, trigger));
        return Ok((health, None));
    }
    let Some(target) = &spec.target else {
        let message = "spec.target is required in writeBack mode Cluster";
        return Ok((Health::stalled("InvalidSpec", message), None));
    };
    let Some(workload) = Workload::get(&env.client, &namespace, target.kind, &target.name).await?
    else {
        let message = format!(
            "{:?} {namespace}/{} does not exist",
            target.kind, target.name
        );
        return Ok((Health::waiting("TargetNotFound", message), None));
    };
    if let Err(why) = select_containers(
        &workload.containers(),
        target.container.as_deref(),
        &spec.repository,
        &env.hosts,
    ) {
        let message = format!("{}: {why}", workload.describe());
        // Stalled: nothing changes until the Trigger or its workload is edited.
        return Ok((Health::stalled("NoMatchingContainer", message), None));
    }
    let progressing = follow(env, trigger, &workload, sink).await?;
    if let Some(health) = catch_up(env, trigger, &filter, sink).await? {
        // An image conflict is reported, not fought: a GitOps tool that took the field
        // back with --force-conflicts would otherwise trade the image with berth for ever.
        return Ok((health, None));
    }
    let health = Health::ready("Watching", describe(trigger, &workload));
    Ok((health, progressing))
}

/// How long a stalled write-back (refused credentials or host key, a missing file…)
/// is left alone before the catch-up tries it again.
const STALL_RETRY_AFTER: Duration = Duration::from_secs(30);

/// The stall of this generation of the trigger, if it is recent: its own status write
/// reconciles the trigger again, and trying the same push at once would fail the same
/// way (a retry storm). A new push still fires at once; the catch-up tries again at the
/// first resync after [`STALL_RETRY_AFTER`] (a fixed Secret is then picked up).
fn recent_stall(trigger: &Trigger, sink: &StatusSink) -> Option<Health> {
    let status = sink.current(trigger);
    if status.observed_generation != trigger.metadata.generation {
        return None;
    }
    let stalled = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Stalled" && c.status == "True")?;
    let age = Timestamp::now().duration_since(stalled.last_transition_time.0);
    let recent = age.as_secs_f64() < STALL_RETRY_AFTER.as_secs_f64();
    recent.then(|| Health::stalled(&stalled.reason, stalled.message.clone()))
}

/// `rolls out Deployment ns/web (container web) on pushes of team-a/web tags matching ^v.*$, pinned by digest`
fn describe(trigger: &Trigger, workload: &Workload) -> String {
    let spec = &trigger.spec;
    let containers = match spec.target.as_ref().and_then(|t| t.container.as_ref()) {
        Some(c) => format!("container {c}"),
        None => "every container using it".into(),
    };
    let tags = match spec.tags.mode {
        TagMatchMode::All => "any tag".to_string(),
        TagMatchMode::List => format!(
            "tags {}",
            spec.tags.names.clone().unwrap_or_default().join(", ")
        ),
        TagMatchMode::Regex => format!(
            "tags matching {}",
            spec.tags.regex.as_deref().unwrap_or_default()
        ),
    };
    let reference = match spec.image_reference {
        ImageReference::Digest => "pinned by digest",
        ImageReference::Tag => "by tag",
    };
    format!(
        "rolls out {} ({containers}) on pushes of {} with {tags}, {reference}",
        workload.describe(),
        spec.repository
    )
}

/// Follows the rollout of the newest firing while it is `Progressing`; returns what it
/// is waiting for while it still is.
async fn follow(
    env: &Env,
    trigger: &Trigger,
    workload: &Workload,
    sink: &StatusSink,
) -> Result<Option<String>, Error> {
    let status = sink.current(trigger);
    let Some(firing) = status
        .history
        .first()
        .filter(|f| f.result == PROGRESSING)
        .cloned()
    else {
        return Ok(None);
    };
    if !carries(workload, &firing) {
        let message = "someone else changed the image before the rollout finished";
        conclude(env, trigger, sink, &firing, SUPERSEDED, message).await?;
        return Ok(None);
    }
    let failure = match workload.rollout() {
        Rollout::Complete(message) => {
            conclude(env, trigger, sink, &firing, SUCCEEDED, &message).await?;
            return Ok(None);
        }
        Rollout::Failed(message) => message,
        Rollout::Progressing(message) => {
            let patched = firing.patched_at.as_ref().map_or(Timestamp::now(), |t| t.0);
            let waited = Timestamp::now().duration_since(patched);
            let overdue = workload.kind != WorkloadKind::Deployment
                && waited.as_secs_f64() > ROLLOUT_DEADLINE.as_secs_f64();
            if !overdue {
                let what = format!("rolling out {}@{}: {message}", firing.tag, firing.digest);
                return Ok(Some(what));
            }
            format!(
                "not rolled out {} s after the patch: {message}",
                ROLLOUT_DEADLINE.as_secs()
            )
        }
    };
    if !trigger.spec.rollback {
        mark_failed(env, trigger, &firing).await?;
        conclude(env, trigger, sink, &firing, FAILED, &failure).await?;
        return Ok(None);
    }
    let restored = roll_back(env, trigger, &firing).await?;
    if restored.is_empty() {
        let message = format!("{failure}; nothing to roll back: the image changed since");
        conclude(env, trigger, sink, &firing, FAILED, &message).await?;
    } else {
        let message = format!("{failure}; rolled back to {}", restored.join(", "));
        tracing::warn!(trigger = %history::key(trigger), tag = %firing.tag, "{message}");
        conclude(env, trigger, sink, &firing, ROLLED_BACK, &message).await?;
    }
    Ok(None)
}

async fn conclude(
    env: &Env,
    trigger: &Trigger,
    sink: &StatusSink,
    firing: &TriggerFiring,
    result: &'static str,
    message: &str,
) -> Result<(), Error> {
    let wrote = sink
        .update(trigger, |s| history::conclude(s, firing, result, message))
        .await?;
    if wrote {
        let (type_, reason) = match result {
            SUCCEEDED => (EventType::Normal, "RolloutSucceeded"),
            ROLLED_BACK => (EventType::Warning, "RolledBack"),
            SUPERSEDED => (EventType::Normal, "RolloutSuperseded"),
            _ => (EventType::Warning, "RolloutFailed"),
        };
        let note = format!("{}@{}: {message}", firing.tag, firing.digest);
        env.events
            .publish(trigger, type_, reason, "Rollout", note)
            .await;
        let since_push = Timestamp::now().duration_since(firing.pushed_at.0);
        let seconds = (result == SUCCEEDED).then(|| since_push.as_secs_f64());
        env.metrics.rollout(result, seconds);
    }
    Ok(())
}

/// Fires for the most recently pushed matching tag if the workload does not run it
/// (unless that very push failed, or someone took the image over after berth applied
/// it: see [`fire`](super::fire::fire)). In a write-back mode, fires when the history
/// does not record that push yet. Returns the health found when it is not Ready.
async fn catch_up(
    env: &Env,
    trigger: &Trigger,
    filter: &TagFilter,
    sink: &StatusSink,
) -> Result<Option<Health>, Error> {
    let Ok(repository) = trigger.spec.repository.parse::<RepositoryName>() else {
        return Ok(None);
    };
    let newest = env
        .store
        .tag_times(&repository)
        .await?
        .into_iter()
        .filter(|(tag, _)| filter.matches(tag))
        .max_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    let Some((tag, pushed_at)) = newest else {
        return Ok(None);
    };
    let Ok(parsed) = tag.parse::<Tag>() else {
        return Ok(None);
    };
    let Some(link) = env.store.resolve_tag(&repository, &parsed).await? else {
        return Ok(None); // deleted since the listing
    };
    let push = Push::new(tag, link.digest.to_string(), pushed_at, true);
    let written_before = sink
        .current(trigger)
        .history
        .iter()
        .any(|f| f.tag == push.tag && f.digest == push.digest);
    if trigger.spec.mode() != WriteBackMode::Cluster && written_before {
        // Recorded as written: no fetch of the repository at every resync.
        return Ok(None);
    }
    Ok(fire_and_record(env, trigger, &push, sink).await?)
}
