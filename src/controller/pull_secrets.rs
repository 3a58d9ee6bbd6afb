//! Pull Secrets: a user Secret annotated `berth.dev/pull-secret-namespaces: "a, b"` gets
//! a `kubernetes.io/dockerconfigjson` Secret in each listed Kubernetes namespace, so
//! Deployments there pull from private repositories with `imagePullSecrets`.
//!
//! Least privilege: the Secret holds a pull-only credential that expires (see
//! [`crate::auth::pull_credential`]), never the user's full one, and it is rotated by
//! the periodic sync well before it expires. berth never reads a Secret outside its own
//! namespace: pull Secrets are written with server-side apply (which needs no read),
//! and the list of those written is kept in a ConfigMap in berth's namespace, so the
//! ones no longer wanted are deleted by name. The content is deterministic within a
//! rotation window, so replicas applying it at once agree.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::auth::key::SigningKey;
use crate::auth::pull_credential;
use crate::config::user_secrets::user_from_secret;

/// The ConfigMap (in berth's namespace) listing the pull Secrets berth wrote.
pub const RECORD: &str = "berth-pull-secrets";
const RECORD_KEY: &str = "written";

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
    /// berth's own namespace, where the record of written pull Secrets is kept.
    pub namespace: String,
    pub key: SigningKey,
    /// The registry as kubelets reach it (`host[:port]`); without it no pull Secret is written.
    pub registry_host: Option<String>,
}

impl PullSecrets {
    /// Makes the pull Secrets match the annotations of `users`, with the credential of
    /// the current rotation window.
    pub async fn sync(&self, users: &[Secret]) {
        let mut wanted: BTreeSet<(String, String)> = BTreeSet::new();
        let now = Timestamp::now();
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
            let credential = pull_credential::issue(&self.key, &user, now);
            let config = docker_config(host, &user.name, &credential);
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
        self.delete_unwanted(wanted).await;
    }

    /// Deletes the pull Secrets written before and no longer wanted, and records what
    /// is written now (with those that could not be deleted, to try again).
    async fn delete_unwanted(&self, wanted: BTreeSet<(String, String)>) {
        let records: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let written = match records.get_opt(RECORD).await {
            Ok(record) => record
                .and_then(|r| r.data)
                .and_then(|d| d.get(RECORD_KEY).map(|w| parse_record(w)))
                .unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %e, "reading the record of pull Secrets failed; stale ones stay until the next sync");
                return;
            }
        };
        let mut keep = wanted;
        for (namespace, name) in written.difference(&keep.clone()) {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => tracing::info!(namespace, name, "deleted a pull Secret no longer wanted"),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    tracing::warn!(namespace, name, error = %e, "deleting a stale pull Secret failed");
                    keep.insert((namespace.clone(), name.clone()));
                }
            }
        }
        if keep == written {
            return;
        }
        let record = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": RECORD,
                "labels": {"app.kubernetes.io/managed-by": "berth"},
            },
            "data": BTreeMap::from([(RECORD_KEY, format_record(&keep))]),
        });
        let params = PatchParams::apply(super::FIELD_MANAGER).force();
        if let Err(e) = records.patch(RECORD, &params, &Patch::Apply(&record)).await {
            tracing::warn!(error = %e, "recording the pull Secrets written failed");
        }
    }
}

/// The `.dockerconfigjson` of a pull Secret.
pub fn docker_config(host: &str, user: &str, credential: &str) -> serde_json::Value {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{credential}"));
    json!({"auths": {host: {"username": user, "password": credential, "auth": auth}}})
}

/// One `namespace/name` a line.
fn format_record(written: &BTreeSet<(String, String)>) -> String {
    written
        .iter()
        .map(|(namespace, name)| format!("{namespace}/{name}\n"))
        .collect()
}

fn parse_record(text: &str) -> BTreeSet<(String, String)> {
    text.lines()
        .filter_map(|line| line.split_once('/'))
        .map(|(namespace, name)| (namespace.to_string(), name.to_string()))
        .collect()
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

    #[test]
    fn the_record_of_written_secrets_reads_back_as_written() {
        let written: BTreeSet<(String, String)> = [
            ("apps".to_string(), "berth-pull-alice".to_string()),
            ("ci".to_string(), "berth-pull-bob".to_string()),
        ]
        .into();
        assert_eq!(parse_record(&format_record(&written)), written);
        assert_eq!(parse_record(""), BTreeSet::new());
    }
}
