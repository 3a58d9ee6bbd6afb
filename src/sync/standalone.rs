//! SyncRules in standalone `berth serve --config-dir DIR`: the rules come from the
//! folder, and so do their credentials and CA bundles — a `v1` Secret in the folder
//! named by `remote.credentialsSecret` (a `kubernetes.io/dockerconfigjson` Secret works
//! as is), a ConfigMap or Secret named by `remote.caBundle`. A new value of the
//! `berth.dev/sync-now` annotation in the file starts a manual run. Status goes to the
//! log (each copy, each change of health) and to the metrics.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;

use super::client::Credentials;
use super::credentials::from_secret_data;
use super::{Engine, Health, RuleConfig};
use crate::api::{CaBundleKind, SyncRule};
use crate::config::{ConfigFolder, LoadedResources};
use crate::storage::Store;

/// The annotation whose new value starts a manual run.
pub const SYNC_NOW_ANNOTATION: &str = "berth.dev/sync-now";

const POLL: Duration = Duration::from_secs(1);

/// A Secret's data with its `stringData` merged in (as the apiserver would).
pub fn secret_data(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in secret.string_data.iter().flatten() {
        data.insert(k.clone(), v.clone().into_bytes());
    }
    data
}

/// A PEM bundle from a ConfigMap (`data` or `binaryData`) or a Secret.
pub fn bundle_from(
    kind: CaBundleKind,
    key: &str,
    config_map: Option<&ConfigMap>,
    secret: Option<&Secret>,
) -> Option<String> {
    match kind {
        CaBundleKind::ConfigMap => {
            let map = config_map?;
            map.data
                .as_ref()
                .and_then(|d| d.get(key).cloned())
                .or_else(|| {
                    map.binary_data
                        .as_ref()
                        .and_then(|d| d.get(key))
                        .and_then(|b| String::from_utf8(b.0.clone()).ok())
                })
        }
        CaBundleKind::Secret => secret_data(secret?)
            .get(key)
            .and_then(|b| String::from_utf8(b.clone()).ok()),
    }
}

/// Resolves `rule` against the folder's Secrets and ConfigMaps.
async fn resolve(
    rule: &SyncRule,
    loaded: &LoadedResources,
    store: &Store,
) -> Result<RuleConfig, String> {
    let name = rule.name_any();
    let remote = &rule.spec.remote;
    let credentials: Option<Credentials> = match &remote.credentials_secret {
        None => None,
        Some(reference) => {
            let secret = loaded
                .secrets
                .iter()
                .find(|s| s.name_any() == reference.name)
                .ok_or_else(|| {
                    format!(
                        "credentials Secret {:?} is not in the config folder",
                        reference.name
                    )
                })?;
            Some(
                from_secret_data(secret.type_.as_deref(), &secret_data(secret), &remote.url)
                    .map_err(|e| format!("credentials Secret {:?}: {e}", reference.name))?,
            )
        }
    };
    let ca_bundle = match &remote.ca_bundle {
        None => None,
        Some(r) => Some(
            bundle_from(
                r.kind,
                &r.key,
                loaded.config_maps.iter().find(|m| m.name_any() == r.name),
                loaded.secrets.iter().find(|s| s.name_any() == r.name),
            )
            .ok_or_else(|| {
                format!(
                    "CA bundle {:?} {:?} with key {:?} is not in the config folder",
                    r.kind, r.name, r.key
                )
            })?,
        ),
    };
    let since = store
        .sync_rule_since(&name)
        .await
        .map_err(|e| format!("reading when the rule was first seen: {e}"))?;
    RuleConfig::from_spec(&name, &rule.spec, credentials, ca_bundle, since)
}

/// Runs the folder's SyncRules on `engine`. Never returns. `first_pass` is told once
/// the folder's rules have been applied the first time: a push that arrives before
/// that would find no rule listening for it.
pub async fn run(
    folder: ConfigFolder,
    engine: Arc<Engine>,
    store: Store,
    mut first_pass: Option<tokio::sync::oneshot::Sender<()>>,
) {
    let mut changes = engine.changes();
    let mut applied: Option<String> = None;
    let mut requests: HashMap<String, String> = HashMap::new();
    let mut reported: HashMap<String, (Health, Option<(jiff::Timestamp, String)>)> = HashMap::new();
    let mut poll = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            _ = poll.tick() => {
                let fingerprint = folder.fingerprint().ok();
                if fingerprint.is_some() && fingerprint == applied {
                    continue;
                }
                let loaded = {
                    let folder = ConfigFolder::new(folder.dir());
                    match tokio::task::spawn_blocking(move || folder.load()).await {
                        Ok(l) => l,
                        Err(_) => continue,
                    }
                };
                let mut names = Vec::new();
                for rule in &loaded.sync_rules {
                    let name = rule.name_any();
                    names.push(name.clone());
                    match resolve(rule, &loaded, &store).await {
                        Ok(config) => {
                            tracing::info!(rule = %name, direction = config.direction_label(), remote = %config.remote_url, "sync rule loaded from the config folder");
                            engine.apply(config);
                        }
                        Err(e) => {
                            tracing::error!(rule = %name, error = %e, "sync rule cannot run");
                            eprintln!("berth: SyncRule {name}: {e}");
                            engine.retain(&names[..names.len() - 1]);
                            names.pop();
                            continue;
                        }
                    }
                    if let Some(value) = rule.annotations().get(SYNC_NOW_ANNOTATION) {
                        let first = !requests.contains_key(&name);
                        if requests.get(&name) != Some(value) {
                            requests.insert(name.clone(), value.clone());
                            // The value present at start was handled before the restart.
                            if first {
                                engine.remember_request(&name, value);
                            } else if engine.run_now(&name, Some(value)) {
                                tracing::info!(rule = %name, request = %value, "manual sync requested");
                            }
                        }
                    }
                }
                engine.retain(&names);
                applied = fingerprint;
                if let Some(done) = first_pass.take() {
                    let _ = done.send(());
                }
            }
            changed = changes.recv() => {
                let Ok(name) = changed else { continue };
                let Some(state) = engine.state(&name) else { continue };
                let (health, seen) = reported.entry(name.clone()).or_insert((Health::Starting, None));
                if *health != state.health {
                    match &state.health {
                        Health::Failing { reason, message } => tracing::warn!(rule = %name, reason, %message, "sync rule not ready"),
                        h => tracing::info!(rule = %name, health = ?h, "sync rule ready"),
                    }
                    *health = state.health.clone();
                }
                // Log the records added since the last report, oldest first.
                let fresh: Vec<_> = state
                    .records
                    .iter()
                    .take_while(|r| seen.as_ref() != Some(&(r.started, r.tag.clone())))
                    .collect();
                for r in fresh.iter().rev() {
                    tracing::info!(rule = %name, result = r.result, repository = %r.repository, tag = %r.tag, digest = ?r.digest, bytes = r.bytes, message = ?r.message, "sync task");
                }
                if let Some(newest) = state.records.front() {
                    *seen = Some((newest.started, newest.tag.clone()));
                }
            }
        }
    }
}
