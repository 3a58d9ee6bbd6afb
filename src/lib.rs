//! berth: a container registry that runs in Kubernetes as an operator, configured by
//! custom resources, and standalone from a folder of the same resources.
//!
//! Data flows one way: HTTP ([`registry`], and the UI's API in [`web`]) → storage
//! ([`storage`]). Neither registry nor storage depends on Kubernetes.

pub mod aging;
pub mod api;
pub mod auth;
pub mod byte_size;
pub mod config;
pub mod controller;
pub mod gc;
pub mod metrics;
pub mod oci;
pub mod policy;
pub mod registry;
pub mod replicas;
pub mod schedule;
pub mod server;
pub mod storage;
pub mod sync;
pub mod web;
