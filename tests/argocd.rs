//! berth's Argo CD health checks (deploy/argocd/resource_customizations/berth.dev/):
//! every `health_test.yaml` case passes under gopher-lua, opened as Argo CD opens
//! scripts from argocd-cm (scripts/gitops-check/); the scripts use no library argocd-cm
//! lacks; and what the chart and the argo-cd values block ship is the same scripts.
//! The testdata are objects read from the real apiserver
//! (`BERTH_UPDATE_TESTDATA=1 cargo test --test k8s kstatus_and_argo_cd` writes them).

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{require_tool, run};

const KINDS: [&str; 5] = [
    "Namespace",
    "Repository",
    "SyncRule",
    "AgingRule",
    "Trigger",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn customizations() -> PathBuf {
    root().join("deploy/argocd/resource_customizations")
}

fn script(kind: &str) -> String {
    let path = customizations()
        .join("berth.dev")
        .join(kind)
        .join("health.lua");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_health_test_case_matches_status_and_message_under_gopher_lua() {
    let Some(tool) = require_tool("berth-gitops-check") else {
        return;
    };
    for kind in KINDS {
        let tests = customizations()
            .join("berth.dev")
            .join(kind)
            .join("health_test.yaml");
        assert!(tests.is_file(), "{} is missing", tests.display());
    }
    let out = run(Command::new(tool).arg("health-tests").arg(customizations()));
    eprintln!("{out}");
    assert!(out.contains(", 0 failed"), "{out}");
}

/// Scripts in argocd-cm get only Lua's base, table and package libraries (and a reduced
/// os): no `string`, so no `string.find` and no method calls on strings (`s:sub(…)`).
#[test]
fn the_health_scripts_use_no_library_argocd_cm_lacks() {
    for kind in KINDS {
        let text = script(kind);
        for (n, line) in text.lines().enumerate() {
            let code = line.split("--").next().unwrap_or_default();
            for library in [
                "string.", "os.", "io.", "math.", "debug.", "utf8.", "require",
            ] {
                assert!(
                    !code.contains(library),
                    "{kind}/health.lua:{}: uses {library}: {line}",
                    n + 1
                );
            }
            let method_call = code
                .char_indices()
                .any(|(i, c)| c == ':' && code[i + 1..].starts_with(|c: char| c.is_alphabetic()));
            assert!(
                !method_call,
                "{kind}/health.lua:{}: a method call needs the string library on strings: {line}",
                n + 1
            );
        }
    }
}

/// The chart's copy (files/argocd-health.lua) and the argo-cd chart values block
/// (deploy/argocd/argocd-cm-values.yaml) carry each kind's script byte for byte, and the
/// chart renders one argocd-cm key per kind.
#[test]
fn the_chart_and_the_argocd_cm_values_ship_the_same_scripts() {
    let chart_copy =
        std::fs::read_to_string(root().join("charts/berth/files/argocd-health.lua")).unwrap();
    let values: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("deploy/argocd/argocd-cm-values.yaml")).unwrap(),
    )
    .unwrap();
    for kind in KINDS {
        let text = script(kind);
        assert_eq!(
            text, chart_copy,
            "charts/berth/files/argocd-health.lua differs from {kind}'s"
        );
        let key = format!("resource.customizations.health.berth.dev_{kind}");
        assert_eq!(
            values["configs"]["cm"][key.as_str()].as_str(),
            Some(text.as_str()),
            "argocd-cm-values.yaml: {key}"
        );
    }
    let Some(helm) = require_tool("helm") else {
        return;
    };
    let chart = root().join("charts/berth");
    let rendered = run(Command::new(helm).args([
        "template",
        "rel",
        chart.to_str().unwrap(),
        "--set",
        "argocd.healthChecks.enabled=true",
        "--set",
        "argocd.healthChecks.configMapName=argocd-cm",
        "--show-only",
        "templates/argocd-health-checks.yaml",
    ]));
    let cm: serde_yaml::Value = serde_yaml::from_str(&rendered).unwrap();
    assert_eq!(cm["metadata"]["name"].as_str(), Some("argocd-cm"));
    assert_eq!(cm["metadata"]["namespace"].as_str(), Some("argocd"));
    for kind in KINDS {
        let key = format!("resource.customizations.health.berth.dev_{kind}");
        assert_eq!(
            cm["data"][key.as_str()].as_str(),
            Some(chart_copy.as_str()),
            "{key}"
        );
    }
}
