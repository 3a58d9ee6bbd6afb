//! Trigger write-back against real Git servers on loopback (`git daemon`, and smart
//! HTTP through `git http-backend` with a token) and Argo CD's Application CRD on the
//! real apiserver: a push lands as exactly one commit (or one Application change) with
//! the digest, on the right branch, by the right author; the same push again changes
//! nothing; a commit someone else made in between is kept and built upon; bad
//! credentials stall the Trigger with an Event and no retry storm.

use std::sync::atomic::Ordering;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::cluster::TestCluster;
use crate::common::require_tool;
use crate::git_server::{GitDaemon, GitHttp, GitRepo};
use crate::gitops::wait_event;
use crate::images::skopeo_push;
use crate::ssh_server::{Sshd, keygen};
use crate::triggers::{
    QUIET, history, metric, operator, registry_namespace, trigger, wait_condition, wait_result,
};

const KUSTOMIZATION: &str = "# the web app\nresources:\n- deployment.yaml\nimages:\n- name: other\n  newTag: \"1\"\n- name: web # set by berth\n  newName: example/web\n  newTag: v0\n";

const VALUES: &str = "replicaCount: 2\nimage:\n  repository: example/web # stays\n  tag: v0\n  pullPolicy: IfNotPresent\n";

async fn token_secret(cluster: &TestCluster, name: &str, token: &str) {
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "stringData": {"token": token},
    }))
    .unwrap();
    Api::<Secret>::namespaced(cluster.client(), cluster.namespace())
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_push_commits_the_digest_into_a_kustomization_once_on_its_branch() {
    let Some(cluster) = TestCluster::start("writeback-kustomize").await else {
        return;
    };
    let (Some(skopeo), Some(git)) = (require_tool("skopeo"), require_tool("git")) else {
        return;
    };
    let repo = GitRepo::new(&git, "main", &[("README", "deploy repo\n")]);
    repo.commit_as(
        "seed",
        "deploy",
        &[("apps/web/kustomization.yaml", KUSTOMIZATION)],
        "web",
    );
    let daemon = GitDaemon::start(&git, &repo);
    let operator = operator(&cluster, &["--registry-host", "registry.berth.test"]);
    let team = registry_namespace(&cluster).await;
    let repository = format!("{team}/web");
    let spec = json!({
        "repository": repository,
        "tags": {"mode": "Regex", "regex": "v.*"},
        "writeBack": {
            "mode": "Git",
            "git": {
                "url": daemon.url,
                "branch": "deploy",
                "path": "apps/web/kustomization.yaml",
                "author": {"name": "Berth Bot", "email": "bot@berth.test"},
                "message": "web: {{tag}} from {{repository}}\n\n{{digest}}",
                "kustomize": {"name": "web"},
            },
        },
    });
    let ready = trigger(&cluster, "web", spec, "Watching").await;
    let message = &ready.status.unwrap().conditions[0].message;
    assert!(message.contains("commits pushes of"), "{message}");
    let before = repo.log("deploy", "%H");

    let digest = skopeo_push(&skopeo, &operator.addr, &repository, "v1", "v1");
    let h = wait_result(&cluster, "web", "v1", "Committed").await;
    let commit = h[0].commit.clone().expect("the commit is recorded");
    let after = repo.log("deploy", "%H");
    assert_eq!(
        after.len(),
        before.len() + 1,
        "exactly one commit: {after:?}"
    );
    assert_eq!(after[0], commit, "the branch head is the recorded commit");
    assert_eq!(after[1], before[0], "on top of the branch as it was");
    assert_eq!(
        repo.log("deploy", "%an <%ae>|%cn")[0],
        "Berth Bot <bot@berth.test>|Berth Bot"
    );
    let text = repo.message(&commit);
    assert!(
        text.starts_with(&format!("web: v1 from {repository}\n\n{digest}\n")),
        "{text}"
    );
    assert!(text.contains("Berth-Trigger: "), "{text}");
    // The entry is set in place: comments, the other image and the order stay.
    assert_eq!(
        repo.show("deploy", "apps/web/kustomization.yaml"),
        KUSTOMIZATION.replace(
            "  newName: example/web\n  newTag: v0\n",
            &format!(
                "  newName: registry.berth.test/{repository}\n  newTag: v1\n  digest: {digest}\n"
            )
        )
    );
    assert_eq!(repo.log("main", "%H").len(), 1, "main is untouched");

    // The same image pushed again (another tag, same digest, and the same tag again)
    // finds the file current: no commit.
    skopeo_push(&skopeo, &operator.addr, &repository, "v1", "v1");
    tokio::time::sleep(QUIET).await;
    assert_eq!(repo.log("deploy", "%H"), after, "no second commit");
    assert_eq!(history(&cluster, "web").await.len(), 1);
}

#[tokio::test]
async fn over_http_with_a_token_a_commit_made_meanwhile_is_kept_and_built_upon() {
    let Some(cluster) = TestCluster::start("writeback-http").await else {
        return;
    };
    let (Some(skopeo), Some(git)) = (require_tool("skopeo"), require_tool("git")) else {
        return;
    };
    let repo = GitRepo::new(&git, "main", &[("web/values.yaml", VALUES)]);
    let server = GitHttp::start(&git, &repo, "s3cret").await;
    let operator = operator(&cluster, &["--registry-host", "registry.berth.test"]);
    token_secret(&cluster, "git-token", "s3cret").await;
    let team = registry_namespace(&cluster).await;
    let repository = format!("{team}/web");
    let spec = json!({
        "repository": repository,
        "writeBack": {
            "mode": "Git",
            "git": {
                "url": server.url,
                "path": "web/values.yaml",
                "secretRef": {"name": "git-token"},
                "helm": {"tag": "image.tag", "digest": "image.digest"},
            },
        },
    });
    trigger(&cluster, "web", spec, "Watching").await;
    let seed = repo.log("main", "%H")[0].clone();

    // Someone else commits to the branch after berth fetched it and before its push
    // is received: the push is refused, berth fetches, applies its edit again, pushes.
    let other = std::sync::Arc::new(std::sync::Mutex::new(None));
    {
        let (repo_root, git, other) = (repo.bare(), git.clone(), other.clone());
        let seeded = GitRepoHandle {
            bare: repo_root,
            git,
        };
        server.before_next_push(move || {
            seeded.commit("NOTES", "someone else's change\n");
            *other.lock().unwrap() = Some(seeded.head("main"));
        });
    }
    let digest = skopeo_push(&skopeo, &operator.addr, &repository, "v1", "v1");
    let h = wait_result(&cluster, "web", "v1", "Committed").await;
    let commit = h[0].commit.clone().unwrap();
    let other = other
        .lock()
        .unwrap()
        .clone()
        .expect("the other commit was made");
    let log = repo.log("main", "%H");
    assert_eq!(
        log,
        [commit.clone(), other.clone(), seed],
        "history intact, nothing lost"
    );
    assert!(repo.is_ancestor(&other, "main"));
    let message = h[0].message.clone().unwrap();
    assert!(message.contains("2 attempts"), "{message}");
    assert_eq!(repo.show("main", "NOTES"), "someone else's change\n");
    assert_eq!(
        repo.show("main", "web/values.yaml"),
        VALUES.replace("  tag: v0\n", "  tag: v1\n").replace(
            "  pullPolicy: IfNotPresent\n",
            &format!("  pullPolicy: IfNotPresent\n  digest: {digest}\n")
        )
    );
    assert_eq!(
        server.refused.load(Ordering::SeqCst),
        0,
        "the token was sent"
    );
}

/// The bits of a repository the HTTP server's hook needs (it runs on another thread).
struct GitRepoHandle {
    bare: std::path::PathBuf,
    git: std::path::PathBuf,
}

impl GitRepoHandle {
    fn git(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.git);
        cmd.arg("--git-dir")
            .arg(&self.bare)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "someone")
            .env("GIT_AUTHOR_EMAIL", "someone@example.com")
            .env("GIT_COMMITTER_NAME", "someone")
            .env("GIT_COMMITTER_EMAIL", "someone@example.com");
        cmd
    }

    /// Commits `path` with `content` on main, straight into the bare repository.
    fn commit(&self, path: &str, content: &str) {
        let index = tempfile::NamedTempFile::new().unwrap();
        let with_index = |args: &[&str]| {
            let mut cmd = self.git();
            cmd.env("GIT_INDEX_FILE", index.path()).args(args);
            crate::common::run(&mut cmd).trim().to_string()
        };
        std::fs::remove_file(index.path()).ok();
        with_index(&["read-tree", "main"]);
        let blob = {
            let mut cmd = self.git();
            cmd.args(["hash-object", "-w", "--stdin"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped());
            let mut child = cmd.spawn().unwrap();
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(content.as_bytes())
                .unwrap();
            String::from_utf8(child.wait_with_output().unwrap().stdout)
                .unwrap()
                .trim()
                .to_string()
        };
        with_index(&[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("100644,{blob},{path}"),
        ]);
        let tree = with_index(&["write-tree"]);
        let parent = self.head("main");
        let commit = with_index(&["commit-tree", &tree, "-p", &parent, "-m", "someone else"]);
        with_index(&["update-ref", "refs/heads/main", &commit, &parent]);
    }

    fn head(&self, branch: &str) -> String {
        crate::common::run(self.git().args(["rev-parse", branch]))
            .trim()
            .to_string()
    }
}

#[tokio::test]
async fn bad_credentials_stall_the_trigger_with_an_event_and_no_retry_storm() {
    let Some(cluster) = TestCluster::start("writeback-auth").await else {
        return;
    };
    let (Some(skopeo), Some(git)) = (require_tool("skopeo"), require_tool("git")) else {
        return;
    };
    let repo = GitRepo::new(&git, "main", &[("web/values.yaml", VALUES)]);
    let server = GitHttp::start(&git, &repo, "right").await;
    let operator = operator(&cluster, &[]);
    token_secret(&cluster, "git-token", "wrong").await;
    let team = registry_namespace(&cluster).await;
    let repository = format!("{team}/web");
    let spec = json!({
        "repository": repository,
        "writeBack": {
            "mode": "Git",
            "git": {
                "url": server.url,
                "path": "web/values.yaml",
                "secretRef": {"name": "git-token"},
                "helm": {"tag": "image.tag"},
            },
        },
    });
    trigger(&cluster, "web", spec, "Watching").await;
    skopeo_push(&skopeo, &operator.addr, &repository, "v1", "v1");
    let t = wait_condition(&cluster, "web", "GitAuthFailed").await;
    let conditions = t.status.unwrap().conditions;
    let stalled = conditions.iter().find(|c| c.type_ == "Stalled").unwrap();
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", "GitAuthFailed")
    );
    assert!(stalled.message.contains("HTTP 401"), "{}", stalled.message);
    let note = wait_event(&cluster, "Trigger", "web", "Warning", "GitAuthFailed").await;
    assert!(note.contains("v1@sha256:"), "{note}");
    assert!(!note.contains("wrong"), "the token is not shown: {note}");
    let requests = server.requests.load(Ordering::SeqCst);
    tokio::time::sleep(QUIET).await;
    assert!(
        server.requests.load(Ordering::SeqCst) - requests <= 2,
        "no retry storm: {} requests",
        server.requests.load(Ordering::SeqCst)
    );
    assert_eq!(repo.log("main", "%H").len(), 1, "nothing committed");
    assert!(history(&cluster, "web").await.is_empty());
}

#[tokio::test]
async fn marked_lines_are_set_and_two_replicas_commit_a_push_once() {
    let Some(cluster) = TestCluster::start("writeback-replicas").await else {
        return;
    };
    let (Some(skopeo), Some(git)) = (require_tool("skopeo"), require_tool("git")) else {
        return;
    };
    let manifest = "apiVersion: apps/v1\nkind: Deployment\nspec:\n  template:\n    spec:\n      containers:\n      - name: web\n        image: example/web:v0 # {\"$berth\": \"web\"}\n        env:\n        - name: VERSION\n          value: v0 # {\"$berth\": \"web:tag\"}\n";
    let repo = GitRepo::new(&git, "main", &[("deploy/web.yaml", manifest)]);
    let daemon = GitDaemon::start(&git, &repo);
    let storage = tempfile::tempdir().unwrap();
    let host = "registry.berth.test";
    let args = [
        "--storage",
        storage.path().to_str().unwrap(),
        "--registry-host",
        host,
    ];
    let first = operator(&cluster, &args);
    let second = operator(&cluster, &args);
    let team = registry_namespace(&cluster).await;
    let repository = format!("{team}/web");
    let spec = json!({
        "repository": repository,
        "tags": {"mode": "List", "names": ["v1"]},
        "writeBack": {
            "mode": "Git",
            "git": {"url": daemon.url, "path": "deploy/web.yaml", "marker": {"name": "web"}},
        },
    });
    trigger(&cluster, "web", spec, "Watching").await;

    // One image, its manifest PUT to both replicas at the same instant: both fire, one
    // commits, the other finds the file current (after a refused push, or a fresh fetch).
    let built = "build-v1";
    let digest = skopeo_push(&skopeo, &first.addr, &repository, built, "v1");
    let manifest_get = reqwest::Client::new()
        .get(format!("{}/v2/{repository}/manifests/{built}", first.url()))
        .header("authorization", crate::operator::admin_basic_auth())
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    let media_type = manifest_get.headers()["content-type"].clone();
    let body = manifest_get.bytes().await.unwrap();
    let put = |url: String| {
        reqwest::Client::new()
            .put(format!("{url}/v2/{repository}/manifests/v1"))
            .header("authorization", crate::operator::admin_basic_auth())
            .header("content-type", media_type.clone())
            .body(body.clone())
            .send()
    };
    let (one, two) = tokio::join!(put(first.url()), put(second.url()));
    assert_eq!(
        (
            one.unwrap().status().as_u16(),
            two.unwrap().status().as_u16()
        ),
        (201, 201)
    );
    wait_result(&cluster, "web", "v1", "Committed").await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(repo.log("main", "%H").len(), 2, "one commit for the push");
    assert_eq!(history(&cluster, "web").await.len(), 1);
    // Both replicas fired; one committed, the other found the file current.
    let mut outcomes = std::collections::BTreeMap::new();
    for replica in [&first, &second] {
        for result in ["Committed", "AlreadyCurrent"] {
            let name = format!("berth_trigger_firings_total{{result=\"{result}\"}}");
            *outcomes.entry(result).or_insert(0.0) += metric(&replica.url(), &name).await;
        }
    }
    assert_eq!(outcomes["Committed"], 1.0, "{outcomes:?}");
    assert!(outcomes["AlreadyCurrent"] >= 1.0, "{outcomes:?}");
    assert_eq!(
        repo.show("main", "deploy/web.yaml"),
        manifest
            .replace(
                "example/web:v0",
                &format!("{host}/{repository}:v1@{digest}")
            )
            .replace("value: v0", "value: v1")
    );
}

/// Installs Argo CD's Application CRD (from the argo-cd module, scripts/build-peers.sh
/// argocd-crd) on the test apiserver, and waits until it is established.
async fn install_application_crd(cluster: &TestCluster) -> bool {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let Some(crd) = require_tool("argocd-application-crd.yaml") else {
        return false;
    };
    let crd = crd.to_str().unwrap();
    cluster
        .kubectl(&["apply", "--server-side", "--force-conflicts", "-f", crd])
        .ok();
    let api = Api::<CustomResourceDefinition>::all(cluster.client());
    crate::triggers::wait_for(
        "the Application CRD to be established",
        std::time::Duration::from_secs(60),
        || {
            let api = api.clone();
            async move {
                let crd = api
                    .get("applications.argoproj.io")
                    .await
                    .map_err(|e| e.to_string())?;
                let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
                conditions
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
                    .ok_or_else(|| format!("{conditions:?}"))
            }
        },
    )
    .await;
    true
}

fn application(cluster: &TestCluster, name: &str, source: serde_json::Value) {
    let app = json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {"name": name, "namespace": cluster.namespace()},
        "spec": {
            "project": "default",
            "source": source,
            "destination": {"server": "https://kubernetes.default.svc", "namespace": "web"},
        },
    });
    cluster
        .kubectl_stdin(
            &[
                "apply",
                "--server-side",
                "--field-manager=gitops-user",
                "-f",
                "-",
            ],
            &app.to_string(),
        )
        .ok();
}

#[tokio::test]
async fn argocd_mode_sets_the_applications_kustomize_image_and_helm_parameters() {
    let Some(cluster) = TestCluster::start("writeback-argocd").await else {
        return;
    };
    let Some(skopeo) = require_tool("skopeo") else {
        return;
    };
    if !install_application_crd(&cluster).await {
        return;
    }
    let repo_url = "https://git.example.com/deploy.git";
    application(
        &cluster,
        "web-kustomize",
        json!({"repoURL": repo_url, "path": "web", "kustomize": {"images": ["other=example/other:1", "web=example/web:v0"]}}),
    );
    application(
        &cluster,
        "web-helm",
        json!({"repoURL": repo_url, "path": "chart", "helm": {"parameters": [{"name": "replicaCount", "value": "2"}, {"name": "image.tag", "value": "v0"}]}}),
    );
    let operator = operator(&cluster, &["--registry-host", "registry.berth.test"]);
    let team = registry_namespace(&cluster).await;
    let repository = format!("{team}/web");
    for (name, argocd) in [
        (
            "kustomize",
            json!({"application": "web-kustomize", "kustomize": {"name": "web"}}),
        ),
        (
            "helm",
            json!({"application": "web-helm", "helm": {"tag": "image.tag", "digest": "image.digest"}}),
        ),
    ] {
        let spec = json!({
            "repository": repository,
            "writeBack": {"mode": "ArgoCD", "argocd": argocd},
        });
        let ready = trigger(&cluster, name, spec, "Watching").await;
        let message = &ready.status.unwrap().conditions[0].message;
        assert!(message.contains("Argo CD Application"), "{message}");
    }

    let digest = skopeo_push(&skopeo, &operator.addr, &repository, "v1", "v1");
    wait_result(&cluster, "kustomize", "v1", "Applied").await;
    wait_result(&cluster, "helm", "v1", "Applied").await;
    let apps = Api::<kube::api::DynamicObject>::namespaced_with(
        cluster.client(),
        cluster.namespace(),
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Application"),
            "applications",
        ),
    );
    let kustomize = apps.get("web-kustomize").await.unwrap();
    assert_eq!(
        kustomize.data["spec"]["source"]["kustomize"]["images"],
        json!([
            "other=example/other:1",
            format!("web=registry.berth.test/{repository}:v1@{digest}")
        ])
    );
    let helm = apps.get("web-helm").await.unwrap();
    assert_eq!(
        helm.data["spec"]["source"]["helm"]["parameters"],
        json!([
            {"name": "replicaCount", "value": "2"},
            {"name": "image.tag", "value": "v1"},
            {"name": "image.digest", "value": digest},
        ])
    );
    // berth owns the lists it set (server-side apply, field manager `berth`); the rest
    // of the Application stays with whoever applied it.
    let owners = |app: &kube::api::DynamicObject, field: &str| -> Vec<String> {
        app.metadata
            .managed_fields
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|m| {
                m.fields_v1
                    .as_ref()
                    .is_some_and(|f| f.0.pointer(&format!("/f:spec/f:source/{field}")).is_some())
            })
            .filter_map(|m| m.manager)
            .collect()
    };
    assert_eq!(owners(&kustomize, "f:kustomize/f:images"), ["berth"]);
    assert_eq!(owners(&helm, "f:helm/f:parameters"), ["berth"]);
    assert_eq!(owners(&helm, "f:repoURL"), ["gitops-user"]);

    // The same push again changes nothing.
    let generation = (kustomize.metadata.generation, helm.metadata.generation);
    skopeo_push(&skopeo, &operator.addr, &repository, "v1", "v1");
    tokio::time::sleep(QUIET).await;
    let now = (
        apps.get("web-kustomize").await.unwrap().metadata.generation,
        apps.get("web-helm").await.unwrap().metadata.generation,
    );
    assert_eq!(now, generation);
    assert_eq!(history(&cluster, "kustomize").await.len(), 1);
}

#[tokio::test]
async fn standalone_serve_commits_a_push_from_a_trigger_in_its_config_folder() {
    let Some(cluster) = TestCluster::start("writeback-standalone").await else {
        return;
    };
    let (Some(skopeo), Some(git)) = (require_tool("skopeo"), require_tool("git")) else {
        return;
    };
    let repo = GitRepo::new(&git, "main", &[("web/values.yaml", VALUES)]);
    let daemon = GitDaemon::start(&git, &repo);
    let team = cluster.unique("team");
    let repository = format!("{team}/web");
    let folder = tempfile::tempdir().unwrap();
    let yaml = format!(
        "apiVersion: berth.dev/v1alpha1\nkind: Namespace\nmetadata: {{name: {team}}}\nspec: {{}}\n\
         ---\n\
         apiVersion: berth.dev/v1alpha1\nkind: Trigger\nmetadata: {{name: web}}\n\
         spec:\n  repository: {repository}\n  writeBack:\n    mode: Git\n    git:\n      url: {url}\n      path: web/values.yaml\n      helm: {{tag: image.tag}}\n\
         ---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: admin, labels: {{berth.dev/user: \"true\"}}}}\n\
         stringData: {{username: {user}, password: {password}, admin: \"true\"}}\n",
        url = daemon.url,
        user = crate::operator::ADMIN_USER,
        password = crate::operator::ADMIN_PASSWORD,
    );
    std::fs::write(folder.path().join("berth.yaml"), yaml).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let serve = crate::common::Berth::start_with(
        &[
            "--config-dir",
            folder.path().to_str().unwrap(),
            "--kubeconfig",
            cluster.kubeconfig_path().to_str().unwrap(),
        ],
        &[("BERTH_GIT_CACHE", cache.path().to_str().unwrap())],
    );
    crate::triggers::wait_until_ready(&serve.url()).await;
    let digest = skopeo_push(&skopeo, &serve.addr, &repository, "v1", "v1");
    let expected = VALUES.replace("  tag: v0\n", &format!("  tag: v1@{digest}\n"));
    crate::triggers::wait_for(
        "the push committed into the values file",
        std::time::Duration::from_secs(30),
        || {
            let now = repo.show("main", "web/values.yaml");
            let expected = expected.clone();
            async move { (now == expected).then_some(()).ok_or(now) }
        },
    )
    .await;
    tokio::time::sleep(QUIET).await;
    let log = repo.log("main", "%an|%s");
    assert_eq!(
        log,
        [
            "berth|Deploy ".to_string() + &repository + ":v1",
            "seed|seed".into()
        ]
    );
}

/// A Secret as `kubectl create secret generic --type=kubernetes.io/ssh-auth` makes it:
/// the private key, the host keys berth trusts, and the key's passphrase.
async fn ssh_secret(
    cluster: &TestCluster,
    name: &str,
    key: &str,
    known_hosts: &str,
    passphrase: Option<&str>,
) {
    let mut data = json!({"ssh-privatekey": key, "known_hosts": known_hosts});
    if let Some(p) = passphrase {
        data["passphrase"] = json!(p);
    }
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": "kubernetes.io/ssh-auth",
        "stringData": data,
    }))
    .unwrap();
    Api::<Secret>::namespaced(cluster.client(), cluster.namespace())
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

/// The Trigger spec of a Helm values write-back into `path` of `url`.
fn ssh_spec(repository: &str, url: &str, path: &str, secret: &str) -> serde_json::Value {
    json!({
        "repository": repository,
        "writeBack": {
            "mode": "Git",
            "git": {
                "url": url,
                "path": path,
                "secretRef": {"name": secret},
                "author": {"name": "Berth Bot", "email": "bot@berth.test"},
                "helm": {"tag": "image.tag", "digest": "image.digest"},
            },
        },
    })
}

fn values_with(tag: &str, digest: &str) -> String {
    VALUES
        .replace("  tag: v0\n", &format!("  tag: {tag}\n"))
        .replace(
            "  pullPolicy: IfNotPresent\n",
            &format!("  pullPolicy: IfNotPresent\n  digest: {digest}\n"),
        )
}

#[tokio::test]
async fn over_ssh_a_push_commits_with_the_key_of_an_ssh_auth_secret() {
    let Some(cluster) = TestCluster::start("writeback-ssh").await else {
        return;
    };
    let (Some(skopeo), Some(git), Some(ssh_keygen)) = (
        require_tool("skopeo"),
        require_tool("git"),
        require_tool("ssh-keygen"),
    ) else {
        return;
    };
    // An ed25519 key under a passphrase, reached by the scp-like form; an RSA key
    // (signing with rsa-sha2) reached by an ssh:// URL.
    let ed25519 = keygen(&ssh_keygen, "ed25519", "correct horse");
    let rsa = keygen(&ssh_keygen, "rsa", "");
    let Some(sshd) = Sshd::start(&[&ed25519.public, &rsa.public]) else {
        return;
    };
    let repo = GitRepo::new(
        &git,
        "main",
        &[("web/values.yaml", VALUES), ("api/values.yaml", VALUES)],
    );
    let operator = operator(&cluster, &["--registry-host", "registry.berth.test"]);
    ssh_secret(
        &cluster,
        "deploy-key",
        &ed25519.private,
        &sshd.known_hosts(),
        Some("correct horse"),
    )
    .await;
    ssh_secret(&cluster, "rsa-key", &rsa.private, &sshd.known_hosts(), None).await;
    let team = registry_namespace(&cluster).await;
    let repository = format!("{team}/web");
    let scp = sshd.scp_url(&repo.bare());
    assert!(!scp.contains("://"), "{scp}");
    trigger(
        &cluster,
        "web",
        ssh_spec(&repository, &scp, "web/values.yaml", "deploy-key"),
        "Watching",
    )
    .await;
    let url = sshd.url(&repo.bare());
    trigger(
        &cluster,
        "api",
        ssh_spec(&repository, &url, "api/values.yaml", "rsa-key"),
        "Watching",
    )
    .await;
    let seed = repo.log("main", "%H");

    let digest = skopeo_push(&skopeo, &operator.addr, &repository, "v1", "v1");
    let web = wait_result(&cluster, "web", "v1", "Committed").await;
    let api = wait_result(&cluster, "api", "v1", "Committed").await;
    tokio::time::sleep(QUIET).await;
    let log = repo.log("main", "%H");
    assert_eq!(log.len(), seed.len() + 2, "one commit per trigger: {log:?}");
    for commit in [&web[0], &api[0]].map(|h| h.commit.clone().unwrap()) {
        assert!(log.contains(&commit), "{commit} is on main: {log:?}");
        let message = repo.message(&commit);
        assert!(
            message.contains(&format!("Berth-Digest: {digest}\n")),
            "{message}"
        );
    }
    assert_eq!(
        repo.log("main", "%an <%ae>")[..2],
        ["Berth Bot <bot@berth.test>", "Berth Bot <bot@berth.test>"]
    );
    assert_eq!(
        repo.show("main", "web/values.yaml"),
        values_with("v1", &digest)
    );
    assert_eq!(
        repo.show("main", "api/values.yaml"),
        values_with("v1", &digest)
    );
    assert!(
        sshd.logins() >= 4,
        "each trigger logged in to fetch and to push: {}",
        sshd.log()
    );
}

#[tokio::test]
async fn over_ssh_a_key_the_server_refuses_stalls_with_an_event_and_no_retry_storm() {
    let Some(cluster) = TestCluster::start("writeback-ssh-auth").await else {
        return;
    };
    let (Some(skopeo), Some(git), Some(ssh_keygen)) = (
        require_tool("skopeo"),
        require_tool("git"),
        require_tool("ssh-keygen"),
    ) else {
        return;
    };
    let allowed = keygen(&ssh_keygen, "ed25519", "");
    let other = keygen(&ssh_keygen, "ecdsa", "");
    let Some(sshd) = Sshd::start(&[&allowed.public]) else {
        return;
    };
    let repo = GitRepo::new(&git, "main", &[("web/values.yaml", VALUES)]);
    let operator = operator(&cluster, &[]);
    ssh_secret(
        &cluster,
        "deploy-key",
        &other.private,
        &sshd.known_hosts(),
        None,
    )
    .await;
    let team = registry_namespace(&cluster).await;
    let repository = format!("{team}/web");
    let url = sshd.url(&repo.bare());
    trigger(
        &cluster,
        "web",
        ssh_spec(&repository, &url, "web/values.yaml", "deploy-key"),
        "Watching",
    )
    .await;
    skopeo_push(&skopeo, &operator.addr, &repository, "v1", "v1");
    let t = wait_condition(&cluster, "web", "GitAuthFailed").await;
    let conditions = t.status.unwrap().conditions;
    let stalled = conditions.iter().find(|c| c.type_ == "Stalled").unwrap();
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", "GitAuthFailed")
    );
    assert!(
        stalled.message.contains("refused the SSH key SHA256:"),
        "{}",
        stalled.message
    );
    let note = wait_event(&cluster, "Trigger", "web", "Warning", "GitAuthFailed").await;
    assert!(note.contains("v1@sha256:"), "{note}");
    assert!(
        !note.contains("PRIVATE KEY"),
        "the key is not shown: {note}"
    );
    let connections = sshd.connections();
    assert!(connections >= 1, "{}", sshd.log());
    tokio::time::sleep(QUIET).await;
    assert!(
        sshd.connections() - connections <= 1,
        "no retry storm: {} connections",
        sshd.connections()
    );
    assert_eq!(sshd.logins(), 0, "{}", sshd.log());
    assert_eq!(repo.log("main", "%H").len(), 1, "nothing committed");
    assert!(history(&cluster, "web").await.is_empty());
}

#[tokio::test]
async fn over_ssh_a_host_key_not_in_known_hosts_is_refused_before_logging_in() {
    let Some(cluster) = TestCluster::start("writeback-ssh-hostkey").await else {
        return;
    };
    let (Some(skopeo), Some(git), Some(ssh_keygen)) = (
        require_tool("skopeo"),
        require_tool("git"),
        require_tool("ssh-keygen"),
    ) else {
        return;
    };
    let key = keygen(&ssh_keygen, "ed25519", "");
    let Some(sshd) = Sshd::start(&[&key.public]) else {
        return;
    };
    let repo = GitRepo::new(&git, "main", &[("web/values.yaml", VALUES)]);
    let operator = operator(&cluster, &[]);
    // Another server's key listed for this host:port (a man in the middle, or a
    // re-installed server); and known_hosts naming only other hosts.
    let impostor = keygen(&ssh_keygen, "ed25519", "");
    let impostor_key = impostor
        .public
        .split(' ')
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let wrong = format!("[127.0.0.1]:{} {impostor_key}\n", sshd.port);
    let elsewhere = format!("git.example.com {}\n", sshd.host_key);
    ssh_secret(&cluster, "wrong-host-key", &key.private, &wrong, None).await;
    ssh_secret(&cluster, "unknown-host", &key.private, &elsewhere, None).await;
    let team = registry_namespace(&cluster).await;
    let repository = format!("{team}/web");
    let url = sshd.url(&repo.bare());
    for (name, secret) in [("mismatch", "wrong-host-key"), ("unknown", "unknown-host")] {
        let spec = ssh_spec(&repository, &url, "web/values.yaml", secret);
        trigger(&cluster, name, spec, "Watching").await;
    }
    skopeo_push(&skopeo, &operator.addr, &repository, "v1", "v1");
    for (name, reason, says) in [
        ("mismatch", "GitHostKeyMismatch", "does not match"),
        (
            "unknown",
            "GitHostKeyUnknown",
            "is not in the Secret's known_hosts",
        ),
    ] {
        let t = wait_condition(&cluster, name, reason).await;
        let conditions = t.status.unwrap().conditions;
        let stalled = conditions.iter().find(|c| c.type_ == "Stalled").unwrap();
        assert_eq!(
            (stalled.status.as_str(), stalled.reason.as_str()),
            ("True", reason)
        );
        assert!(stalled.message.contains(says), "{}", stalled.message);
        assert!(
            stalled.message.contains(&sshd.host_fingerprint),
            "the server's key is named: {}",
            stalled.message
        );
        wait_event(&cluster, "Trigger", name, "Warning", reason).await;
        assert!(history(&cluster, name).await.is_empty());
    }
    assert_eq!(sshd.logins(), 0, "berth never logged in: {}", sshd.log());
    assert_eq!(repo.log("main", "%H").len(), 1, "nothing committed");
}

/// The `Berth-*` trailers of a commit message.
fn trailers(message: &str) -> std::collections::BTreeMap<String, String> {
    message
        .lines()
        .filter_map(|l| l.strip_prefix("Berth-")?.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

#[tokio::test]
async fn two_replicas_taking_five_tags_at_once_commit_each_push_once_and_keep_the_newest() {
    let Some(cluster) = TestCluster::start("writeback-tags").await else {
        return;
    };
    let (Some(skopeo), Some(git)) = (require_tool("skopeo"), require_tool("git")) else {
        return;
    };
    let repo = GitRepo::new(&git, "main", &[("web/values.yaml", VALUES)]);
    // The server refuses anything but fast-forwards: a forced push would fail loudly.
    crate::common::run(
        std::process::Command::new(&git)
            .arg("--git-dir")
            .arg(repo.bare())
            .args(["config", "receive.denyNonFastForwards", "true"]),
    );
    let daemon = GitDaemon::start(&git, &repo);
    let storage = tempfile::tempdir().unwrap();
    let args = ["--storage", storage.path().to_str().unwrap()];
    let first = operator(&cluster, &args);
    let second = operator(&cluster, &args);
    let team = registry_namespace(&cluster).await;
    let repository = format!("{team}/web");
    let spec = json!({
        "repository": repository,
        "tags": {"mode": "Regex", "regex": "v.*"},
        "writeBack": {
            "mode": "Git",
            "git": {
                "url": daemon.url,
                "path": "web/values.yaml",
                "message": "web {{tag}}",
                "helm": {"tag": "image.tag", "digest": "image.digest"},
            },
        },
    });
    trigger(&cluster, "web", spec, "Watching").await;
    let seed = repo.log("main", "%H");

    // Five images pushed at the same time, v1, v3, v5 through one replica and v2, v4
    // through the other: every push fires on the replica that took it.
    let tags = ["v1", "v2", "v3", "v4", "v5"];
    let pushes = tags.iter().enumerate().map(|(i, tag)| {
        let addr = if i % 2 == 0 {
            &first.addr
        } else {
            &second.addr
        };
        let (skopeo, addr, repository) = (skopeo.clone(), addr.clone(), repository.clone());
        let tag = tag.to_string();
        tokio::task::spawn_blocking(move || {
            let digest = skopeo_push(&skopeo, &addr, &repository, &tag, &format!("tags-{tag}"));
            (tag, digest)
        })
    });
    let pushed: std::collections::BTreeSet<(String, String)> = futures::future::join_all(pushes)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(pushed.len(), 5);

    let want = seed.len() + 5;
    let log = crate::triggers::wait_for(
        "a commit for each of the five pushes",
        std::time::Duration::from_secs(120),
        || {
            let log = repo.log("main", "%H");
            async move {
                if log.len() == want {
                    Ok(log)
                } else {
                    Err(format!("{log:?}"))
                }
            }
        },
    )
    .await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(repo.log("main", "%H"), log, "no further commit");
    // Linear history on top of the seed: nothing rewritten.
    assert_eq!(repo.log("main", "%P").len(), log.len());
    assert!(
        repo.log("main", "%P").iter().all(|p| !p.contains(' ')),
        "no merges"
    );
    assert!(repo.is_ancestor(&seed[0], "main"));

    // Each push is on the branch once, with its digest.
    let commits: Vec<_> = log[..5]
        .iter()
        .map(|c| (c.clone(), trailers(&repo.message(c))))
        .collect();
    let recorded: std::collections::BTreeSet<(String, String)> = commits
        .iter()
        .map(|(_, t)| (t["Tag"].clone(), t["Digest"].clone()))
        .collect();
    assert_eq!(recorded, pushed, "every push recorded, none twice");
    // The file holds the newest push; the commits that wrote it go forward in push
    // time, and those of older pushes arriving later changed no file.
    let pushed_at = |t: &std::collections::BTreeMap<String, String>| {
        t["Pushed-At"].parse::<jiff::Timestamp>().unwrap()
    };
    let newest = commits
        .iter()
        .map(|(_, t)| t)
        .max_by_key(|t| pushed_at(t))
        .unwrap();
    assert_eq!(
        repo.show("main", "web/values.yaml"),
        values_with(&newest["Tag"], &newest["Digest"])
    );
    let mut last_write: Option<jiff::Timestamp> = None;
    for (commit, t) in commits.iter().rev() {
        let changed = repo.changed_files(commit);
        if t.contains_key("Superseded-By") {
            assert!(changed.is_empty(), "{commit} records only: {changed:?}");
            assert!(pushed_at(t) < last_write.unwrap());
        } else {
            assert_eq!(changed, ["web/values.yaml"], "{commit}");
            assert!(
                last_write.is_none_or(|w| w < pushed_at(t)),
                "{commit} goes forward"
            );
            last_write = Some(pushed_at(t));
        }
    }
    let h = history(&cluster, "web").await;
    assert!(
        h.iter()
            .any(|f| f.tag == newest["Tag"] && f.result == "Committed"),
        "{h:#?}"
    );
}
