//! Auth against the real apiserver: users are Secrets, permissions come from the
//! Namespace resource and change with it, Pods sign in with ServiceAccount tokens,
//! and every replica accepts the tokens of the others.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::cluster::{TEST_LABEL, TestCluster};
use crate::operator::Operator;
use crate::reconcile::{push_image, wait_ready};
use crate::resources::berth;

fn operator(cluster: &TestCluster) -> Operator {
    let selector = format!("{TEST_LABEL}={}", cluster.id());
    Operator::start(cluster, &["--selector", &selector])
}

fn user_secret(cluster: &TestCluster, name: &str, password: &str) {
    let yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: user-{name}\n  namespace: {}\n  labels: {{berth.dev/user: \"true\"}}\nstringData:\n  username: {name}\n  password: {password}\n",
        cluster.namespace()
    );
    cluster.kubectl_stdin(&["apply", "-f", "-"], &yaml).ok();
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Pulls `repo:tag`'s manifest as a client does: a token for `repository:repo:pull`
/// from the token endpoint (with Basic credentials), then the manifest with it.
async fn pull_status(url: &str, user: &str, password: &str, repo: &str, tag: &str) -> u16 {
    let client = reqwest::Client::new();
    let token = client
        .get(format!(
            "{url}/auth/token?service=berth&scope=repository:{repo}:pull"
        ))
        .header("authorization", basic(user, password))
        .send()
        .await
        .unwrap();
    if token.status() != 200 {
        return token.status().as_u16();
    }
    let token: Value = token.json().await.unwrap();
    client
        .get(format!("{url}/v2/{repo}/manifests/{tag}"))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .header(
            "authorization",
            format!("Bearer {}", token["token"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Polls until `check` returns `want` (watch events take a moment to arrive).
async fn eventually<F, Fut>(what: &str, want: u16, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u16>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = check().await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {got}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A private berth Namespace (named after `prefix`) that `reader` may pull from, once Ready.
async fn private_namespace(cluster: &TestCluster, prefix: &str, reader: &str) -> String {
    let ns = cluster.unique(prefix);
    let members = json!([{"user": reader, "permission": "read"}]);
    cluster
        .create(&berth(
            "Namespace",
            &ns,
            json!({"visibility": "private", "members": members}),
        ))
        .await
        .unwrap();
    wait_ready(cluster, "Namespace", &ns, None).await;
    ns
}

#[tokio::test]
async fn members_and_visibility_changed_in_the_namespace_apply_to_the_next_request() {
    let Some(cluster) = TestCluster::start("auth-live").await else {
        return;
    };
    user_secret(&cluster, "alice", "alice-pw");
    user_secret(&cluster, "bob", "bob-pw");
    // A user declared without a password gets a generated one, readable in its Secret.
    let generated = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: user-gina\n  namespace: {}\n  labels: {{berth.dev/user: \"true\"}}\nstringData:\n  username: gina\n",
        cluster.namespace()
    );
    cluster
        .kubectl_stdin(&["apply", "-f", "-"], &generated)
        .ok();
    let first = operator(&cluster);
    let ns = private_namespace(&cluster, "secret", "alice").await;
    let repo = format!("{ns}/app");
    push_image(&first.url(), &repo, "v1", "live").await.unwrap();
    let url = first.url();

    eventually("alice, a reader, pulls", 200, || {
        pull_status(&url, "alice", "alice-pw", &repo, "v1")
    })
    .await;

    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(cluster.client(), cluster.namespace());
    let deadline = Instant::now() + Duration::from_secs(20);
    let gina_password = loop {
        let secret = secrets.get("user-gina").await.unwrap();
        if let Some(p) = secret.data.and_then(|d| d.get("password").cloned()) {
            break String::from_utf8(p.0).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no password was generated for gina"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(gina_password.len() >= 20, "{gina_password:?}");
    eventually(
        "gina signs in with the generated password (not a member: 403)",
        403,
        || pull_status(&url, "gina", &gina_password, &repo, "v1"),
    )
    .await;
    assert_eq!(pull_status(&url, "bob", "bob-pw", &repo, "v1").await, 403);
    assert_eq!(pull_status(&url, "bob", "wrong", &repo, "v1").await, 401);

    // Bob becomes a member: the next request is allowed, no restart.
    cluster
        .kubectl(&[
            "patch",
            "registrynamespaces.berth.dev",
            &ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"members":[{"user":"alice","permission":"read"},{"user":"bob","permission":"read"}]}}"#,
        ])
        .ok();
    eventually("bob, added as a reader, pulls", 200, || {
        pull_status(&url, "bob", "bob-pw", &repo, "v1")
    })
    .await;

    // Alice is removed and the namespace becomes internal: any signed-in user still pulls,
    // an anonymous caller still does not.
    cluster
        .kubectl(&[
            "patch",
            "registrynamespaces.berth.dev",
            &ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"visibility":"internal","members":[]}}"#,
        ])
        .ok();
    user_secret(&cluster, "carol", "carol-pw");
    eventually(
        "carol, any signed-in user, pulls from an internal namespace",
        200,
        || pull_status(&url, "carol", "carol-pw", &repo, "v1"),
    )
    .await;
    let anonymous = reqwest::get(format!("{url}/v2/{repo}/manifests/v1"))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    // A second replica shares the signing key: a token from one works on the other.
    let second = operator(&cluster);
    let token: Value = reqwest::Client::new()
        .get(format!(
            "{url}/auth/token?service=berth&scope=repository:{repo}:pull"
        ))
        .header("authorization", basic("carol", "carol-pw"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bearer = format!("Bearer {}", token["token"].as_str().unwrap());
    eventually("the other replica accepts the token", 404, || {
        let url = second.url();
        let bearer = bearer.clone();
        let repo = repo.clone();
        async move {
            // The second replica has its own (empty) data dir: 404 means "authorized, not here".
            reqwest::Client::new()
                .get(format!("{url}/v2/{repo}/manifests/v1"))
                .header("authorization", bearer)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    })
    .await;
}

#[tokio::test]
async fn a_pod_pulls_with_its_service_account_token() {
    let Some(cluster) = TestCluster::start("auth-sa").await else {
        return;
    };
    let op = operator(&cluster);
    let internal = cluster.unique("shared");
    let private = cluster.unique("closed");
    cluster
        .create(&berth(
            "Namespace",
            &internal,
            json!({"visibility": "internal"}),
        ))
        .await
        .unwrap();
    cluster
        .create(&berth(
            "Namespace",
            &private,
            json!({"visibility": "private"}),
        ))
        .await
        .unwrap();
    wait_ready(&cluster, "Namespace", &internal, None).await;
    wait_ready(&cluster, "Namespace", &private, None).await;
    for ns in [&internal, &private] {
        push_image(&op.url(), &format!("{ns}/app"), "v1", ns)
            .await
            .unwrap();
    }
    // Pods project a token for berth's audience (see the chart's README).
    let token = service_account_token(&cluster, "default", Some("berth"));
    let token = token.as_str();
    let url = op.url();
    assert_eq!(
        pull_status(
            &url,
            "serviceaccount",
            token,
            &format!("{internal}/app"),
            "v1"
        )
        .await,
        200,
        "a ServiceAccount is a signed-in user"
    );
    assert_eq!(
        pull_status(
            &url,
            "serviceaccount",
            token,
            &format!("{private}/app"),
            "v1"
        )
        .await,
        403
    );
    assert_eq!(
        pull_status(
            &url,
            "serviceaccount",
            "not-a-token",
            &format!("{internal}/app"),
            "v1"
        )
        .await,
        401
    );

    // Made a member by its Kubernetes user name, it pulls from the private namespace.
    let member = format!("system:serviceaccount:{}:default", cluster.namespace());
    cluster
        .kubectl(&[
            "patch",
            "registrynamespaces.berth.dev",
            &private,
            "--type=merge",
            "-p",
            &json!({"spec": {"members": [{"user": member, "permission": "read"}]}}).to_string(),
        ])
        .ok();
    let repo = format!("{private}/app");
    eventually("the ServiceAccount, now a reader, pulls", 200, || {
        pull_status(&url, "serviceaccount", token, &repo, "v1")
    })
    .await;
}

/// A token from `kubectl create token` for the ServiceAccount `name`, for `audience`
/// (the apiserver's own when `None`).
fn service_account_token(cluster: &TestCluster, name: &str, audience: Option<&str>) -> String {
    let mut args = vec!["create", "token", name, "-n", cluster.namespace()];
    if let Some(audience) = audience {
        args.extend(["--audience", audience]);
    }
    cluster.kubectl(&args).ok().trim().to_string()
}

/// The reply of the token endpoint to a ServiceAccount token: status and message.
async fn sign_in_with_token(url: &str, token: &str) -> (u16, String) {
    let reply = reqwest::Client::new()
        .get(format!("{url}/auth/token?service=berth"))
        .header("authorization", basic("serviceaccount", token))
        .send()
        .await
        .unwrap();
    (reply.status().as_u16(), reply.text().await.unwrap())
}

/// Only tokens issued for berth's audience sign in: a token a Pod holds for the
/// apiserver (or any other service) cannot be replayed against the registry. Deleting
/// the ServiceAccount revokes its tokens once the short review cache forgets them.
#[tokio::test]
async fn a_service_account_token_for_another_audience_is_refused_and_deletion_revokes() {
    let Some(cluster) = TestCluster::start("auth-sa-audience").await else {
        return;
    };
    let op = operator(&cluster);
    let url = op.url();
    cluster
        .kubectl(&[
            "create",
            "serviceaccount",
            "puller",
            "-n",
            cluster.namespace(),
        ])
        .ok();

    let for_berth = service_account_token(&cluster, "puller", Some("berth"));
    assert_eq!(sign_in_with_token(&url, &for_berth).await.0, 200);

    for other in [None, Some("vault")] {
        let token = service_account_token(&cluster, "puller", other);
        let (status, message) = sign_in_with_token(&url, &token).await;
        assert_eq!(status, 401, "audience {other:?}: {message}");
        assert!(
            message.contains("audience berth"),
            "the refusal says which audience to ask for: {message}"
        );
    }

    cluster
        .kubectl(&[
            "delete",
            "serviceaccount",
            "puller",
            "-n",
            cluster.namespace(),
        ])
        .ok();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, message) = sign_in_with_token(&url, &for_berth).await;
        if status == 401 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a deleted ServiceAccount still signs in: {status} {message}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A user annotated with Kubernetes namespaces gets a dockerconfigjson pull Secret in
/// each; its credential pulls what the user may pull; removing the annotation removes
/// the Secret.
#[tokio::test]
async fn an_annotated_user_gets_a_working_pull_secret_in_each_namespace() {
    let Some(cluster) = TestCluster::start("auth-pull-secret").await else {
        return;
    };
    let apps = cluster.fresh_namespace("apps").await;
    let selector = format!("{TEST_LABEL}={}", cluster.id());
    let op = Operator::start(
        &cluster,
        &[
            "--selector",
            &selector,
            "--registry-host",
            "registry.test:5000",
        ],
    );
    // deployer may push here: the pull Secret still may not.
    let ns = cluster.unique("private");
    let members = json!([{"user": "deployer", "permission": "write"}]);
    cluster
        .create(&berth(
            "Namespace",
            &ns,
            json!({"visibility": "private", "members": members}),
        ))
        .await
        .unwrap();
    wait_ready(&cluster, "Namespace", &ns, None).await;
    let repo = format!("{ns}/app");
    push_image(&op.url(), &repo, "v1", "pull-secret")
        .await
        .unwrap();

    let user = |annotation: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: user-deployer\n  namespace: {}\n  labels: {{berth.dev/user: \"true\"}}\n  annotations: {{berth.dev/pull-secret-namespaces: \"{annotation}\"}}\nstringData:\n  username: deployer\n  password: deployer-pw\n",
            cluster.namespace()
        )
    };
    cluster
        .kubectl_stdin(&["apply", "-f", "-"], &user(&apps))
        .ok();

    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(cluster.client(), &apps);
    let deadline = Instant::now() + Duration::from_secs(20);
    let pull = loop {
        if let Some(s) = secrets.get_opt("berth-pull-deployer").await.unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no pull Secret in {apps}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        pull.type_.as_deref(),
        Some("kubernetes.io/dockerconfigjson")
    );
    let config: Value = serde_json::from_slice(&pull.data.unwrap()[".dockerconfigjson"].0).unwrap();
    let entry = &config["auths"]["registry.test:5000"];
    assert_eq!(entry["username"], "deployer");
    let credential = entry["password"].as_str().unwrap();
    assert_ne!(
        credential, "deployer-pw",
        "the password itself is never copied"
    );
    assert_eq!(
        pull_status(&op.url(), "deployer", credential, &repo, "v1").await,
        200,
        "the pull Secret's credential pulls"
    );
    assert!(
        credential.starts_with("berth-p1."),
        "a pull-only credential, not the user's long-lived one: {credential}"
    );
    let start_upload = |password: &str| {
        reqwest::Client::new()
            .post(format!("{}/v2/{repo}/blobs/uploads/", op.url()))
            .header("authorization", basic("deployer", password))
            .send()
    };
    let refused = start_upload(credential).await.unwrap();
    assert_eq!(
        refused.status(),
        403,
        "the pull Secret's credential pushes nothing"
    );
    assert!(refused.text().await.unwrap().contains("DENIED"));
    assert_eq!(
        start_upload("deployer-pw").await.unwrap().status(),
        202,
        "while the user's own password pushes"
    );
    let token = reqwest::Client::new()
        .get(format!(
            "{}/auth/token?service=berth&offline_token=true&scope=repository:{repo}:pull,push",
            op.url()
        ))
        .header("authorization", basic("deployer", credential))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert!(
        token.get("refresh_token").is_none(),
        "no refresh token outlives the pull credential"
    );
    let payload = token["token"].as_str().unwrap().split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["access"][0]["actions"], json!(["pull"]), "{claims}");

    cluster.kubectl_stdin(&["apply", "-f", "-"], &user("")).ok();
    let deadline = Instant::now() + Duration::from_secs(20);
    while secrets
        .get_opt("berth-pull-deployer")
        .await
        .unwrap()
        .is_some()
    {
        assert!(Instant::now() < deadline, "the pull Secret was not removed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
