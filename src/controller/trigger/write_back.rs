//! Write-back modes other than `Cluster`: a push commits the image into Git
//! ([`super::git`]) or sets it on an Argo CD Application, and the GitOps tool rolls
//! the workload out from there. Turns a Trigger's `spec.writeBack` into that work, and
//! its failures into a condition reason and an Event.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::{Api, ResourceExt};

use serde_json::{Value, json};

use super::super::FIELD_MANAGER;
use super::Env;
use super::fire::{Push, namespace_of};
use super::git::edit::{self, MarkedValues, Segment};
use super::git::{self, BasicAuth, Credentials, GitError, Outcome};
use crate::api::{
    ArgoCdWriteBack, GitWriteBack, HelmValues, ImageReference, Trigger, WriteBackMode,
};

/// What a write-back did.
pub enum Written {
    /// Committed (mode Git): the commit.
    Committed { commit: String, attempts: usize },
    /// The Application was updated (mode ArgoCD): its new generation.
    Applied { generation: Option<i64> },
    /// The target already holds the image.
    AlreadyCurrent,
    /// A newer push of this trigger was written already.
    Superseded(String),
}

/// Why a write-back failed: the condition reason, the message, and whether it is
/// Stalled (needs a change) rather than in progress (retried).
#[derive(Debug)]
pub struct Failure {
    pub reason: &'static str,
    pub message: String,
    pub stalled: bool,
}

impl From<GitError> for Failure {
    fn from(e: GitError) -> Self {
        Failure {
            reason: e.reason(),
            stalled: e.is_stalled(),
            message: e.to_string(),
        }
    }
}

fn kube_failure(reason: &'static str, what: &str, e: kube::Error) -> Failure {
    Failure {
        reason,
        message: format!("{what}: {e}"),
        stalled: false,
    }
}

/// The image name written: `writeBack.imageName`, or the primary registry host
/// followed by the repository.
pub fn image_name(env: &Env, trigger: &Trigger) -> String {
    let spec = &trigger.spec;
    spec.write_back
        .as_ref()
        .and_then(|w| w.image_name.clone())
        .unwrap_or_else(|| format!("{}/{}", env.hosts.primary(), spec.repository))
}

/// The values one push writes.
struct Values {
    name: String,
    tag: String,
    digest: Option<String>,
    /// `name:tag@digest` or `name:tag`.
    image: String,
}

fn values(env: &Env, trigger: &Trigger, push: &Push) -> Values {
    let name = image_name(env, trigger);
    let digest =
        (trigger.spec.image_reference == ImageReference::Digest).then(|| push.digest.clone());
    let image = match &digest {
        Some(d) => format!("{name}:{}@{d}", push.tag),
        None => format!("{name}:{}", push.tag),
    };
    Values {
        name,
        tag: push.tag.clone(),
        digest,
        image,
    }
}

/// Writes `push` where the trigger's mode says.
pub async fn write(env: &Env, trigger: &Trigger, push: &Push) -> Result<Written, Failure> {
    let write_back = trigger.spec.write_back.clone().unwrap_or_default();
    match (write_back.mode, &write_back.git, &write_back.argocd) {
        (WriteBackMode::Git, Some(g), _) => write_git(env, trigger, push, g).await,
        (WriteBackMode::ArgoCD, _, Some(a)) => write_argocd(env, trigger, push, a).await,
        (mode, _, _) => Err(Failure {
            reason: "InvalidSpec",
            message: format!("writeBack mode {mode:?} needs its own section"),
            stalled: true,
        }),
    }
}

/// The paths a Helm values file or an Application's Helm parameters get, with values.
fn helm_edits(helm: &HelmValues, v: &Values) -> Vec<(String, String)> {
    let mut edits = Vec::new();
    match (&helm.digest, &v.digest) {
        (Some(path), Some(digest)) => {
            edits.push((helm.tag.clone(), v.tag.clone()));
            edits.push((path.clone(), digest.clone()));
        }
        (None, Some(digest)) => edits.push((helm.tag.clone(), format!("{}@{digest}", v.tag))),
        (_, None) => edits.push((helm.tag.clone(), v.tag.clone())),
    }
    if let Some(path) = &helm.name {
        edits.push((path.clone(), v.name.clone()));
    }
    edits
}

/// The credentials of `git.secretRef`: a token for HTTP(S) remotes; for SSH remotes a
/// private key (`ssh-privatekey`, as in a `kubernetes.io/ssh-auth` Secret) with the
/// `known_hosts` its server is checked against.
async fn credentials(
    env: &Env,
    trigger: &Trigger,
    git: &GitWriteBack,
) -> Result<Option<Credentials>, Failure> {
    let namespace = namespace_of(trigger);
    let ssh = git::is_ssh_url(&git.url);
    let Some(reference) = &git.secret_ref else {
        if ssh {
            return Err(invalid_secret(format!(
                "{} is an SSH remote: set git.secretRef to a Secret with ssh-privatekey and known_hosts",
                git.url
            )));
        }
        return Ok(None);
    };
    let shown = format!("Secret {namespace}/{}", reference.name);
    let api = Api::<Secret>::namespaced(env.client.clone(), &namespace);
    let secret = api
        .get_opt(&reference.name)
        .await
        .map_err(|e| kube_failure("SecretNotFound", "reading the Git credentials", e))?
        .ok_or_else(|| Failure {
            reason: "SecretNotFound",
            message: format!("{shown} does not exist"),
            stalled: false,
        })?;
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    let text = |key: &str| {
        data.get(key)
            .map(|v| String::from_utf8_lossy(v).trim().to_string())
    };
    if ssh {
        let key = text("ssh-privatekey")
            .ok_or_else(|| invalid_secret(format!("{shown} has no key ssh-privatekey")))?;
        let known_hosts = text("known_hosts").ok_or_else(|| {
            invalid_secret(format!(
                "{shown} has no key known_hosts: berth checks the SSH server's host key against it"
            ))
        })?;
        let passphrase = text("passphrase");
        let key = git::SshKey::new(&key, passphrase.as_deref(), &known_hosts, text("username"))
            .map_err(|e| invalid_secret(format!("{shown}: {e}")))?;
        return Ok(Some(Credentials::Ssh(key)));
    }
    let password = text("token")
        .or_else(|| text("password"))
        .ok_or_else(|| invalid_secret(format!("{shown} has no key token or password")))?;
    Ok(Some(Credentials::Basic(BasicAuth {
        username: text("username").unwrap_or_else(|| "x-access-token".into()),
        password,
    })))
}

fn invalid_secret(message: String) -> Failure {
    Failure {
        reason: "InvalidSecret",
        message,
        stalled: true,
    }
}

async fn write_git(
    env: &Env,
    trigger: &Trigger,
    push: &Push,
    spec: &GitWriteBack,
) -> Result<Written, Failure> {
    let v = values(env, trigger, push);
    let credentials = credentials(env, trigger, spec).await?;
    let key = super::history::key(trigger);
    let digest = push.digest.clone();
    let message = git::render_message(
        &spec.message,
        &[
            ("repository", &trigger.spec.repository),
            ("tag", &push.tag),
            ("digest", &digest),
            ("image", &v.image),
            ("trigger", &key),
        ],
    );
    let edit: git::Edit = if let Some(k) = &spec.kustomize {
        let entry = |field: &str| {
            vec![
                Segment::key("images"),
                Segment::Item {
                    key: "name".into(),
                    value: k.name.clone(),
                },
                Segment::key(field),
            ]
        };
        let mut edits = vec![
            (entry("newName"), v.name.clone()),
            (entry("newTag"), v.tag.clone()),
        ];
        if let Some(d) = &v.digest {
            edits.push((entry("digest"), d.clone()));
        }
        Box::new(move |text| edit::set_values(text, &edits))
    } else if let Some(h) = &spec.helm {
        let edits: Vec<_> = helm_edits(h, &v)
            .into_iter()
            .map(|(path, value)| (Segment::dotted(&path), value))
            .collect();
        Box::new(move |text| edit::set_values(text, &edits))
    } else if let Some(m) = &spec.marker {
        let (name, image, tag) = (m.name.clone(), v.image.clone(), v.tag.clone());
        let digest = v.digest.clone().unwrap_or_else(|| push.digest.clone());
        Box::new(move |text| {
            let values = MarkedValues {
                image: &image,
                tag: &tag,
                digest: &digest,
            };
            edit::set_marked(text, &name, &values)
        })
    } else {
        return Err(Failure {
            reason: "InvalidSpec",
            message: "writeBack.git needs one of kustomize, helm and marker".into(),
            stalled: true,
        });
    };
    let request = git::Request {
        url: spec.url.clone(),
        branch: spec.branch.clone(),
        path: spec.path.clone(),
        credentials,
        author_name: spec.author.name.clone(),
        author_email: spec.author.email.clone(),
        message,
        trigger: key,
        tag: push.tag.clone(),
        digest,
        pushed_at: push.pushed_at,
        edit,
    };
    match git::write_back(request).await? {
        Outcome::Committed { commit, attempts } => Ok(Written::Committed { commit, attempts }),
        Outcome::AlreadyCurrent { .. } => Ok(Written::AlreadyCurrent),
        Outcome::Superseded { commit, newer, tag } => Ok(Written::Superseded(format!(
            "commit {newer} wrote the newer push of {tag}; recorded as {commit}"
        ))),
    }
}

/// Argo CD's Application, looked up without its Rust types (berth does not depend on
/// Argo CD's API, only on the CRD being installed).
fn application_api(env: &Env, namespace: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Application");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "applications");
    Api::namespaced_with(env.client.clone(), namespace, &resource)
}

/// `name=host/repo:tag@digest`: the entry of `spec.source.kustomize.images`.
fn kustomize_entry(name: &str, v: &Values) -> String {
    format!("{name}={}", v.image)
}

/// How many times an Application write is retried after a conflict.
const ATTEMPTS: usize = 5;

async fn write_argocd(
    env: &Env,
    trigger: &Trigger,
    push: &Push,
    spec: &ArgoCdWriteBack,
) -> Result<Written, Failure> {
    for attempt in 1..=ATTEMPTS {
        match write_argocd_once(env, trigger, push, spec).await {
            Err(f) if f.reason == CONFLICT && attempt < ATTEMPTS => continue,
            done => return done,
        }
    }
    unreachable!("the last attempt returns")
}

const CONFLICT: &str = "ApplicationConflict";

async fn write_argocd_once(
    env: &Env,
    trigger: &Trigger,
    push: &Push,
    spec: &ArgoCdWriteBack,
) -> Result<Written, Failure> {
    let v = values(env, trigger, push);
    let namespace = spec
        .namespace
        .clone()
        .unwrap_or_else(|| namespace_of(trigger));
    let api = application_api(env, &namespace);
    let shown = format!("Application {namespace}/{}", spec.application);
    let app = api
        .get_opt(&spec.application)
        .await
        .map_err(|e| kube_failure("ApplicationUnavailable", &shown, e))?
        .ok_or_else(|| Failure {
            reason: "ApplicationNotFound",
            message: format!("{shown} does not exist"),
            stalled: false,
        })?;
    let source = app.data.pointer("/spec/source").cloned();
    let Some(source) = source.filter(Value::is_object) else {
        return Err(Failure {
            reason: "InvalidApplication",
            message: format!(
                "{shown} has no spec.source (multi-source Applications are not supported)"
            ),
            stalled: true,
        });
    };
    let patch_source = if let Some(k) = &spec.kustomize {
        let current: Vec<String> = source
            .pointer("/kustomize/images")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|i| i.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let entry = kustomize_entry(&k.name, &v);
        let mut images: Vec<String> = Vec::new();
        let mut found = false;
        for image in &current {
            let name = image.split('=').next().unwrap_or_default();
            // `name=…`, or an entry without `=` naming the image with its tag.
            let same = name == k.name
                || (!image.contains('=') && super::select::parse_image(image).path == k.name);
            if same {
                if !found {
                    images.push(entry.clone());
                }
                found = true;
            } else {
                images.push(image.clone());
            }
        }
        if !found {
            images.push(entry);
        }
        if images == current {
            return Ok(Written::AlreadyCurrent);
        }
        json!({"kustomize": {"images": images}})
    } else if let Some(h) = &spec.helm {
        let current: Vec<Value> = source
            .pointer("/helm/parameters")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut parameters = current.clone();
        for (name, value) in helm_edits(h, &v) {
            match parameters
                .iter_mut()
                .find(|p| p.get("name").and_then(Value::as_str) == Some(name.as_str()))
            {
                Some(p) => p["value"] = json!(value),
                None => parameters.push(json!({"name": name, "value": value})),
            }
        }
        if parameters == current {
            return Ok(Written::AlreadyCurrent);
        }
        json!({"helm": {"parameters": parameters}})
    } else {
        return Err(Failure {
            reason: "InvalidSpec",
            message: "writeBack.argocd needs kustomize or helm".into(),
            stalled: true,
        });
    };
    let patch = json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {
            "name": spec.application,
            "namespace": namespace,
            // Computed from this version: a concurrent change makes the write a
            // conflict, retried from a fresh read, rather than a lost update.
            "resourceVersion": app.resource_version(),
        },
        "spec": {"source": patch_source},
    });
    // The lists are atomic in Argo CD's CRD: berth takes them over, as Image Updater does.
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let after = api
        .patch(&spec.application, &params, &Patch::Apply(&patch))
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 409 => Failure {
                reason: CONFLICT,
                message: format!("{shown} changed while berth wrote it"),
                stalled: false,
            },
            e => kube_failure("ApplicationPatchFailed", &shown, e),
        })?;
    Ok(Written::Applied {
        generation: after.metadata.generation,
    })
}

/// `commits team/web tags … into URL (branch main, path …)`: the Ready message.
pub fn describe(env: &Env, trigger: &Trigger) -> String {
    let spec = &trigger.spec;
    let reference = match spec.image_reference {
        ImageReference::Digest => "pinned by digest",
        ImageReference::Tag => "by tag",
    };
    let name = image_name(env, trigger);
    let write_back = spec.write_back.clone().unwrap_or_default();
    match (write_back.git, write_back.argocd) {
        (Some(g), _) => {
            let form = if let Some(k) = &g.kustomize {
                format!("kustomize image {}", k.name)
            } else if let Some(h) = &g.helm {
                format!("Helm value {}", h.tag)
            } else if let Some(m) = &g.marker {
                format!("lines marked {}", m.name)
            } else {
                String::new()
            };
            format!(
                "commits pushes of {} as {name}, {reference}, into {} {} ({form}) on branch {}",
                spec.repository, g.url, g.path, g.branch
            )
        }
        (_, Some(a)) => format!(
            "sets {name} ({reference}) on Argo CD Application {}/{} when {} is pushed",
            a.namespace.unwrap_or_else(|| namespace_of(trigger)),
            a.application,
            spec.repository
        ),
        _ => String::new(),
    }
}
