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
