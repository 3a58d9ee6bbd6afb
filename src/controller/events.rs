//! Kubernetes Events about berth's resources (events.k8s.io, through kube-runtime's
//! `Recorder`), so `kubectl describe` and Argo CD's resource view show what happened:
//! every change of a condition's status or reason, and each Trigger firing, rollout
//! outcome and rollback. Events are best-effort: a failure to publish one is logged and
//! never fails the reconcile that caused it. Repeats of one event within a few minutes
//! become a series on one Event (the `Recorder`'s cache), so a flapping resource does
//! not flood the API server.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};

/// The `reportingController` of berth's Events.
pub const REPORTER: &str = "berth.dev/operator";

/// Notes are limited to 1 KiB by the Events API.
const MAX_NOTE: usize = 1024;

/// Publishes berth's Events, or (standalone, where a Trigger is a file and may have no
/// resource to attach an Event to) nothing.
#[derive(Clone)]
pub struct Announcer(Option<Recorder>);

impl Announcer {
    /// Events reported by this replica (`instance`: its Pod name).
    pub fn new(client: Client, instance: &str) -> Self {
        let reporter = Reporter {
            controller: REPORTER.into(),
            instance: Some(instance.into()),
        };
        Announcer(Some(Recorder::new(client, reporter)))
    }

    /// Publishes nothing.
    pub fn disabled() -> Self {
        Announcer(None)
    }

    /// Publishes one Event regarding `object`.
    pub async fn publish<K>(
        &self,
        object: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: impl Into<String>,
    ) where
        K: Resource<DynamicType = ()>,
    {
        let Some(recorder) = &self.0 else {
            return;
        };
        let mut note = note.into();
        if note.len() > MAX_NOTE {
            let mut end = MAX_NOTE - 3;
            while !note.is_char_boundary(end) {
                end -= 1;
            }
            note.truncate(end);
            note.push_str("...");
        }
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        let reference = object.object_ref(&());
        if let Err(e) = recorder.publish(&event, &reference).await {
            tracing::warn!(
                kind = %K::kind(&()),
                object = reference.name.as_deref().unwrap_or_default(),
                reason,
                error = %e,
                "could not publish an Event"
            );
        }
    }

    /// One Event per condition of `after` whose status or reason differs from `before`:
    /// reason the condition's reason, `Warning` when it turned bad (`Ready` not `True`,
    /// `Stalled=True`), `Normal` otherwise.
    pub async fn condition_changes<K>(&self, object: &K, before: &[Condition], after: &[Condition])
    where
        K: Resource<DynamicType = ()>,
    {
        for condition in after {
            let was = before.iter().find(|c| c.type_ == condition.type_);
            if was.is_some_and(|w| w.status == condition.status && w.reason == condition.reason) {
                continue;
            }
            let bad = match condition.type_.as_str() {
                "Ready" => condition.status != "True",
                "Stalled" => condition.status == "True",
                _ => false,
            };
            let type_ = if bad {
                EventType::Warning
            } else {
                EventType::Normal
            };
            let note = format!(
                "{}={}: {}",
                condition.type_, condition.status, condition.message
            );
            self.publish(object, type_, &condition.reason, "Reconcile", note)
                .await;
        }
    }
}
