//! Firing: one push becomes at most one patch of the workload, and one history entry.
//!
//! A firing reads the workload, skips it when the containers already run the pushed
//! image or when a newer push was applied (the `berth.dev/last-push` annotation), and
//! otherwise applies the new images conditionally on the resourceVersion it read. Two
//! replicas firing for the same push at once (the one that took the push, and the
//! leader catching up) cannot both write: the second gets a conflict, reads again,
//! finds the image in place and stops. So a push rolls a workload out once.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::ResourceExt;
use kube::runtime::events::EventType;

use super::Env;
use super::history::{self, APPLIED, COMMITTED, PROGRESSING, StatusSink};
use super::select::{image_for, select_containers};
use super::workload::{ImageChange, LastPush, Workload, is_conflict};
use super::write_back::{self, Written};
use crate::api::{ContainerImage, ImageReference, Trigger, TriggerFiring, WriteBackMode};
use crate::controller::status::Health;

/// How many times a patch is retried after conflicts.
const ATTEMPTS: usize = 10;

/// A tag that fires a trigger.
#[derive(Debug, Clone)]
pub struct Push {
    pub tag: String,
    pub digest: String,
    /// When the manifest was committed (microseconds, as history stores it).
    pub pushed_at: Timestamp,
    /// Found by a reconcile rather than announced by the registry.
    pub caught_up: bool,
}

impl Push {
    pub fn new(tag: String, digest: String, pushed_at: Timestamp, caught_up: bool) -> Self {
        let micros = pushed_at.as_microsecond();
        Push {
            tag,
            digest,
            pushed_at: Timestamp::from_microsecond(micros).unwrap_or(pushed_at),
            caught_up,
        }
    }
}

/// What firing did.
pub enum Fired {
    Patched {
        workload: String,
        generation: Option<i64>,
        previous: Vec<ContainerImage>,
        images: Vec<String>,
        patched_at: Timestamp,
    },
    /// The containers already run the pushed image.
    AlreadyCurrent,
    /// A newer push of this trigger was applied already.
    Superseded(LastPush),
    /// A catch-up of the push whose rollout failed: not applied again.
    FailedBefore,
    TargetNotFound(String),
    NoMatchingContainer(String),
    /// berth applied this push, and another field manager has since taken the image
    /// over: a catch-up leaves it to them rather than fight (the next push applies).
    TakenOver(String),
}

/// The trigger's Kubernetes namespace (standalone files without one mean `default`).
pub fn namespace_of(trigger: &Trigger) -> String {
    trigger.namespace().unwrap_or_else(|| "default".into())
}

/// Sets the pushed image on the trigger's containers, unless it is there already or a
/// newer push was applied.
pub async fn fire(env: &Env, trigger: &Trigger, push: &Push) -> Result<Fired, kube::Error> {
    let spec = &trigger.spec;
    let namespace = namespace_of(trigger);
    let name = trigger.name_any();
    let Some(target) = spec.target.as_ref() else {
        return Ok(Fired::TargetNotFound(
            "spec.target is required in writeBack mode Cluster".into(),
        ));
    };
    for attempt in 1..=ATTEMPTS {
        let Some(workload) =
            Workload::get(&env.client, &namespace, target.kind, &target.name).await?
        else {
            return Ok(Fired::TargetNotFound(format!(
                "{:?} {namespace}/{} does not exist",
                target.kind, target.name
            )));
        };
        let selected = match select_containers(
            &workload.containers(),
            target.container.as_deref(),
            &spec.repository,
            &env.hosts,
        ) {
            Ok(s) => s,
            Err(why) => {
                return Ok(Fired::NoMatchingContainer(format!(
                    "{}: {why}",
                    workload.describe()
                )));
            }
        };
        if let Some(last) = workload.last_pushes().get(&name) {
            let same = last.tag == push.tag && last.digest == push.digest;
            if !same && last.pushed_at.0 > push.pushed_at {
                return Ok(Fired::Superseded(last.clone()));
            }
            if same && last.failed && push.caught_up {
                return Ok(Fired::FailedBefore);
            }
        }
        let recorded = workload.image_digests();
        let mut changes = Vec::new();
        let mut previous = Vec::new();
        for s in selected {
            let image = image_for(
                &s.host,
                &spec.repository,
                &push.tag,
                &push.digest,
                spec.image_reference,
            );
            let digest = (spec.image_reference == ImageReference::Tag).then(|| push.digest.clone());
            let was = recorded.get(&s.container).cloned();
            if s.image == image && was == digest {
                continue;
            }
            previous.push(ContainerImage {
                container: s.container.clone(),
                image: s.image,
                digest: was,
            });
            changes.push(ImageChange {
                container: s.container,
                image,
                digest,
            });
        }
        if changes.is_empty() {
            return Ok(Fired::AlreadyCurrent);
        }
        if push.caught_up
            && let Some(why) = taken_over(&workload, &name, push, &changes)
        {
            return Ok(Fired::TakenOver(why));
        }
        let last = LastPush {
            tag: push.tag.clone(),
            digest: push.digest.clone(),
            pushed_at: MicroTime(push.pushed_at),
            failed: false,
        };
        match workload
            .apply(&env.client, &changes, Some((&name, &last)))
            .await
        {
            Ok(after) => {
                return Ok(Fired::Patched {
                    workload: after.describe(),
                    generation: after.generation(),
                    previous,
                    images: changes
                        .iter()
                        .map(|c| format!("{}={}", c.container, c.image))
                        .collect(),
                    patched_at: Timestamp::now(),
                });
            }
            Err(e) if is_conflict(&e) && attempt < ATTEMPTS => continue,
            Err(e) => return Err(e),
        }
    }
    unreachable!("the last attempt returns")
}

/// Whether someone else took the images of `changes` over after berth applied `push`:
/// the workload records `push` as this trigger's last, and another field manager owns
/// a changed container's image, which berth no longer owns. Says who and what.
fn taken_over(
    workload: &Workload,
    trigger: &str,
    push: &Push,
    changes: &[ImageChange],
) -> Option<String> {
    let last = workload.last_pushes().remove(trigger)?;
    if last.tag != push.tag || last.digest != push.digest {
        return None;
    }
    let berth_owns = workload.berth_owned_images();
    let taken: Vec<String> = changes
        .iter()
        .filter(|c| !berth_owns.contains(&c.container))
        .filter_map(|c| {
            let owners = workload.other_image_owners(&c.container);
            (!owners.is_empty()).then(|| {
                format!(
                    "container {} runs {} (image field managed by {})",
                    c.container,
                    workload.image_of(&c.container).unwrap_or_default(),
                    owners.join(", ")
                )
            })
        })
        .collect();
    (!taken.is_empty()).then(|| {
        format!(
            "{}: {} since berth applied {}@{}; berth does not take it back (the next push applies)",
            workload.describe(),
            taken.join("; "),
            push.tag,
            push.digest
        )
    })
}

/// Fires, counts and logs the outcome, and records a patch (or commit) in the
/// trigger's history. Returns the health the firing found when it is not Ready: another
/// field manager took the image over, or a write-back failed.
pub async fn fire_and_record(
    env: &Env,
    trigger: &Trigger,
    push: &Push,
    sink: &StatusSink,
) -> Result<Option<Health>, kube::Error> {
    if trigger.spec.mode() != WriteBackMode::Cluster {
        return write_back_and_record(env, trigger, push, sink).await;
    }
    let key = history::key(trigger);
    let fired = match fire(env, trigger, push).await {
        Ok(f) => f,
        Err(e) => {
            env.metrics.firing("Error");
            tracing::warn!(trigger = %key, tag = %push.tag, error = %e, "trigger could not patch its workload");
            let note = format!(
                "{}@{}: could not patch the workload: {e}",
                push.tag, push.digest
            );
            env.events
                .publish(trigger, EventType::Warning, "PatchFailed", "Fire", note)
                .await;
            return Err(e);
        }
    };
    // A catch-up that finds nothing to do is a quiet resync, not a firing.
    let count = |result| {
        if !push.caught_up {
            env.metrics.firing(result)
        }
    };
    match fired {
        Fired::Patched {
            workload,
            generation,
            previous,
            images,
            patched_at,
        } => {
            let latency = patched_at.duration_since(push.pushed_at);
            env.metrics.patched(latency.as_secs_f64());
            let latency_ms = latency.as_millis() as i64;
            tracing::info!(
                trigger = %key, %workload, tag = %push.tag, digest = %push.digest,
                latency_ms, caught_up = push.caught_up, "trigger patched its workload"
            );
            let set = images.join(", ");
            let message = if push.caught_up {
                format!("caught up (pushed while no berth replica acted on it): set {set}")
            } else {
                format!("set {set}")
            };
            let firing = TriggerFiring {
                tag: push.tag.clone(),
                digest: push.digest.clone(),
                pushed_at: MicroTime(push.pushed_at),
                patched_at: Some(MicroTime(patched_at)),
                latency_ms: Some(latency_ms),
                commit: None,
                revision: generation,
                result: PROGRESSING.into(),
                finished_at: None,
                message: Some(message),
                previous_images: previous,
            };
            let limit = trigger.spec.history_limit.max(1) as usize;
            sink.update(trigger, |s| history::record(s, &firing, limit))
                .await?;
            let note = format!(
                "{}@{} pushed {latency_ms} ms before: {workload}: {}",
                push.tag,
                push.digest,
                firing.message.as_deref().unwrap_or_default()
            );
            env.events
                .publish(trigger, EventType::Normal, "Fired", "Fire", note)
                .await;
        }
        Fired::FailedBefore => {
            tracing::debug!(trigger = %key, tag = %push.tag, "not applied again: its rollout failed");
        }
        Fired::AlreadyCurrent => {
            count("AlreadyCurrent");
            tracing::debug!(trigger = %key, tag = %push.tag, "the workload already runs the pushed image");
        }
        Fired::Superseded(last) => {
            count("Superseded");
            tracing::info!(
                trigger = %key, tag = %push.tag, newer = %last.tag,
                "not applied: a newer push was applied already"
            );
        }
        Fired::TargetNotFound(why) => {
            count("TargetNotFound");
            tracing::warn!(trigger = %key, tag = %push.tag, "not applied: {why}");
            not_applied(env, trigger, push, "TargetNotFound", &why).await;
        }
        Fired::NoMatchingContainer(why) => {
            count("NoMatchingContainer");
            tracing::warn!(trigger = %key, tag = %push.tag, "not applied: {why}");
            not_applied(env, trigger, push, "NoMatchingContainer", &why).await;
        }
        Fired::TakenOver(why) => {
            tracing::debug!(trigger = %key, tag = %push.tag, "not applied again: {why}");
            return Ok(Some(Health::stalled("ImageConflict", why)));
        }
    }
    Ok(None)
}

/// Writes the push back into Git or an Argo CD Application, and records it: a history
/// entry with the commit, an Event, and (on the fast path) the Ready condition, so a
/// failure shows at once and a success after one clears it.
async fn write_back_and_record(
    env: &Env,
    trigger: &Trigger,
    push: &Push,
    sink: &StatusSink,
) -> Result<Option<Health>, kube::Error> {
    let key = history::key(trigger);
    let count = |result| {
        if !push.caught_up {
            env.metrics.firing(result)
        }
    };
    let generation = trigger.metadata.generation;
    let (health, firing) = match write_back::write(env, trigger, push).await {
        Ok(Written::AlreadyCurrent) => {
            count("AlreadyCurrent");
            tracing::debug!(trigger = %key, tag = %push.tag, "the write-back target already holds the pushed image");
            return Ok(None);
        }
        Ok(Written::Superseded(why)) => {
            count("Superseded");
            tracing::info!(trigger = %key, tag = %push.tag, "not written: {why}");
            return Ok(None);
        }
        Ok(written) => {
            let done = Timestamp::now();
            let latency = done.duration_since(push.pushed_at);
            env.metrics.patched(latency.as_secs_f64());
            let latency_ms = latency.as_millis() as i64;
            let image = write_back::image_name(env, trigger);
            let (result, commit, revision, message) = match written {
                Written::Committed { commit, attempts } => {
                    count("Committed");
                    let retried = if attempts > 1 {
                        format!(" ({attempts} attempts: the branch moved meanwhile)")
                    } else {
                        String::new()
                    };
                    let message = format!("committed {image}:{} as {commit}{retried}", push.tag);
                    (COMMITTED, Some(commit), None, message)
                }
                Written::Applied { generation } => {
                    count("Applied");
                    let message = format!("set {image}:{} on the Application", push.tag);
                    (APPLIED, None, generation, message)
                }
                Written::AlreadyCurrent | Written::Superseded(_) => unreachable!("returned above"),
            };
            tracing::info!(trigger = %key, tag = %push.tag, digest = %push.digest, latency_ms, caught_up = push.caught_up, "{message}");
            let firing = TriggerFiring {
                tag: push.tag.clone(),
                digest: push.digest.clone(),
                pushed_at: MicroTime(push.pushed_at),
                patched_at: Some(MicroTime(done)),
                latency_ms: Some(latency_ms),
                commit,
                revision,
                result: result.into(),
                finished_at: Some(MicroTime(done)),
                message: Some(message),
                previous_images: Vec::new(),
            };
            let health = Health::ready("Watching", write_back::describe(env, trigger));
            (health, Some(firing))
        }
        Err(failure) => {
            count(failure.reason);
            tracing::warn!(trigger = %key, tag = %push.tag, reason = failure.reason, "write-back failed: {}", failure.message);
            if !push.caught_up {
                let note = format!("{}@{}: {}", push.tag, push.digest, failure.message);
                env.events
                    .publish(
                        trigger,
                        EventType::Warning,
                        failure.reason,
                        "WriteBack",
                        note,
                    )
                    .await;
            }
            let health = if failure.stalled {
                Health::stalled(failure.reason, failure.message)
            } else {
                Health::waiting(failure.reason, failure.message)
            };
            (health, None)
        }
    };
    let limit = trigger.spec.history_limit.max(1) as usize;
    let before = sink.current(trigger).conditions;
    // The leader's reconcile writes the conditions of a catch-up; the fast path its own.
    let fast = !push.caught_up;
    let wrote = sink
        .update(trigger, |status| {
            if let Some(firing) = &firing {
                history::record(status, firing, limit);
            }
            if fast {
                health.apply_to(&mut status.conditions, generation);
            }
        })
        .await?;
    if let Some(firing) = &firing {
        let reason = if firing.commit.is_some() {
            "Committed"
        } else {
            "Applied"
        };
        let note = format!(
            "{}@{} pushed {} ms before: {}",
            push.tag,
            push.digest,
            firing.latency_ms.unwrap_or_default(),
            firing.message.as_deref().unwrap_or_default()
        );
        env.events
            .publish(trigger, EventType::Normal, reason, "WriteBack", note)
            .await;
    }
    if wrote && fast {
        let after = health.conditions(&before, generation);
        env.events.condition_changes(trigger, &before, &after).await;
    }
    Ok((firing.is_none()).then_some(health))
}

/// A Warning Event for a push that could not be applied (a catch-up finding the same
/// problem is the Ready condition's business, not a new Event).
async fn not_applied(env: &Env, trigger: &Trigger, push: &Push, reason: &str, why: &str) {
    if push.caught_up {
        return;
    }
    let note = format!("{}@{} not applied: {why}", push.tag, push.digest);
    env.events
        .publish(trigger, EventType::Warning, reason, "Fire", note)
        .await;
}

/// Whether `container` runs the image of `digest` (pinned, or recorded for a tag).
fn runs(workload: &Workload, container: &str, digest: &str) -> bool {
    workload
        .image_of(container)
        .is_some_and(|image| image.ends_with(&format!("@{digest}")))
        || workload.image_digests().get(container).map(String::as_str) == Some(digest)
}

/// Whether the workload still runs what `firing` set, in any container it changed.
pub fn carries(workload: &Workload, firing: &TriggerFiring) -> bool {
    firing
        .previous_images
        .iter()
        .any(|p| runs(workload, &p.container, &firing.digest))
}

/// The workload's record of `firing`'s push, marked failed, if that push is the one
/// the workload records for the trigger.
fn failed_record(
    workload: &Workload,
    trigger: &Trigger,
    firing: &TriggerFiring,
) -> Option<LastPush> {
    let last = workload.last_pushes().remove(&trigger.name_any())?;
    (last.tag == firing.tag && last.digest == firing.digest).then_some(LastPush {
        failed: true,
        ..last
    })
}

/// Restores the images `firing` replaced, in the containers that still run its image,
/// and marks its push failed on the workload. Returns the restored `container=image`
/// pairs (none when nothing runs it any more).
pub async fn roll_back(
    env: &Env,
    trigger: &Trigger,
    firing: &TriggerFiring,
) -> Result<Vec<String>, kube::Error> {
    let spec = &trigger.spec;
    let namespace = namespace_of(trigger);
    let name = trigger.name_any();
    let Some(target) = spec.target.as_ref() else {
        return Ok(Default::default());
    };
    for attempt in 1..=ATTEMPTS {
        let Some(workload) =
            Workload::get(&env.client, &namespace, target.kind, &target.name).await?
        else {
            return Ok(Vec::new());
        };
        let changes: Vec<ImageChange> = firing
            .previous_images
            .iter()
            .filter(|p| runs(&workload, &p.container, &firing.digest))
            .map(|p| ImageChange {
                container: p.container.clone(),
                image: p.image.clone(),
                digest: p.digest.clone(),
            })
            .collect();
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let record = failed_record(&workload, trigger, firing);
        let record = record.as_ref().map(|r| (name.as_str(), r));
        match workload.apply(&env.client, &changes, record).await {
            Ok(_) => {
                return Ok(changes
                    .iter()
                    .map(|c| format!("{}={}", c.container, c.image))
                    .collect());
            }
            Err(e) if is_conflict(&e) && attempt < ATTEMPTS => continue,
            Err(e) => return Err(e),
        }
    }
    unreachable!("the last attempt returns")
}

/// Marks `firing`'s push failed on the workload (images unchanged), so a catch-up does
/// not apply it again after someone reverts the image by hand.
pub async fn mark_failed(
    env: &Env,
    trigger: &Trigger,
    firing: &TriggerFiring,
) -> Result<(), kube::Error> {
    let spec = &trigger.spec;
    let namespace = namespace_of(trigger);
    let name = trigger.name_any();
    let Some(target) = spec.target.as_ref() else {
        return Ok(());
    };
    for attempt in 1..=ATTEMPTS {
        let Some(workload) =
            Workload::get(&env.client, &namespace, target.kind, &target.name).await?
        else {
            return Ok(());
        };
        let Some(record) = failed_record(&workload, trigger, firing) else {
            return Ok(());
        };
        if workload.last_pushes().get(&name) == Some(&record) {
            return Ok(());
        }
        match workload
            .apply(&env.client, &[], Some((&name, &record)))
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if is_conflict(&e) && attempt < ATTEMPTS => continue,
            Err(e) => return Err(e),
        }
    }
    unreachable!("the last attempt returns")
}
