//! The SyncRule reconciler: resolves a rule's credentials (a Secret in berth's own
//! namespace, `kubernetes.io/dockerconfigjson` or basic-auth) and CA bundle (a ConfigMap
//! or Secret there), hands the rule to the replication engine ([`crate::sync`]), takes a
//! new `berth.dev/sync-now` annotation value as a request to run now, and writes what the
//! engine reports — the last tasks, `Ready` with a precise reason, `Stalled` when only a
//! change to the resource or its Secret can help. Runs on the leader only, as do the
//! rules themselves; the engine's state changes requeue the rule at once.

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};

use super::{Context, Error, RESYNC, on_error, status};
use crate::api::{CaBundleKind, SecretReference, SyncRule, SyncRuleStatus, SyncRun};
use crate::sync::credentials::from_secret_data;
use crate::sync::standalone::{SYNC_NOW_ANNOTATION, bundle_from, secret_data};
use crate::sync::{Health, RuleConfig, RuleState};

/// Why a rule cannot run, until someone changes it (or what it refers to).
struct Refusal {
    reason: &'static str,
    message: String,
}

fn refused(reason: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        reason,
        message: message.into(),
    }
}

struct SyncContext {
    ctx: Arc<Context>,
    rules: reflector::Store<SyncRule>,
    events: Recorder,
}

/// At most this many Events per reconcile (the rest are in status.runs).
const EVENTS_PER_RECONCILE: usize = 5;

pub fn controller(
    client: Client,
    config: watcher::Config,
    ctx: Arc<Context>,
) -> impl Stream<Item = Result<(ObjectRef<SyncRule>, Action), impl std::fmt::Display>> {
    let controller = Controller::new(Api::<SyncRule>::all(client.clone()), config);
    let rules = controller.store();
    let engine = ctx.sync.clone();
    // The engine's news (a copy, a failure, recovery) is written to status at once
    // (rules whose status did not change write nothing).
    let changes = futures::stream::unfold(engine.changes(), |mut rx| async move {
        match rx.recv().await {
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Some(((), rx)),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
        }
    });
    let secrets = Api::<Secret>::namespaced(client.clone(), &ctx.own_namespace);
    let maps = Api::<ConfigMap>::namespaced(client, &ctx.own_namespace);
    let sync_ctx = Arc::new(SyncContext {
        ctx: ctx.clone(),
        rules: rules.clone(),
        events: Recorder::new(
            ctx.client.clone(),
            Reporter {
                controller: super::FIELD_MANAGER.into(),
                instance: None,
            },
        ),
    });
    // Deleted rules stop: nothing reconciles a rule that is gone, so prune by the cache.
    let prune = {
        let rules = rules.clone();
        let engine = engine.clone();
        futures::stream::once(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                if rules.wait_until_ready().await.is_ok() {
                    let names: Vec<String> = rules.state().iter().map(|r| r.name_any()).collect();
                    engine.retain(&names);
                }
            }
        })
        .filter_map(|()| async { None })
    };
    let reconciles = controller
        .watches(
            secrets,
            watcher::Config::default(),
            referring(rules.clone(), |r, name| {
                r.spec
                    .remote
                    .credentials_secret
                    .as_ref()
                    .is_some_and(|s| s.name == name)
                    || r.spec
                        .remote
                        .ca_bundle
                        .as_ref()
                        .is_some_and(|c| c.kind == CaBundleKind::Secret && c.name == name)
            }),
        )
        .watches(
            maps,
            watcher::Config::default(),
            referring(rules, |r, name| {
                r.spec
                    .remote
                    .ca_bundle
                    .as_ref()
                    .is_some_and(|c| c.kind == CaBundleKind::ConfigMap && c.name == name)
            }),
        )
        .reconcile_all_on(changes)
        // A rule applied before its berth Namespace is Ready as soon as that appears.
        .reconcile_all_on(ctx.policy.namespace_changes())
        .shutdown_on_signal()
        .run(
            reconcile,
            |r, e, c: Arc<SyncContext>| on_error("SyncRule", r.name_any(), e, &c.ctx),
            sync_ctx,
        );
    futures::stream::select(reconciles, prune)
}

/// Maps a Secret or ConfigMap to the rules that use it.
fn referring<K: kube::Resource>(
    rules: reflector::Store<SyncRule>,
    uses: impl Fn(&SyncRule, &str) -> bool + Send + Sync + 'static,
) -> impl Fn(K) -> Vec<ObjectRef<SyncRule>> + Send + Sync + 'static {
    move |object: K| {
        let name = object.meta().name.clone().unwrap_or_default();
        rules
            .state()
            .iter()
            .filter(|r| uses(r, &name))
            .map(|r| ObjectRef::from_obj(r.as_ref()))
            .collect()
    }
}

async fn reconcile(rule: Arc<SyncRule>, sctx: Arc<SyncContext>) -> Result<Action, Error> {
    let ctx = &sctx.ctx;
    let _ = &sctx.rules;
    let _timer = ctx.metrics.start("SyncRule");
    let name = rule.name_any();
    let previous = rule.status.as_ref();
    let mut last_sync_now = previous.and_then(|s| s.last_sync_now.clone());
    let outcome = match resolve(&rule, ctx).await? {
        Ok(config) => {
            ctx.sync.apply(config);
            if let Some(seen) = &last_sync_now {
                ctx.sync.remember_request(&name, seen);
            }
            if let Some(value) = rule.annotations().get(SYNC_NOW_ANNOTATION)
                && last_sync_now.as_ref() != Some(value)
            {
                if ctx.sync.run_now(&name, Some(value)) {
                    tracing::info!(rule = %name, request = %value, "manual sync requested");
                }
                last_sync_now = Some(value.clone());
            }
            Ok(())
        }
        Err(refusal) => {
            ctx.sync.retain(
                &sctx
                    .rules
                    .state()
                    .iter()
                    .map(|r| r.name_any())
                    .filter(|n| *n != name)
                    .collect::<Vec<_>>(),
            );
            Err(refusal)
        }
    };
    let generation = rule.metadata.generation;
    let state = ctx.sync.state(&name).unwrap_or_default();
    let health = match &outcome {
        // What another resource applied later provides (GitOps applies in any order)
        // is waited for; anything else needs the rule itself changed.
        Err(r)
            if matches!(
                r.reason,
                "NamespaceNotFound" | "SecretNotFound" | "CABundleNotFound"
            ) =>
        {
            status::Health::waiting(r.reason, r.message.clone())
        }
        Err(r) => status::Health::stalled(r.reason, r.message.clone()),
        Ok(()) => match &state.health {
            Health::Ok => status::Health::ready("Synced", synced_message(&rule, &state)),
            Health::Starting => status::Health::waiting(
                "Connecting",
                format!("comparing with {}", rule.spec.remote.url),
            ),
            Health::Disabled => {
                status::Health::ready("Disabled", "the rule is disabled (spec.enabled: false)")
            }
            // An unreachable remote or failing copies: retried with backoff, so it
            // is work under way rather than a terminal error.
            Health::Failing { reason, message } => status::Health::waiting(reason, message.clone()),
        },
    };
    let conditions = health.conditions(previous.map_or(&[][..], |s| &s.conditions), generation);
    let status = SyncRuleStatus {
        observed_generation: generation,
        conditions,
        runs: match outcome {
            // Records live in the engine; a refused rule keeps what it had.
            Err(_) => previous.map(|s| s.runs.clone()).unwrap_or_default(),
            Ok(()) if state.records.is_empty() => {
                previous.map(|s| s.runs.clone()).unwrap_or_default()
            }
            Ok(()) => runs_of(&state),
        },
        last_success: state
            .last_success
            .map(Time)
            .or_else(|| previous.and_then(|s| s.last_success.clone())),
        last_sync_now,
    };
    publish_events(&sctx.events, &rule, previous, &status).await;
    status::write(
        &Api::<SyncRule>::all(ctx.client.clone()),
        &ctx.events,
        rule.as_ref(),
        previous,
        &status,
        |s| &s.conditions,
    )
    .await?;
    ctx.backoff.reset(&name);
    Ok(Action::requeue(RESYNC))
}

fn synced_message(rule: &SyncRule, state: &RuleState) -> String {
    let conflicts = state
        .records
        .iter()
        .filter(|r| r.result == "Conflict")
        .count();
    let base = format!("{} reachable; in sync", rule.spec.remote.url);
    match conflicts {
        0 => base,
        n => format!("{base} except {n} conflicting tag(s) left as they are (see status.runs)"),
    }
}

fn runs_of(state: &RuleState) -> Vec<SyncRun> {
    state
        .records
        .iter()
        .map(|r| SyncRun {
            started: Time(r.started),
            reference: format!("{}:{}", r.repository, r.tag),
            digest: r.digest.clone(),
            result: r.result.to_string(),
            trigger: Some(r.kind.as_str().to_string()),
            message: r.message.clone(),
            duration_ms: r.duration.as_millis().min(i64::MAX as u128) as i64,
            bytes: r.bytes.min(i64::MAX as u64) as i64,
        })
        .collect()
}

/// The engine's view of the rule, or why it cannot have one.
async fn resolve(rule: &SyncRule, ctx: &Context) -> Result<Result<RuleConfig, Refusal>, Error> {
    let name = rule.name_any();
    if ctx
        .policy
        .current()
        .namespace(&rule.spec.namespace)
        .is_none()
    {
        return Ok(Err(refused(
            "NamespaceNotFound",
            format!("berth Namespace {:?} does not exist", rule.spec.namespace),
        )));
    }
    let remote = &rule.spec.remote;
    let credentials = match &remote.credentials_secret {
        None => None,
        Some(reference) => {
            let secret = match own_secret(ctx, reference).await? {
                Ok(s) => s,
                Err(r) => return Ok(Err(r)),
            };
            match from_secret_data(secret.type_.as_deref(), &secret_data(&secret), &remote.url) {
                Ok(c) => Some(c),
                Err(e) => {
                    return Ok(Err(refused(
                        "InvalidCredentials",
                        format!(
                            "credentials Secret {}/{}: {e}",
                            ctx.own_namespace, reference.name
                        ),
                    )));
                }
            }
        }
    };
    let ca_bundle = match &remote.ca_bundle {
        None => None,
        Some(r) => {
            let (map, secret) = match r.kind {
                CaBundleKind::ConfigMap => (
                    Api::<ConfigMap>::namespaced(ctx.client.clone(), &ctx.own_namespace)
                        .get_opt(&r.name)
                        .await?,
                    None,
                ),
                CaBundleKind::Secret => (
                    None,
                    Api::<Secret>::namespaced(ctx.client.clone(), &ctx.own_namespace)
                        .get_opt(&r.name)
                        .await?,
                ),
            };
            match bundle_from(r.kind, &r.key, map.as_ref(), secret.as_ref()) {
                Some(pem) => Some(pem),
                None => {
                    return Ok(Err(refused(
                        "CABundleNotFound",
                        format!(
                            "CA bundle {:?} {}/{} with key {:?} does not exist",
                            r.kind, ctx.own_namespace, r.name, r.key
                        ),
                    )));
                }
            }
        }
    };
    let since = rule
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or_else(jiff::Timestamp::now);
    Ok(
        RuleConfig::from_spec(&name, &rule.spec, credentials, ca_bundle, since)
            .map_err(|m| refused("InvalidSpec", m)),
    )
}

/// A Secret in berth's own namespace; berth reads no Secret elsewhere.
async fn own_secret(
    ctx: &Context,
    reference: &SecretReference,
) -> Result<Result<Secret, Refusal>, Error> {
    if let Some(ns) = &reference.namespace
        && *ns != ctx.own_namespace
    {
        return Ok(Err(refused(
            "SecretNamespaceRefused",
            format!(
                "credentials Secret {ns}/{}: berth reads Secrets only in its own namespace {:?}",
                reference.name, ctx.own_namespace
            ),
        )));
    }
    Ok(
        match Api::<Secret>::namespaced(ctx.client.clone(), &ctx.own_namespace)
            .get_opt(&reference.name)
            .await?
        {
            Some(s) => Ok(s),
            None => Err(refused(
                "SecretNotFound",
                format!(
                    "credentials Secret {}/{} does not exist",
                    ctx.own_namespace, reference.name
                ),
            )),
        },
    )
}

/// Kubernetes Events for what changed since the last status: new tasks (a copy, a
/// conflict, a failure). Best effort: status holds the same.
async fn publish_events(
    recorder: &Recorder,
    rule: &SyncRule,
    previous: Option<&SyncRuleStatus>,
    status: &SyncRuleStatus,
) {
    let last_seen = previous.and_then(|p| p.runs.first());
    let events: Vec<Event> = status
        .runs
        .iter()
        .take_while(|r| Some(*r) != last_seen)
        .take(EVENTS_PER_RECONCILE)
        .map(|r| {
            let (type_, reason) = match r.result.as_str() {
                "Succeeded" => (EventType::Normal, "Copied"),
                "Conflict" => (EventType::Warning, "Conflict"),
                _ => (EventType::Warning, "CopyFailed"),
            };
            let note = match &r.message {
                Some(m) => format!(
                    "{} ({}): {m}",
                    r.reference,
                    r.trigger.as_deref().unwrap_or("")
                ),
                None => format!(
                    "{} {} ({}, {} bytes, {} ms)",
                    r.reference,
                    r.digest.as_deref().unwrap_or(""),
                    r.trigger.as_deref().unwrap_or(""),
                    r.bytes,
                    r.duration_ms
                ),
            };
            Event {
                type_,
                reason: reason.into(),
                note: Some(note.chars().take(1000).collect()),
                action: "Sync".into(),
                secondary: None,
            }
        })
        .collect();
    // Changes of Ready are announced with every other condition by status::write.
    let reference = rule.object_ref(&());
    for event in events {
        if let Err(e) = recorder.publish(&event, &reference).await {
            tracing::debug!(error = %e, "could not publish an Event");
        }
    }
}
