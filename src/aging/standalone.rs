//! AgingRules in standalone `berth serve --config-dir DIR`, read from the folder's YAML.
//!
//! A rule runs on its schedule, counted from when berth started or the rule last ran,
//! and at once when the value of its `berth.dev/run-now` annotation changes in the
//! file (the value present when berth starts counts as done). Without a cluster there
//! are no workloads to protect: only excluded and immutable tags are kept for reasons
//! other than the policy. Each run is logged with what it deleted and kept, and a
//! garbage collection follows one that deleted anything.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::ResourceExt;

use super::{AgingPolicy, DEFAULT_SCHEDULE, InUse, RUN_NOW, Scope};
use crate::api::AgingRule;
use crate::config::ConfigFolder;
use crate::gc::Collector;
use crate::policy::Policy;
use crate::schedule::Schedule;
use crate::storage::Store;

const POLL: Duration = Duration::from_secs(2);

struct RuleState {
    since: Timestamp,
    handled: Option<String>,
    warned: bool,
}

/// Runs the folder's AgingRules, forever.
pub async fn run(folder: ConfigFolder, store: Store, policy: Policy, gc: Arc<Collector>) {
    let mut states: HashMap<String, RuleState> = HashMap::new();
    let mut fingerprint = None;
    let mut rules: Vec<AgingRule> = Vec::new();
    loop {
        let now_print = folder.fingerprint().ok();
        if now_print.is_none() || now_print != fingerprint {
            fingerprint = now_print;
            rules = folder.load().aging_rules;
        }
        let now = Timestamp::now();
        for rule in &rules {
            let name = rule.name_any();
            let request = rule.annotations().get(RUN_NOW).cloned();
            let state = states.entry(name.clone()).or_insert_with(|| RuleState {
                since: now,
                handled: request.clone(),
                warned: false,
            });
            let text = rule.spec.schedule.as_deref().unwrap_or(DEFAULT_SCHEDULE);
            let schedule = match Schedule::parse(text) {
                Ok(s) => s,
                Err(e) => {
                    if !std::mem::replace(&mut state.warned, true) {
                        tracing::warn!(rule = %name, error = %e, "AgingRule not run: its schedule is invalid");
                    }
                    continue;
                }
            };
            let requested = request.is_some() && request != state.handled;
            let scheduled = schedule.next_after(state.since).is_some_and(|at| at <= now);
            if !requested && !scheduled {
                continue;
            }
            state.since = now;
            state.handled = request;
            run_rule(rule, &store, &policy, &gc).await;
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn run_rule(rule: &AgingRule, store: &Store, policy: &Policy, gc: &Collector) {
    let name = rule.name_any();
    let spec = &rule.spec;
    if policy.current().namespace(&spec.namespace).is_none() {
        tracing::warn!(rule = %name, namespace = %spec.namespace, "AgingRule not run: its berth Namespace does not exist");
        return;
    }
    let aging_policy = AgingPolicy::from_spec(spec);
    let scope = Scope::from_spec(spec);
    let report = match super::run(
        store,
        policy,
        &scope,
        &aging_policy,
        &InUse::default(),
        spec.dry_run,
    )
    .await
    {
        Ok(report) => report,
        Err(e) => {
            tracing::warn!(rule = %name, error = %e, "aging run failed");
            return;
        }
    };
    for t in &report.deleted {
        tracing::info!(rule = %name, repository = %t.repository, tag = %t.tag, digest = %t.digest, dry_run = spec.dry_run, "aging: tag deleted (or would be, in a dry run)");
    }
    for t in report
        .kept
        .iter()
        .filter(|t| matches!(t.reason, Some("Immutable" | "Excluded" | "Moved")))
    {
        tracing::info!(rule = %name, repository = %t.repository, tag = %t.tag, reason = t.reason.unwrap_or_default(), "aging: tag kept");
    }
    let mut freed = 0;
    if !spec.dry_run && !report.deleted.is_empty() {
        match gc.run("aging").await {
            Ok(r) => freed = r.bytes_freed,
            Err(e) => {
                tracing::warn!(rule = %name, error = %e, "garbage collection after aging failed")
            }
        }
    }
    tracing::info!(
        rule = %name,
        dry_run = spec.dry_run,
        repositories = report.repositories,
        deleted = report.deleted.len(),
        kept = report.kept.len(),
        manifests_deleted = report.manifests_deleted,
        bytes_freed = freed,
        "aging run finished"
    );
}
