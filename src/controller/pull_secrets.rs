//! Pull Secrets: a user Secret annotated `berth.dev/pull-secret-namespaces: "a, b"` gets
//! a `kubernetes.io/dockerconfigjson` Secret in each listed Kubernetes namespace,
//! holding the user's long-lived credential, so Deployments there pull from private
//! repositories with `imagePullSecrets`. The content is deterministic, so replicas
//! applying it at once agree; Secrets no longer wanted are deleted.

use std::collections::BTreeSet;

use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::auth::credentials::Verifier;
use crate::auth::key::SigningKey;
use crate::config::user_secrets::user_from_secret;

pub const NAMESPACES_ANNOTATION: &str = "berth.dev/pull-secret-namespaces";
/// Marks the Secrets berth wrote, with the user they are for.
pub const FOR_LABEL: &str = "berth.dev/pull-secret-for";

/// The name of the pull Secret of `user`.
pub fn secret_name(user: &str) -> String {
    let safe: String = user
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!("berth-pull-{}", safe.trim_matches('-'))
}

/// A label value may hold only some characters: the user name, made safe.
fn label_value(user: &str) -> String {
    let v: String = user
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    v.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

pub struct PullSecrets {
    pub client: Client,
    pub key: SigningKey,
    /// The registry as kubelets reach it (`host[:port]`); without it no pull Secret is written.
    pub registry_host: Option<String>,
}

impl PullSecrets {
    /// Makes the pull Secrets match the annotations of `users`.
    pub async fn sync(&self, users: &[Secret]) {
        let mut wanted: BTreeSet<(String, String)> = BTreeSet::new();
        let verifier = Verifier::new(self.key.clone());
        for secret in users {
            let Some(list) = secret.annotations().get(NAMESPACES_ANNOTATION) else {
                continue;
            };
            let Some(host) = &self.registry_host else {
                tracing::warn!(
                    secret = %secret.name_any(),
                    "pull Secrets are requested, but berth does not know its registry address: set --registry-host"
                );
                continue;
            };
            let Ok(user) = user_from_secret(secret) else {
                continue;
            };
            let credential = verifier.long_lived(&user);
            let auth = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{credential}", user.name));
            let config = json!({"auths": {host: {"username": user.name, "password": credential, "auth": auth}}});
            for namespace in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                let name = secret_name(&user.name);
                wanted.insert((namespace.to_string(), name.clone()));
                let pull = json!({
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {
                        "name": name,
                        "namespace": namespace,
                        "labels": {FOR_LABEL: label_value(&user.name), "app.kubernetes.io/managed-by": "berth"},
                    },
                    "type": "kubernetes.io/dockerconfigjson",
                    "data": {".dockerconfigjson": base64::engine::general_purpose::STANDARD.encode(config.to_string())},
                });
                let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
                let params = PatchParams::apply(super::FIELD_MANAGER).force();
                if let Err(e) = api.patch(&name, &params, &Patch::Apply(&pull)).await {
                    tracing::warn!(namespace, name, error = %e, "writing a pull Secret failed");
                }
            }
        }
        // Pull Secrets whose annotation is gone (or whose user is) are removed.
        let all: Api<Secret> = Api::all(self.client.clone());
        let Ok(existing) = all.list(&ListParams::default().labels(FOR_LABEL)).await else {
            return;
        };
        for secret in existing {
            let namespace = secret.namespace().unwrap_or_default();
            let name = secret.name_any();
            if !wanted.contains(&(namespace.clone(), name.clone())) {
                let api: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
                if let Err(e) = api.delete(&name, &DeleteParams::default()).await {
                    tracing::warn!(namespace, name, error = %e, "deleting a stale pull Secret failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_kubernetes_names_and_labels() {
        assert_eq!(secret_name("alice"), "berth-pull-alice");
        assert_eq!(secret_name("CI Bot@x"), "berth-pull-ci-bot-x");
        assert_eq!(label_value("ci bot"), "ci_bot");
    }
}
