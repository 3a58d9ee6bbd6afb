//! Which tags of one repository an aging policy deletes, and why the others stay.
//! Pure: no storage, no cluster, so every rule is tested on its own.

use jiff::Timestamp;
use serde::Serialize;

use crate::policy::glob_matches;

/// What an AgingRule asks for, without the Kubernetes wrapping.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgingPolicy {
    /// Keep tags pushed within this many days.
    pub keep_days: Option<u32>,
    /// Keep this many most recently pushed tags.
    pub keep_count: Option<u32>,
    /// Tags the rule may delete (glob patterns); all when empty.
    pub include: Vec<String>,
    /// Tags always kept (glob patterns), e.g. `latest`, `v*`.
    pub exclude: Vec<String>,
}

/// A tag as found in storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagState {
    pub tag: String,
    pub digest: String,
    pub pushed: Timestamp,
}

/// Why a tag stays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", content = "detail")]
pub enum KeepReason {
    /// Not matched by the rule's `tags.include`.
    NotIncluded,
    /// Matched by `tags.exclude`: always kept.
    Excluded(String),
    /// Pushed within `keepDays`.
    Recent,
    /// One of the newest `keepCount`.
    AmongNewest,
    /// A running workload uses it (which one).
    InUse(String),
    /// Made immutable by this pattern: it can never be deleted.
    Immutable(String),
    /// Pushed again (to another digest) while the rule ran: decided again next run.
    Moved,
}

impl KeepReason {
    /// The short name status and logs show.
    pub fn name(&self) -> &'static str {
        match self {
            KeepReason::NotIncluded => "NotIncluded",
            KeepReason::Excluded(_) => "Excluded",
            KeepReason::Recent => "Recent",
            KeepReason::AmongNewest => "AmongNewest",
            KeepReason::InUse(_) => "InUse",
            KeepReason::Immutable(_) => "Immutable",
            KeepReason::Moved => "Moved",
        }
    }

    pub fn message(&self) -> String {
        match self {
            KeepReason::NotIncluded => "not matched by tags.include".into(),
            KeepReason::Excluded(p) => format!("always kept by tags.exclude pattern {p:?}"),
            KeepReason::Recent => "pushed within keepDays".into(),
            KeepReason::AmongNewest => "among the newest keepCount tags".into(),
            KeepReason::InUse(by) => format!("in use by {by}"),
            KeepReason::Immutable(p) => format!("immutable by pattern {p:?}"),
            KeepReason::Moved => "pushed again while the rule ran".into(),
        }
    }
}

/// The verdict on one tag: `None` deletes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub tag: TagState,
    pub keep: Option<KeepReason>,
}

/// Decides every tag of one repository. `protect` names what must never be deleted
/// (in use, immutable); it is asked only about tags the policy would delete.
pub fn plan(
    policy: &AgingPolicy,
    mut tags: Vec<TagState>,
    now: Timestamp,
    protect: impl Fn(&TagState) -> Option<KeepReason>,
) -> Vec<Decision> {
    // Newest first; ties by name so the outcome does not depend on listing order.
    tags.sort_by(|a, b| b.pushed.cmp(&a.pushed).then_with(|| a.tag.cmp(&b.tag)));
    let mut candidates_seen = 0u32;
    tags.into_iter()
        .map(|tag| {
            let keep = if let Some(p) = policy.exclude.iter().find(|p| glob_matches(p, &tag.tag)) {
                Some(KeepReason::Excluded(p.clone()))
            } else if !policy.include.is_empty()
                && !policy.include.iter().any(|p| glob_matches(p, &tag.tag))
            {
                Some(KeepReason::NotIncluded)
            } else {
                candidates_seen += 1;
                let recent = policy.keep_days.is_some_and(|days| {
                    tag.pushed > now - std::time::Duration::from_secs(u64::from(days) * 86_400)
                });
                let newest = policy.keep_count.is_some_and(|n| candidates_seen <= n);
                if recent {
                    Some(KeepReason::Recent)
                } else if newest {
                    Some(KeepReason::AmongNewest)
                } else {
                    protect(&tag)
                }
            };
            Decision { tag, keep }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-12-04T12:00:00Z".parse().unwrap()
    }

    /// Tags pushed `days_ago` days before now.
    fn tags(list: &[(&str, u64)]) -> Vec<TagState> {
        list.iter()
            .map(|(t, days_ago)| TagState {
                tag: t.to_string(),
                digest: format!("sha256:{t}"),
                pushed: now() - std::time::Duration::from_secs(days_ago * 86_400 + 60),
            })
            .collect()
    }

    fn deleted(decisions: &[Decision]) -> Vec<&str> {
        let mut d: Vec<&str> = decisions
            .iter()
            .filter(|d| d.keep.is_none())
            .map(|d| d.tag.tag.as_str())
            .collect();
        d.sort();
        d
    }

    #[test]
    fn keep_count_keeps_the_newest_by_push_time() {
        let policy = AgingPolicy {
            keep_count: Some(2),
            ..Default::default()
        };
        let all = tags(&[("a", 5), ("b", 1), ("c", 3), ("d", 0)]);
        assert_eq!(deleted(&plan(&policy, all, now(), |_| None)), ["a", "c"]);
    }

    #[test]
    fn keep_days_keeps_what_was_pushed_within_them() {
        let policy = AgingPolicy {
            keep_days: Some(7),
            ..Default::default()
        };
        let all = tags(&[("old", 30), ("week", 7), ("new", 2)]);
        assert_eq!(
            deleted(&plan(&policy, all, now(), |_| None)),
            ["old", "week"]
        );
    }

    #[test]
    fn excluded_tags_are_always_kept_and_do_not_count_toward_keep_count() {
        let policy = AgingPolicy {
            keep_count: Some(1),
            exclude: vec!["latest".into(), "v*".into()],
            ..Default::default()
        };
        let all = tags(&[("latest", 0), ("v1.0", 90), ("c1", 1), ("c2", 2)]);
        let decisions = plan(&policy, all, now(), |_| None);
        assert_eq!(deleted(&decisions), ["c2"]);
        let v1 = decisions.iter().find(|d| d.tag.tag == "v1.0").unwrap();
        assert_eq!(v1.keep, Some(KeepReason::Excluded("v*".into())));
    }

    #[test]
    fn only_included_tags_are_candidates() {
        let policy = AgingPolicy {
            keep_count: Some(1),
            include: vec!["pr-*".into()],
            ..Default::default()
        };
        let all = tags(&[("pr-1", 3), ("pr-2", 2), ("main", 9)]);
        let decisions = plan(&policy, all, now(), |_| None);
        assert_eq!(deleted(&decisions), ["pr-1"]);
        let main = decisions.iter().find(|d| d.tag.tag == "main").unwrap();
        assert_eq!(main.keep, Some(KeepReason::NotIncluded));
    }

    #[test]
    fn protected_tags_are_kept_with_their_reason() {
        let policy = AgingPolicy {
            keep_count: Some(1),
            ..Default::default()
        };
        let all = tags(&[("new", 0), ("running", 5), ("frozen", 6), ("gone", 7)]);
        let decisions = plan(&policy, all, now(), |t| match t.tag.as_str() {
            "running" => Some(KeepReason::InUse("Pod default/web-1".into())),
            "frozen" => Some(KeepReason::Immutable("frozen".into())),
            _ => None,
        });
        assert_eq!(deleted(&decisions), ["gone"]);
    }
}
