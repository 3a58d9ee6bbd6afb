//! Standalone configuration: the same resources as YAML files in a folder.
//! `berth serve --config-dir DIR` loads them at start and whenever a file changes.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::user_secrets::{is_user_secret, user_from_secret};
use crate::api::{AgingRule, Namespace, Repository, SyncRule, Trigger};
use crate::auth::users::{Directory, User, Users};
use crate::oci::RepositoryName;
use crate::policy::Broken;

/// One problem with one resource, located precisely enough to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {resource}: {message}")]
pub struct FolderError {
    pub file: String,
    /// `Kind/name`, or the document's position when it has no name.
    pub resource: String,
    pub message: String,
}

/// Everything a folder declares, with the errors of what could not be loaded.
#[derive(Debug, Default)]
pub struct LoadedResources {
    pub namespaces: Vec<Namespace>,
    pub repositories: Vec<Repository>,
    pub sync_rules: Vec<SyncRule>,
    pub aging_rules: Vec<AgingRule>,
    pub triggers: Vec<Trigger>,
    /// Users: `v1` Secrets labelled `berth.dev/user`, as in a cluster.
    pub users: Vec<User>,
    /// Other `v1` Secrets (a SyncRule's credentials or CA bundle).
    pub secrets: Vec<k8s_openapi::api::core::v1::Secret>,
    /// `v1` ConfigMaps (a SyncRule's CA bundle).
    pub config_maps: Vec<k8s_openapi::api::core::v1::ConfigMap>,
    pub errors: Vec<FolderError>,
    /// What the errors were about, so that it fails closed rather than disappears.
    pub broken: Broken,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    api_version: Option<String>,
    kind: Option<String>,
    metadata: Option<HeaderMeta>,
}

#[derive(Deserialize)]
struct HeaderMeta {
    name: Option<String>,
}

pub struct ConfigFolder {
    dir: PathBuf,
}

fn registry_component_ok(name: &str) -> bool {
    let b = name.as_bytes();
    !name.is_empty()
        && name.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'.' || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && !name.contains("..")
        && !name.contains("--")
        && !name.contains(".-")
        && !name.contains("-.")
}

impl ConfigFolder {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ConfigFolder { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The `.yaml`/`.yml` files of the folder and its subfolders, sorted.
    fn files(&self) -> std::io::Result<Vec<PathBuf>> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
            for entry in std::fs::read_dir(dir)? {
                let path = entry?.path();
                if path.is_dir() {
                    walk(&path, out)?;
                } else if matches!(
                    path.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml")
                ) {
                    out.push(path);
                }
            }
            Ok(())
        }
        let mut files = Vec::new();
        walk(&self.dir, &mut files)?;
        files.sort();
        Ok(files)
    }

    /// A fingerprint of the folder's YAML files (names and contents): it changes exactly
    /// when a reload could give a different result.
    pub fn fingerprint(&self) -> std::io::Result<String> {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        for file in self.files()? {
            h.update(file.to_string_lossy().as_bytes());
            h.update(std::fs::read(&file)?);
        }
        Ok(hex::encode(h.finalize()))
    }

    pub fn load(&self) -> LoadedResources {
        let mut loaded = LoadedResources::default();
        let files = match self.files() {
            Ok(f) => f,
            Err(e) => {
                loaded.errors.push(FolderError {
                    file: self.dir.display().to_string(),
                    resource: "-".into(),
                    message: format!("cannot read the config folder: {e}"),
                });
                loaded.broken.unattributed = true;
                return loaded;
            }
        };
        for file in files {
            let shown = file.display().to_string();
            match std::fs::read_to_string(&file) {
                Ok(text) => load_file(&shown, &text, &mut loaded),
                Err(e) => {
                    loaded.errors.push(FolderError {
                        file: shown,
                        resource: "-".into(),
                        message: format!("cannot read: {e}"),
                    });
                    loaded.broken.unattributed = true;
                }
            }
        }
        check_references(&mut loaded);
        loaded
    }
}

/// What one file's text declares, checked as [`ConfigFolder::load`] checks a folder:
/// every document parsed, every problem an error, nothing a panic.
pub fn load_text(file: &str, text: &str) -> LoadedResources {
    let mut loaded = LoadedResources::default();
    load_file(file, text, &mut loaded);
    check_references(&mut loaded);
    loaded
}

/// How often the folder is checked for changes.
const POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Loads the folder into `policy` now and again whenever its files change, logging every
/// problem with its file, resource and field. The valid resources apply; an invalid
/// Namespace or Repository keeps its last valid version, or denies if it never had one.
pub async fn watch_folder(folder: ConfigFolder, policy: crate::policy::Policy, users: Users) {
    let mut applied: Option<String> = None;
    loop {
        let fingerprint = folder.fingerprint().ok();
        if fingerprint.is_none() || fingerprint != applied {
            // Plain-text passwords are hashed while loading (argon2): not on async workers.
            let loaded = {
                let folder = ConfigFolder::new(folder.dir());
                tokio::task::spawn_blocking(move || folder.load())
                    .await
                    .expect("loading the config folder does not panic")
            };
            for error in &loaded.errors {
                tracing::error!(%error, "invalid configuration");
                eprintln!("berth: invalid configuration: {error}");
            }
            let (snapshot, broken) = super::snapshot_failing_closed(
                &loaded.namespaces,
                &loaded.repositories,
                loaded.broken.clone(),
                &policy.current(),
            );
            if !broken.is_empty() {
                tracing::warn!(
                    namespaces = ?broken.namespaces,
                    repositories = ?broken.repositories,
                    unattributed = broken.unattributed,
                    "invalid declarations fail closed: each keeps its last valid version, or denies everyone but administrators and namespace members"
                );
            }
            policy.replace(snapshot);
            users.replace(Directory::new(loaded.users.iter().cloned()));
            tracing::info!(
                dir = %folder.dir().display(),
                namespaces = loaded.namespaces.len(),
                repositories = loaded.repositories.len(),
                sync_rules = loaded.sync_rules.len(),
                aging_rules = loaded.aging_rules.len(),
                triggers = loaded.triggers.len(),
                users = loaded.users.len(),
                errors = loaded.errors.len(),
                "configuration loaded"
            );
            applied = fingerprint;
        }
        tokio::time::sleep(POLL).await;
    }
}

fn load_file(file: &str, text: &str, loaded: &mut LoadedResources) {
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = match serde_yaml::Value::deserialize(document) {
            Ok(serde_yaml::Value::Null) => continue, // an empty document between `---`
            Ok(v) => v,
            Err(e) => {
                loaded.errors.push(FolderError {
                    file: file.into(),
                    resource: format!("document {}", index + 1),
                    message: format!("not valid YAML, so the rest of the file is not read: {e}"),
                });
                loaded.broken.unattributed = true;
                // The parser cannot resynchronise after a syntax error (it would report
                // the same error forever): the rest of the file is lost with it.
                break;
            }
        };
        let header: Header = serde_yaml::from_value(value.clone()).unwrap_or(Header {
            api_version: None,
            kind: None,
            metadata: None,
        });
        let kind = header.kind.clone().unwrap_or_default();
        let name = header.metadata.and_then(|m| m.name).unwrap_or_default();
        let resource = if name.is_empty() {
            format!("{kind} (document {})", index + 1)
        } else {
            format!("{kind}/{name}")
        };
        // The name a broken declaration would take effect under, if it says.
        let spec_field = |field: &str| {
            value
                .get("spec")
                .and_then(|spec| spec.get(field))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let declared_repository = match (spec_field("namespace"), spec_field("name")) {
            (Some(ns), Some(path)) => format!("{ns}/{path}").parse::<RepositoryName>().ok(),
            _ => None,
        };
        let broken_name = match kind.as_str() {
            "Namespace" if registry_component_ok(&name) => Some((true, name.clone())),
            "Namespace" => None, // no repository can live under an invalid name
            "Repository" => declared_repository.map(|r| (false, r.to_string())),
            _ => None,
        };
        let is_berths = api_version_is_berths(header.api_version.as_deref());
        let mut error = |message: String| {
            loaded.errors.push(FolderError {
                file: file.into(),
                resource: resource.clone(),
                message,
            });
            match &broken_name {
                Some((true, n)) => loaded.broken.namespaces.push(n.clone()),
                Some((false, r)) => loaded.broken.repositories.push(r.clone()),
                // It may be anything, a Repository among others: keep what went missing.
                None if is_berths => loaded.broken.unattributed = true,
                None => {}
            }
        };
        let api_version = header.api_version.clone().unwrap_or_default();
        if api_version == "v1" && kind == "Secret" {
            load_user(value, &resource, loaded, file);
            continue;
        }
        if api_version == "v1" && kind == "ConfigMap" {
            match serde_path_to_error::deserialize(value) {
                Ok(map) => loaded.config_maps.push(map),
                Err(e) => error(format!("{}: {}", e.path(), e.inner())),
            }
            continue;
        }
        if !api_version.starts_with("berth.dev/") && !api_version.is_empty() {
            // A folder kept for GitOps may hold the workloads too; they are not ours to load.
            tracing::debug!(file, %resource, "skipping a resource that is not berth's");
            continue;
        }
        if api_version != "berth.dev/v1alpha1" {
            error(format!(
                "apiVersion must be berth.dev/v1alpha1, not {api_version:?}"
            ));
            continue;
        }
        if name.is_empty() {
            error("metadata.name is required".into());
            continue;
        }
        macro_rules! parse {
            ($ty:ty) => {
                // The path names the field, as the apiserver's validation errors do.
                match serde_path_to_error::deserialize::<_, $ty>(value) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        error(format!("{}: {}", e.path(), e.inner()));
                        None
                    }
                }
            };
        }
        match kind.as_str() {
            "Namespace" => {
                if !registry_component_ok(&name) {
                    error("metadata.name: a registry namespace name is lowercase letters and digits separated by single '.' or '-', at most 63 characters".into());
                } else if let Some(r) = parse!(Namespace) {
                    loaded.namespaces.push(r);
                }
            }
            "Repository" => {
                if let Some(r) = parse!(Repository) {
                    let full = format!("{}/{}", r.spec.namespace, r.spec.name);
                    match full.parse::<RepositoryName>() {
                        Ok(_) => match super::validate_repository(&r) {
                            Ok(()) => loaded.repositories.push(r),
                            Err(e) => error(e.to_string()),
                        },
                        Err(e) => error(format!("spec.namespace/spec.name: {e}")),
                    }
                }
            }
            "SyncRule" => {
                if let Some(r) = parse!(SyncRule) {
                    loaded.sync_rules.push(r);
                }
            }
            "AgingRule" => {
                if let Some(r) = parse!(AgingRule) {
                    if r.spec.keep_days.is_some() == r.spec.keep_count.is_some() {
                        error("spec: set exactly one of keepDays and keepCount".into());
                    } else {
                        loaded.aging_rules.push(r);
                    }
                }
            }
            "Trigger" => {
                if let Some(r) = parse!(Trigger) {
                    loaded.triggers.push(r);
                }
            }
            other => error(format!(
                "kind {other:?} is not a berth resource (Namespace, Repository, SyncRule, AgingRule, Trigger)"
            )),
        }
    }
}

/// Whether a document is (or may be meant as) one of berth's: a missing apiVersion or
/// any `berth.dev/…` version. Other documents are not ours and cannot widen access.
fn api_version_is_berths(api_version: Option<&str>) -> bool {
    api_version.is_none_or(|v| v.is_empty() || v.starts_with("berth.dev/"))
}

/// A Secret is a user when labelled `berth.dev/user`; other Secrets are not berth's.
fn load_user(value: serde_yaml::Value, resource: &str, loaded: &mut LoadedResources, file: &str) {
    let mut error = |message: String| {
        loaded.errors.push(FolderError {
            file: file.into(),
            resource: resource.into(),
            message,
        })
    };
    let secret: k8s_openapi::api::core::v1::Secret = match serde_path_to_error::deserialize(value) {
        Ok(s) => s,
        Err(e) => return error(format!("{}: {}", e.path(), e.inner())),
    };
    if !is_user_secret(&secret) {
        loaded.secrets.push(secret);
        return;
    }
    match user_from_secret(&secret) {
        Ok(user) => {
            if loaded.users.iter().any(|u| u.name == user.name) {
                error(format!(
                    "user {:?} is declared more than once; the first declaration is used",
                    user.name
                ));
            } else {
                loaded.users.push(user);
            }
        }
        Err(e) => error(e.to_string()),
    }
}

/// Cross-resource checks the apiserver cannot make, reported like the others.
fn check_references(loaded: &mut LoadedResources) {
    let mut seen = std::collections::HashSet::new();
    for ns in &loaded.namespaces {
        let name = ns.metadata.name.clone().unwrap_or_default();
        if !seen.insert(name.clone()) {
            loaded.errors.push(FolderError {
                file: "-".into(),
                resource: format!("Namespace/{name}"),
                message: "declared more than once; the first declaration is used".into(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syntax_error_is_reported_once_and_ends_the_file() {
        for text in ["\"unterminated", "a: b\n---\nkind: [", "key: *undefined"] {
            let loaded = load_text("bad.yaml", text);
            let syntax: Vec<_> = loaded
                .errors
                .iter()
                .filter(|e| e.message.contains("not valid YAML"))
                .collect();
            assert_eq!(syntax.len(), 1, "{text:?}: {:?}", loaded.errors);
            assert_eq!(Some(syntax[0]), loaded.errors.last());
        }
    }

    fn load(text: &str) -> LoadedResources {
        let mut loaded = LoadedResources::default();
        load_file("test.yaml", text, &mut loaded);
        loaded
    }

    #[test]
    fn loads_every_kind_from_multi_document_yaml() {
        let loaded = load(
            r#"
apiVersion: berth.dev/v1alpha1
kind: Namespace
metadata: {name: team-a}
spec: {visibility: internal}
---
apiVersion: berth.dev/v1alpha1
kind: Repository
metadata: {name: team-a.web}
spec: {namespace: team-a, name: web}
"#,
        );
        assert_eq!(loaded.errors, vec![]);
        assert_eq!(loaded.namespaces.len(), 1);
        assert!(
            loaded.namespaces[0].spec.auto_create_repositories,
            "defaults apply"
        );
        assert_eq!(loaded.repositories.len(), 1);
    }

    #[test]
    fn errors_name_the_file_the_resource_and_the_field() {
        let loaded = load(
            r#"
apiVersion: berth.dev/v1alpha1
kind: Namespace
metadata: {name: team-a}
spec: {visibility: secret}
---
apiVersion: berth.dev/v1alpha1
kind: Namespace
metadata: {name: Bad_Name}
---
apiVersion: berth.dev/v1alpha1
kind: Widget
metadata: {name: w}
"#,
        );
        let messages: Vec<String> = loaded.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(messages.len(), 3, "{messages:#?}");
        assert!(
            messages[0].starts_with("test.yaml: Namespace/team-a: spec.visibility"),
            "{}",
            messages[0]
        );
        assert!(messages[0].contains("secret"));
        assert!(messages[1].contains("Namespace/Bad_Name: metadata.name"));
        assert!(messages[2].contains("Widget"));
    }

    #[test]
    fn a_broken_repository_is_named_so_that_it_fails_closed() {
        let loaded = load(
            r#"
apiVersion: berth.dev/v1alpha1
kind: Repository
metadata: {name: pub.secret}
spec: {namespace: pub, name: secret, visibility: nobody}
---
apiVersion: berth.dev/v1alpha1
kind: Repository
metadata: {name: pub.tags}
spec: {namespace: pub, name: tags, immutableTags: ["v[0-9]*"]}
---
apiVersion: berth.dev/v1alpha1
kind: Namespace
metadata: {name: team}
spec: {visibility: 7}
"#,
        );
        assert_eq!(loaded.errors.len(), 3, "{:#?}", loaded.errors);
        assert!(loaded.errors[1].message.contains("spec.immutableTags[0]"));
        assert_eq!(
            loaded.broken,
            Broken {
                namespaces: vec!["team".into()],
                repositories: vec!["pub/secret".into(), "pub/tags".into()],
                unattributed: false,
            }
        );
        assert!(loaded.repositories.is_empty());
    }

    #[test]
    fn a_document_that_cannot_be_attributed_keeps_what_went_missing() {
        let loaded = load("apiVersion: berth.dev/v1alpha1\nkind: Repository\nspec: {}\n");
        assert!(loaded.broken.unattributed);
        let loaded = load("kind: [unclosed\n");
        assert!(loaded.broken.unattributed);
        let loaded = load("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n");
        assert!(!loaded.broken.unattributed, "workloads are not berth's");
    }
}
