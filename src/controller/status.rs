//! Status in one place: what a reconcile found ([`Health`]) becomes the conditions every
//! GitOps tool reads the same way, and is written with server-side apply.
//!
//! The contract, for all five kinds (kstatus, Flux, `kubectl wait`, Argo CD's health
//! scripts in `deploy/argocd/` all rely on it):
//! - `status.observedGeneration` is the generation the status describes, always set;
//! - `Ready` is always present: `True` when the resource is in effect;
//! - `Reconciling=True` while work is under way or the resource waits for something
//!   that will come by itself (another resource applied later, a rollout);
//! - `Stalled=True`, with a reason, when it cannot make progress until someone changes
//!   a spec (an invalid regex, an unusable name): kstatus calls that `Failed`;
//! - neither, with `Ready=False`, for a resource switched off on purpose (a disabled
//!   Trigger): settled, and Argo CD shows it `Suspended`.
//!
//! A reconciler builds a [`Health`], turns it into conditions with
//! [`Health::conditions`], puts them in its status and calls [`apply`]. Condition
//! changes are announced as Kubernetes Events by [`super::events`].

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::events::Announcer;
use super::{Error, FIELD_MANAGER};
use crate::api::conditions;

/// The kstatus condition for work under way; absent (not `False`) when there is none.
pub const RECONCILING: &str = "Reconciling";
/// The kstatus condition for a terminal error; absent (not `False`) when there is none.
pub const STALLED: &str = "Stalled";

/// What one reconcile found: the `Ready` verdict and whether work is under way or stuck.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    ready: bool,
    reason: String,
    message: String,
    /// `Reconciling=True` with this reason and message.
    reconciling: Option<(String, String)>,
    stalled: bool,
}

impl Health {
    /// In effect: `Ready=True`.
    pub fn ready(reason: &str, message: impl Into<String>) -> Self {
        Health {
            ready: true,
            reason: reason.into(),
            message: message.into(),
            reconciling: None,
            stalled: false,
        }
    }

    /// Not in effect yet, and will be without anyone changing this resource (it waits
    /// for another resource, for the registry to load it): `Ready=False` and
    /// `Reconciling=True`, both with `reason`.
    pub fn waiting(reason: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Health {
            ready: false,
            reconciling: Some((reason.into(), message.clone())),
            reason: reason.into(),
            message,
            stalled: false,
        }
    }

    /// Cannot take effect until its spec (or what it names) is changed: `Ready=False`
    /// and `Stalled=True`, both with `reason`.
    pub fn stalled(reason: &str, message: impl Into<String>) -> Self {
        Health {
            ready: false,
            reason: reason.into(),
            message: message.into(),
            reconciling: None,
            stalled: true,
        }
    }

    /// Switched off on purpose, and settled so: `Ready=False`, neither reconciling nor
    /// stalled.
    pub fn suspended(reason: &str, message: impl Into<String>) -> Self {
        Health {
            ready: false,
            reason: reason.into(),
            message: message.into(),
            reconciling: None,
            stalled: false,
        }
    }

    /// Adds work under way to a verdict (a rollout being followed): `Reconciling=True`.
    pub fn working(mut self, reason: &str, message: impl Into<String>) -> Self {
        self.reconciling = Some((reason.into(), message.into()));
        self
    }

    /// The condition list: `previous` with `Ready` set and `Reconciling`/`Stalled` set
    /// or removed; other condition types are kept, and an unchanged condition keeps its
    /// transition time.
    pub fn conditions(&self, previous: &[Condition], generation: Option<i64>) -> Vec<Condition> {
        let mut list = previous.to_vec();
        self.apply_to(&mut list, generation);
        list
    }

    /// Sets the conditions in place (see [`conditions`](Self::conditions)).
    pub fn apply_to(&self, list: &mut Vec<Condition>, generation: Option<i64>) {
        conditions::set(
            list,
            conditions::ready(self.ready, &self.reason, self.message.clone(), generation),
        );
        let reconciling = self
            .reconciling
            .as_ref()
            .map(|(reason, message)| (reason.as_str(), message.clone()));
        set_true_or_remove(list, RECONCILING, reconciling, generation);
        let stalled = self
            .stalled
            .then(|| (self.reason.as_str(), self.message.clone()));
        set_true_or_remove(list, STALLED, stalled, generation);
    }
}

/// kstatus' "abnormal-true" conditions are `True` when they hold and absent otherwise.
fn set_true_or_remove(
    list: &mut Vec<Condition>,
    type_: &str,
    value: Option<(&str, String)>,
    generation: Option<i64>,
) {
    match value {
        None => list.retain(|c| c.type_ != type_),
        Some((reason, message)) => {
            let mut condition = conditions::ready(true, reason, message, generation);
            condition.type_ = type_.to_string();
            conditions::set(list, condition);
        }
    }
}

/// Applies `status` to the object's status subresource, unless it equals `previous`
/// (unchanged figures and conditions compare equal, so a quiet resync writes nothing).
pub async fn apply<K, S>(
    api: &Api<K>,
    name: &str,
    previous: Option<&S>,
    status: &S,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if previous == Some(status) {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Applies `status` to `object` (see [`apply`]) and publishes an Event for each
/// condition whose status or reason changed.
pub async fn write<K, S>(
    api: &Api<K>,
    events: &Announcer,
    object: &K,
    previous: Option<&S>,
    status: &S,
    conditions: impl Fn(&S) -> &[Condition],
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    let name = object.meta().name.clone().unwrap_or_default();
    apply(api, &name, previous, status).await?;
    let before = previous.map(&conditions).unwrap_or_default();
    events
        .condition_changes(object, before, conditions(status))
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'c>(list: &'c [Condition], type_: &str) -> Option<&'c Condition> {
        list.iter().find(|c| c.type_ == type_)
    }

    #[test]
    fn ready_clears_reconciling_and_stalled() {
        let waiting = Health::waiting("NamespaceNotFound", "no namespace").conditions(&[], Some(1));
        assert_eq!(find(&waiting, "Ready").unwrap().status, "False");
        assert_eq!(find(&waiting, RECONCILING).unwrap().status, "True");
        assert_eq!(
            find(&waiting, RECONCILING).unwrap().reason,
            "NamespaceNotFound"
        );
        assert!(find(&waiting, STALLED).is_none());

        let ready = Health::ready("Reconciled", "fine").conditions(&waiting, Some(2));
        assert_eq!(find(&ready, "Ready").unwrap().status, "True");
        assert_eq!(find(&ready, "Ready").unwrap().observed_generation, Some(2));
        assert!(find(&ready, RECONCILING).is_none());
        assert!(find(&ready, STALLED).is_none());
    }

    #[test]
    fn stalled_is_true_with_the_reason_and_ready_false() {
        let list = Health::stalled("InvalidRegex", "bad").conditions(&[], Some(3));
        let stalled = find(&list, STALLED).unwrap();
        assert_eq!(
            (stalled.status.as_str(), stalled.reason.as_str()),
            ("True", "InvalidRegex")
        );
        assert_eq!(find(&list, "Ready").unwrap().status, "False");
        assert!(find(&list, RECONCILING).is_none());
    }

    #[test]
    fn suspended_is_not_ready_and_settled_and_work_is_reconciling() {
        let list = Health::suspended("Disabled", "off").conditions(&[], None);
        assert_eq!(list.len(), 1, "only Ready: {list:?}");
        let list = Health::ready("Watching", "on")
            .working("RollingOut", "v2")
            .conditions(&list, None);
        assert_eq!(find(&list, "Ready").unwrap().status, "True");
        assert_eq!(find(&list, RECONCILING).unwrap().reason, "RollingOut");
    }

    #[test]
    fn other_condition_types_are_kept() {
        let mut other = conditions::ready(true, "Mine", "someone else's", None);
        other.type_ = "Custom".into();
        let list = Health::ready("Reconciled", "fine").conditions(&[other], None);
        assert!(find(&list, "Custom").is_some());
    }
}
