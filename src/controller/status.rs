//! Writing status with server-side apply, under berth's field manager.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Error, FIELD_MANAGER};
use crate::api::conditions;

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

/// The `Ready` condition list, keeping the transition time of an unchanged status.
pub fn ready_conditions(
    previous: Option<&Vec<Condition>>,
    ready: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) -> Vec<Condition> {
    let mut list = previous.cloned().unwrap_or_default();
    conditions::set(
        &mut list,
        conditions::ready(ready, reason, message, generation),
    );
    list
}

/// The kstatus `Stalled` condition: set (True) while the resource cannot make progress
/// until someone changes it, absent otherwise.
pub const STALLED: &str = "Stalled";

/// Sets `Stalled=True` with `reason` and `message`, or removes it when `stalled` is `None`.
pub fn set_stalled(
    list: &mut Vec<Condition>,
    stalled: Option<(&str, String)>,
    generation: Option<i64>,
) {
    match stalled {
        None => list.retain(|c| c.type_ != STALLED),
        Some((reason, message)) => {
            let mut condition = conditions::ready(false, reason, message, generation);
            condition.type_ = STALLED.to_string();
            condition.status = "True".to_string();
            conditions::set(list, condition);
        }
    }
}
