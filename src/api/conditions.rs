//! Status conditions: the standard `metav1.Condition` list, keyed by `type`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The condition every berth resource reports.
pub const READY: &str = "Ready";

/// Schema extension making `conditions` a list-map keyed by `type`, as Kubernetes' own APIs do,
/// so server-side apply merges conditions by type.
pub fn list_map_by_type(schema: &mut schemars::Schema) {
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
}

/// Sets a condition, keeping its transition time when the status did not change.
pub fn set(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(existing) => {
            if existing.status == new.status {
                new.last_transition_time = existing.last_transition_time.clone();
            }
            *existing = new;
        }
        None => conditions.push(new),
    }
}

/// A `Ready` condition. `reason` is CamelCase, `message` is for a person.
pub fn ready(
    ready: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: READY.to_string(),
        status: if ready { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: Time(jiff::Timestamp::now()),
    }
}

/// Whether the conditions say `Ready=True`.
pub fn is_ready(conditions: &[Condition]) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == READY && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setting_the_same_status_keeps_the_transition_time() {
        let mut conditions = Vec::new();
        let first = ready(false, "Pending", "waiting", Some(1));
        let first_time = first.last_transition_time.clone();
        set(&mut conditions, first);
        std::thread::sleep(std::time::Duration::from_millis(2));
        set(
            &mut conditions,
            ready(false, "StillPending", "waiting more", Some(2)),
        );
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, first_time);
        assert_eq!(conditions[0].reason, "StillPending");
        set(&mut conditions, ready(true, "Reconciled", "done", Some(2)));
        assert_ne!(conditions[0].last_transition_time, first_time);
        assert!(is_ready(&conditions));
    }
}
