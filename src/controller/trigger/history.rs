//! Where a trigger's status goes, and the edits made to its history.
//!
//! In a cluster the status is the Trigger's status subresource. Any replica that patches
//! a workload records the firing, and the leader records how the rollout ended, so
//! several processes write it: every write is a server-side apply carrying the
//! resourceVersion it was computed from, retried on a conflict from a fresh read, so
//! no write overwrites another. Standalone (`berth serve --config-dir`) a Trigger is a
//! file: its status lives in memory and every change is logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};

use super::super::FIELD_MANAGER;
use super::workload::is_conflict;
use crate::api::{Trigger, TriggerFiring, TriggerStatus};

pub const PROGRESSING: &str = "Progressing";
pub const SUCCEEDED: &str = "Succeeded";
pub const FAILED: &str = "Failed";
pub const ROLLED_BACK: &str = "RolledBack";
pub const SUPERSEDED: &str = "Superseded";
/// Write-back mode Git: the commit was pushed.
pub const COMMITTED: &str = "Committed";
/// Write-back mode ArgoCD: the Application was updated.
pub const APPLIED: &str = "Applied";

/// How many times a status write is retried after conflicts.
const ATTEMPTS: usize = 10;

/// `namespace/name`
pub fn key(trigger: &Trigger) -> String {
    format!(
        "{}/{}",
        trigger.namespace().unwrap_or_default(),
        trigger.name_any()
    )
}

#[derive(Clone)]
pub enum StatusSink {
    /// The Trigger resource's status subresource.
    Cluster(Client),
    /// In memory, logged: standalone Triggers come from files.
    Local(Arc<Mutex<HashMap<String, TriggerStatus>>>),
}

impl StatusSink {
    pub fn local() -> Self {
        StatusSink::Local(Arc::default())
    }

    /// The status as last written (in a cluster, as `trigger` carries it).
    pub fn current(&self, trigger: &Trigger) -> TriggerStatus {
        match self {
            StatusSink::Cluster(_) => trigger.status.clone().unwrap_or_default(),
            StatusSink::Local(map) => map
                .lock()
                .expect("status lock poisoned")
                .get(&key(trigger))
                .cloned()
                .unwrap_or_default(),
        }
    }

    /// Applies `change` to the newest status and writes the result if it differs.
    /// Returns whether it wrote.
    pub async fn update(
        &self,
        trigger: &Trigger,
        change: impl Fn(&mut TriggerStatus),
    ) -> Result<bool, kube::Error> {
        match self {
            StatusSink::Local(map) => {
                let mut map = map.lock().expect("status lock poisoned");
                let status = map.entry(key(trigger)).or_default();
                let before = status.clone();
                change(status);
                log_changes(&key(trigger), &before, status);
                Ok(before != *status)
            }
            StatusSink::Cluster(client) => {
                let api = Api::<Trigger>::namespaced(
                    client.clone(),
                    &trigger.namespace().unwrap_or_default(),
                );
                // First from the object at hand: most calls change nothing and cost nothing.
                let mut object = trigger.clone();
                for attempt in 1..=ATTEMPTS {
                    let before = object.status.clone().unwrap_or_default();
                    let mut status = before.clone();
                    change(&mut status);
                    if status == before && object.status.is_some() {
                        return Ok(false);
                    }
                    let patch = serde_json::json!({
                        "apiVersion": Trigger::api_version(&()),
                        "kind": Trigger::kind(&()),
                        "metadata": {
                            "name": object.name_any(),
                            "resourceVersion": object.resource_version(),
                        },
                        "status": status,
                    });
                    let params = PatchParams::apply(FIELD_MANAGER).force();
                    match api
                        .patch_status(&object.name_any(), &params, &Patch::Apply(&patch))
                        .await
                    {
                        Ok(_) => {
                            log_changes(&key(trigger), &before, &status);
                            return Ok(true);
                        }
                        Err(e) if is_conflict(&e) && attempt < ATTEMPTS => {
                            object = api.get(&object.name_any()).await?;
                        }
                        Err(e) => return Err(e),
                    }
                }
                unreachable!("the last attempt returns")
            }
        }
    }
}

fn log_changes(trigger: &str, before: &TriggerStatus, after: &TriggerStatus) {
    for firing in &after.history {
        let was = before.history.iter().find(|f| same_push(f, firing));
        if was.is_none_or(|w| w.result != firing.result) {
            tracing::info!(
                trigger,
                tag = %firing.tag,
                digest = %firing.digest,
                result = %firing.result,
                latency_ms = firing.latency_ms,
                message = firing.message.as_deref().unwrap_or(""),
                "trigger firing"
            );
        }
    }
    for condition in &after.conditions {
        let was = before
            .conditions
            .iter()
            .find(|c| c.type_ == condition.type_);
        if was.is_none_or(|w| w.status != condition.status || w.reason != condition.reason) {
            tracing::info!(
                trigger,
                condition = %condition.type_,
                status = %condition.status,
                reason = %condition.reason,
                message = %condition.message,
                "trigger condition"
            );
        }
    }
}

/// Two entries for the same push.
pub fn same_push(a: &TriggerFiring, b: &TriggerFiring) -> bool {
    a.tag == b.tag && a.digest == b.digest && a.pushed_at == b.pushed_at
}

/// Adds a firing at the head of the history (once: a second record of the same push
/// changes nothing), marks rollouts it overtakes `Superseded`, and keeps `limit` entries.
pub fn record(status: &mut TriggerStatus, firing: &TriggerFiring, limit: usize) {
    if status.history.iter().any(|f| same_push(f, firing)) {
        return;
    }
    let overtaken = format!(
        "{}@{} was applied before this rollout finished",
        firing.tag, firing.digest
    );
    for older in &mut status.history {
        if older.result == PROGRESSING {
            finish(older, SUPERSEDED, &overtaken);
        }
    }
    status.history.insert(0, firing.clone());
    status.history.truncate(limit.max(1));
}

/// Sets the outcome of a firing still `Progressing`; one already concluded is left alone.
pub fn conclude(status: &mut TriggerStatus, firing: &TriggerFiring, result: &str, message: &str) {
    if let Some(entry) = status
        .history
        .iter_mut()
        .find(|f| same_push(f, firing) && f.result == PROGRESSING)
    {
        finish(entry, result, message);
    }
}

/// Sets the outcome, adding its message to what the firing did.
fn finish(firing: &mut TriggerFiring, result: &str, message: &str) {
    firing.result = result.into();
    firing.finished_at = Some(MicroTime(Timestamp::now()));
    firing.message = Some(match firing.message.take() {
        Some(done) => format!("{done}; {message}"),
        None => message.into(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn firing(tag: &str, second: i64) -> TriggerFiring {
        TriggerFiring {
            tag: tag.into(),
            digest: format!("sha256:{tag}"),
            pushed_at: MicroTime(Timestamp::from_second(second).unwrap()),
            patched_at: None,
            latency_ms: None,
            commit: None,
            revision: None,
            result: PROGRESSING.into(),
            finished_at: None,
            message: None,
            previous_images: Vec::new(),
        }
    }

    #[test]
    fn history_is_newest_first_bounded_and_records_a_push_once() {
        let mut status = TriggerStatus::default();
        for (i, tag) in ["v1", "v2", "v3"].iter().enumerate() {
            record(&mut status, &firing(tag, i as i64), 2);
        }
        record(&mut status, &firing("v3", 2), 2);
        let tags: Vec<&str> = status.history.iter().map(|f| f.tag.as_str()).collect();
        assert_eq!(tags, ["v3", "v2"]);
        assert_eq!(status.history[0].result, PROGRESSING);
        assert_eq!(status.history[1].result, SUPERSEDED, "overtaken by v3");
    }

    #[test]
    fn a_concluded_firing_keeps_its_outcome() {
        let mut status = TriggerStatus::default();
        let v1 = firing("v1", 1);
        record(&mut status, &v1, 10);
        conclude(&mut status, &v1, FAILED, "deadline");
        conclude(&mut status, &v1, SUCCEEDED, "late");
        assert_eq!(status.history[0].result, FAILED);
        assert!(status.history[0].finished_at.is_some());
    }
}
