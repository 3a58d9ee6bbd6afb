//! berth against a real Kubernetes control plane (scripts/control-plane/): one control
//! plane per run of this binary, shared by its tests, each test in its own Kubernetes
//! namespace. Without the control-plane binaries the tests skip (fail under CI=true).

#[path = "../common/mod.rs"]
mod common;

mod aging;
mod argocd_e2e;
mod auth;
mod chart;
mod cluster;
mod control_plane;
mod crds;
mod git_server;
mod gitops;
mod images;
mod kubectl_output;
#[allow(
    dead_code,
    reason = "shared with the storage suite, which uses all of it"
)]
#[path = "../storage/minio_server.rs"]
mod minio_server;
mod operator;
mod reconcile;
mod resources;
mod scale_out;
#[allow(dead_code, reason = "shared with the storage suite")]
#[path = "../storage/sigv4.rs"]
mod sigv4;
mod ssh_server;
mod sync;
mod triggers;
mod write_back;
