//! berth as an attacker meets it: floods, probes and races from anyone who can reach
//! the registry, each answered with a precise error at a bounded cost.

#[path = "../common/mod.rs"]
mod common;
#[path = "../auth/registry.rs"]
#[allow(dead_code)]
mod registry;

mod auth;
mod metrics;
mod quotas;
