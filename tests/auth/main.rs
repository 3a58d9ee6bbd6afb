//! Who may do what: users, the token flow, visibility, members, sharing, against a
//! real berth serving a config folder. The permission matrix states, for every kind of
//! caller and every class of endpoint, the status a client gets.

#[path = "../common/mod.rs"]
mod common;
mod fail_closed;
mod matrix;
mod registry;

use std::collections::BTreeMap;
use std::time::Duration;

use registry::{Creds, Registry, login_command, user_secret};
use reqwest::Method;
use serde_json::json;

const TEAMS: &str = r#"
apiVersion: berth.dev/v1alpha1
kind: Namespace
metadata: {name: team-a}
spec:
  visibility: private
  members:
    - {user: rita, permission: read}
    - {user: will, permission: write}
    - {user: mona, permission: manage}
---
apiVersion: berth.dev/v1alpha1
kind: Namespace
metadata: {name: team-b}
spec:
  visibility: private
  members:
    - {user: olga, permission: write}
---
apiVersion: berth.dev/v1alpha1
kind: Repository
metadata: {name: team-a.web}
spec:
  namespace: team-a
  name: web
  sharing:
    - {user: erin, until: "2099-01-01T00:00:00Z"}
    - {user: frank, until: "2020-01-01T00:00:00Z"}
---
"#;

const USERS: [(&str, bool); 7] = [
    ("root", true),
    ("rita", false),
    ("will", false),
    ("mona", false),
    ("olga", false),
    ("erin", false),
    ("frank", false),
];

fn password(user: &str) -> String {
    format!("{user}-password")
}

fn config() -> String {
    let mut config = TEAMS.to_string();
    for (user, admin) in USERS {
        config.push_str(&user_secret(user, &password(user), admin));
    }
    config
}

fn creds(user: &str) -> Creds {
    Creds::user(user, &password(user))
}

fn repo_scope(repo: &str, actions: &str) -> String {
    format!("repository:{repo}:{actions}")
}

/// Expected statuses, one column per caller, in this order.
const CALLERS: [&str; 9] = [
    "anonymous",
    "rita(read)",
    "will(write)",
    "mona(manage)",
    "olga(other ns)",
    "erin(shared)",
    "frank(share expired)",
    "expired temporary",
    "root(admin)",
];

#[tokio::test]
async fn the_permission_matrix_holds_for_every_caller_and_endpoint() {
    let registry = Registry::start(&config()).await;
    let root = creds("root");
    let (digest, layer) = registry.push(&root, "team-a/web", "v1", "main").await;

    // An expired temporary credential of a writer: the writer's rights, if it still worked.
    let expired = login_command(
        registry.config_dir.path(),
        &registry.berth.data_dir,
        "will",
        &["--temporary", "--valid-for", "1s"],
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let callers: Vec<Creds> = vec![
        Creds::Anonymous,
        creds("rita"),
        creds("will"),
        creds("mona"),
        creds("olga"),
        creds("erin"),
        creds("frank"),
        Creds::user("will", &expired),
        root.clone(),
    ];
    // Every caller deletes its own tag and its own manifest, so cells do not interfere.
    let mut own_manifests = Vec::new();
    for (i, _) in callers.iter().enumerate() {
        registry
            .tag(&root, "team-a/web", &digest, &format!("t{i}"))
            .await;
        let (own, _) = registry
            .push(&root, "team-a/web", &format!("m{i}"), &format!("own {i}"))
            .await;
        own_manifests.push(own);
    }

    let web_pull = vec![repo_scope("team-a/web", "pull")];
    // Every read that needs `pull` on team-a/web.
    let pulls = [
        (
            "GET manifest",
            Method::GET,
            "/v2/team-a/web/manifests/v1".to_string(),
        ),
        (
            "HEAD manifest",
            Method::HEAD,
            format!("/v2/team-a/web/manifests/{digest}"),
        ),
        (
            "GET blob",
            Method::GET,
            format!("/v2/team-a/web/blobs/{layer}"),
        ),
        (
            "HEAD blob",
            Method::HEAD,
            format!("/v2/team-a/web/blobs/{layer}"),
        ),
        (
            "tag list",
            Method::GET,
            "/v2/team-a/web/tags/list".to_string(),
        ),
        (
            "referrers",
            Method::GET,
            format!("/v2/team-a/web/referrers/{digest}"),
        ),
    ];
    let mut actual: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (i, caller) in callers.iter().enumerate() {
        let mut row = |cell: &'static str, value: String| {
            actual.entry(cell).or_default().push(value);
        };
        let status = |r: &registry::Reply| r.status.as_u16().to_string();
        for (cell, method, path) in &pulls {
            let r = registry
                .call(caller, method.clone(), path, &web_pull, None)
                .await;
            row(cell, status(&r));
        }
        let r = registry
            .call(
                caller,
                Method::POST,
                "/v2/team-a/web/blobs/uploads/",
                &[repo_scope("team-a/web", "pull,push")],
                None,
            )
            .await;
        row("push (start upload)", status(&r));
        for target in ["team-a/copy", "team-b/copy"] {
            let r = registry
                .call(
                    caller,
                    Method::POST,
                    &format!("/v2/{target}/blobs/uploads/?mount={layer}&from=team-a/web"),
                    &[
                        repo_scope(target, "pull,push"),
                        repo_scope("team-a/web", "pull"),
                    ],
                    None,
                )
                .await;
            row(
                if target == "team-a/copy" {
                    "mount team-a/web → team-a/copy"
                } else {
                    "mount team-a/web → team-b/copy"
                },
                status(&r),
            );
        }
        let r = registry
            .call(
                caller,
                Method::DELETE,
                &format!("/v2/team-a/web/manifests/t{i}"),
                &[repo_scope("team-a/web", "delete")],
                None,
            )
            .await;
        row("DELETE tag", status(&r));
        let r = registry
            .call(
                caller,
                Method::DELETE,
                &format!("/v2/team-a/web/manifests/{}", own_manifests[i]),
                &[repo_scope("team-a/web", "delete")],
                None,
            )
            .await;
        row("DELETE manifest", status(&r));
        let r = registry
            .call(
                caller,
                Method::GET,
                "/v2/_catalog",
                &["registry:catalog:*".to_string()],
                None,
            )
            .await;
        let listed = r.json()["repositories"]
            .as_array()
            .is_some_and(|l| l.contains(&json!("team-a/web")));
        row(
            "catalog (lists team-a/web?)",
            match (r.status.as_u16(), listed) {
                (200, true) => "listed".into(),
                (200, false) => "hidden".into(),
                (s, _) => s.to_string(),
            },
        );
        let granted = match registry
            .token(caller, &[repo_scope("team-a/web", "pull,push,delete")])
            .await
        {
            Ok(token) => {
                let payload = token["token"].as_str().unwrap().split('.').nth(1).unwrap();
                let claims: serde_json::Value = serde_json::from_slice(
                    &base64::Engine::decode(
                        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                        payload,
                    )
                    .unwrap(),
                )
                .unwrap();
                let actions: Vec<String> = claims["access"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|a| a["actions"].as_array().unwrap().clone())
                    .map(|a| a.as_str().unwrap().to_string())
                    .collect();
                if actions.is_empty() {
                    "-".to_string()
                } else {
                    actions.join("+")
                }
            }
            Err(reply) => reply.status.as_u16().to_string(),
        };
        row("token for pull,push,delete", granted);
    }

    let expected: BTreeMap<&str, Vec<&str>> = BTreeMap::from([
        //                                     anon   rita    will   mona   olga  erin    frank  expired root
        (
            "GET manifest",
            vec![
                "401", "200", "200", "200", "403", "200", "403", "401", "200",
            ],
        ),
        (
            "HEAD manifest",
            vec![
                "401", "200", "200", "200", "403", "200", "403", "401", "200",
            ],
        ),
        (
            "GET blob",
            vec![
                "401", "200", "200", "200", "403", "200", "403", "401", "200",
            ],
        ),
        (
            "HEAD blob",
            vec![
                "401", "200", "200", "200", "403", "200", "403", "401", "200",
            ],
        ),
        (
            "tag list",
            vec![
                "401", "200", "200", "200", "403", "200", "403", "401", "200",
            ],
        ),
        (
            "referrers",
            vec![
                "401", "200", "200", "200", "403", "200", "403", "401", "200",
            ],
        ),
        (
            "push (start upload)",
            vec![
                "401", "403", "202", "202", "403", "403", "403", "401", "202",
            ],
        ),
        (
            "mount team-a/web → team-a/copy",
            vec![
                "401", "403", "201", "201", "403", "403", "403", "401", "201",
            ],
        ),
        // olga may push to team-b but not read team-a/web: a plain upload starts instead.
        (
            "mount team-a/web → team-b/copy",
            vec![
                "401", "403", "403", "403", "202", "403", "403", "401", "201",
            ],
        ),
        (
            "DELETE tag",
            vec![
                "401", "403", "403", "202", "403", "403", "403", "401", "202",
            ],
        ),
        (
            "DELETE manifest",
            vec![
                "401", "403", "403", "202", "403", "403", "403", "401", "202",
            ],
        ),
        (
            "catalog (lists team-a/web?)",
            vec![
                "401", "listed", "listed", "listed", "hidden", "listed", "hidden", "401", "listed",
            ],
        ),
        (
            "token for pull,push,delete",
            vec![
                "-",
                "pull",
                "pull+push",
                "pull+push+delete",
                "-",
                "pull",
                "-",
                "401",
                "pull+push+delete",
            ],
        ),
    ]);

    let mut differences = Vec::new();
    for (cell, want) in &expected {
        let got = &actual[cell];
        for (i, caller) in CALLERS.iter().enumerate() {
            if got[i] != want[i] {
                differences.push(format!(
                    "{cell} as {caller}: expected {}, got {}",
                    want[i], got[i]
                ));
            }
        }
    }
    assert!(
        differences.is_empty(),
        "the permission matrix differs:\n{}",
        differences.join("\n")
    );
}

/// Encoded dots, `..`, doubled slashes and upper case never reach another repository:
/// each is refused as an invalid name, whoever asks.
#[tokio::test]
async fn no_path_case_or_encoding_trick_reaches_a_private_repository() {
    let registry = Registry::start(&config()).await;
    let root = creds("root");
    registry.push(&root, "team-a/web", "v1", "main").await;
    let olga = creds("olga");
    let olga_scope = vec![repo_scope("team-b/x", "pull,push")];
    for path in [
        "/v2/team-b/../team-a/web/manifests/v1",
        "/v2/team-b/x/%2e%2e/%2e%2e/team-a/web/manifests/v1",
        "/v2/team-b/%2e%2e/team-a/web/manifests/v1",
        "/v2/team-a//web/manifests/v1",
        "/v2//team-a/web/manifests/v1",
        "/v2/TEAM-A/web/manifests/v1",
        "/v2/Team-a/Web/manifests/v1",
        "/v2/team-a/%77eb/manifests/v1",
        "/v2/team-a/web%2fmanifests/v1",
    ] {
        for caller in [&Creds::Anonymous, &olga] {
            let r = registry
                .call(caller, Method::GET, path, &olga_scope, None)
                .await;
            assert!(
                matches!(r.status.as_u16(), 400 | 401 | 403 | 404),
                "{path} as {caller:?} answered {}: {}",
                r.status,
                r.text()
            );
            assert!(
                !r.text().contains("schemaVersion"),
                "{path} leaked the manifest"
            );
        }
    }
    // A token for one repository does not open another.
    let token = registry.token(&olga, &olga_scope).await.unwrap();
    let bearer = format!("Bearer {}", token["token"].as_str().unwrap());
    let r = registry
        .raw(
            Method::GET,
            "/v2/team-a/web/manifests/v1",
            Some(&bearer),
            None,
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
}

/// The refusals say what is wrong: a challenge that names the scope for the unknown
/// caller, and for a known one which namespace and which permission is missing.
#[tokio::test]
async fn refusals_say_which_namespace_and_permission_are_missing() {
    let registry = Registry::start(&config()).await;
    let r = registry
        .raw(Method::GET, "/v2/team-a/web/tags/list", None, None)
        .await;
    assert_eq!(r.status, 401);
    let challenge = r.headers["www-authenticate"].to_str().unwrap();
    assert_eq!(
        challenge,
        format!(
            "Bearer realm=\"{}/auth/token\",service=\"berth\",scope=\"repository:team-a/web:pull\"",
            registry.url()
        )
    );
    assert_eq!(r.json()["errors"][0]["code"], "UNAUTHORIZED");

    let r = registry
        .call(
            &creds("rita"),
            Method::POST,
            "/v2/team-a/web/blobs/uploads/",
            &[repo_scope("team-a/web", "pull,push")],
            None,
        )
        .await;
    assert_eq!(r.status, 403);
    let error = &r.json()["errors"][0];
    assert_eq!(error["code"], "DENIED");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("\"rita\"") && message.contains("write") && message.contains("team-a"),
        "{message}"
    );

    let r = registry
        .call(
            &creds("will"),
            Method::POST,
            "/v2/team-z/app/blobs/uploads/",
            &[repo_scope("team-z/app", "pull,push")],
            None,
        )
        .await;
    assert_eq!(r.status, 403);
    assert!(
        r.text().contains("team-z") && r.text().contains("does not exist"),
        "{}",
        r.text()
    );

    let r = registry
        .raw(Method::GET, "/v2/", Some("Basic d2lsbDpndWVzcw=="), None)
        .await;
    assert_eq!(r.status, 401, "a wrong password is refused: {}", r.text());
}

/// A long-lived credential from `berth login-command` works like the password, for
/// Basic auth and the token endpoint, and dies when the password changes.
#[tokio::test]
async fn login_command_credentials_work_until_the_password_changes() {
    let registry = Registry::start(&config()).await;
    let credential = login_command(
        registry.config_dir.path(),
        &registry.berth.data_dir,
        "will",
        &[],
    );
    let will = Creds::user("will", &credential);
    registry
        .push(&will, "team-a/app", "v1", "by credential")
        .await;
    let temporary = login_command(
        registry.config_dir.path(),
        &registry.berth.data_dir,
        "will",
        &["--temporary"],
    );
    assert!(
        registry
            .token(
                &Creds::user("will", &temporary),
                &[repo_scope("team-a/app", "pull")]
            )
            .await
            .is_ok()
    );

    registry.rewrite_config(&config().replace("will-password", "will-new-password"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let refused = registry.token(&will, &[]).await.is_err();
        if refused {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the old credential still works"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Membership and visibility changes apply to the next request, without a restart.
#[tokio::test]
async fn a_membership_change_applies_to_the_next_request() {
    let registry = Registry::start(&config()).await;
    registry.push(&creds("root"), "team-b/app", "v1", "b").await;
    let scope = vec![repo_scope("team-b/app", "pull")];
    let r = registry
        .call(
            &creds("rita"),
            Method::GET,
            "/v2/team-b/app/manifests/v1",
            &scope,
            None,
        )
        .await;
    assert_eq!(r.status, 403);

    registry.rewrite_config(&config().replace(
        "    - {user: olga, permission: write}",
        "    - {user: olga, permission: write}\n    - {user: rita, permission: read}",
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = registry
            .call(
                &creds("rita"),
                Method::GET,
                "/v2/team-b/app/manifests/v1",
                &scope,
                None,
            )
            .await;
        if r.status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rita never got read: {}",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// containerd and docker exchange a refresh token (POST, OAuth2 form) instead of
/// sending the password again.
#[tokio::test]
async fn a_refresh_token_gets_new_access_tokens() {
    let registry = Registry::start(&config()).await;
    let http = reqwest::Client::new();
    let form = |pairs: &[(&str, &str)]| {
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        http.post(format!("{}/auth/token", registry.url()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
    };
    let r = form(&[
        ("grant_type", "password"),
        ("username", "will"),
        ("password", "will-password"),
        ("service", "berth"),
        ("client_id", "test"),
        ("access_type", "offline"),
        ("scope", "repository:team-a/web:pull,push"),
    ])
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    let refresh = body["refresh_token"]
        .as_str()
        .expect("a refresh token")
        .to_string();
    assert!(body["access_token"].is_string());

    let r = form(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", &refresh),
        ("service", "berth"),
        ("client_id", "test"),
        ("scope", "repository:team-a/web:pull"),
    ])
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    let access = body["access_token"].as_str().unwrap();
    let r = registry
        .raw(
            Method::GET,
            "/v2/team-a/web/tags/list",
            Some(&format!("Bearer {access}")),
            None,
        )
        .await;
    assert_eq!(
        r.status,
        404,
        "authorized; the repository is empty: {}",
        r.text()
    );

    let r = form(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", access),
        ("service", "berth"),
    ])
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 401, "an access token is not a refresh token");
}

const LIMITED: &str = r#"
apiVersion: berth.dev/v1alpha1
kind: Namespace
metadata: {name: small}
spec:
  quota: {maxTags: 3}
---
apiVersion: berth.dev/v1alpha1
kind: Repository
metadata: {name: small.app}
spec:
  namespace: small
  name: app
  quota: {maxBytes: 2000}
  immutableTags: ["v*"]
---
"#;

fn limited_config() -> String {
    format!("{LIMITED}{}", user_secret("root", "root-password", true))
}

/// A manifest naming blobs nobody pushed: limits are checked before references, so
/// it is refused for the limit, not for the missing blobs.
fn manifest_of_unknown_blobs() -> Vec<u8> {
    let config = format!("sha256:{}", "0".repeat(64));
    let layer = format!("sha256:{}", "1".repeat(64));
    json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 0},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": 0}],
    })
    .to_string()
    .into_bytes()
}

/// A push that would exceed a repository's byte quota or a namespace's tag quota is
/// refused with a message naming the quota, and nothing of it is stored.
#[tokio::test]
async fn quotas_refuse_the_push_that_would_exceed_them_and_store_nothing() {
    let registry = Registry::start(&limited_config()).await;
    let root = creds("root");
    let auth = registry::basic("root", "root-password");
    registry.push(&root, "small/app", "v1", "first").await;

    // 3000 bytes in one POST: over the 2000-byte quota.
    let big = vec![7u8; 3000];
    let digest = common::sha256(&big);
    let r = registry
        .raw(
            Method::POST,
            &format!("/v2/small/app/blobs/uploads/?digest={digest}"),
            Some(&auth),
            Some(("application/octet-stream", big.clone())),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.text().contains("maxBytes") && r.text().contains("small/app"),
        "{}",
        r.text()
    );
    let head = registry
        .raw(
            Method::HEAD,
            &format!("/v2/small/app/blobs/{digest}"),
            Some(&auth),
            None,
        )
        .await;
    assert_eq!(
        head.status, 404,
        "the refused blob is not in the repository"
    );

    // The same in a chunked upload: refused at the chunk, and the session is gone.
    let start = registry
        .raw(
            Method::POST,
            "/v2/small/app/blobs/uploads/",
            Some(&auth),
            None,
        )
        .await;
    assert_eq!(start.status, 202);
    let location = start.headers["location"].to_str().unwrap().to_string();
    let patch = registry
        .raw(
            Method::PATCH,
            &location,
            Some(&auth),
            Some(("application/octet-stream", big)),
        )
        .await;
    assert_eq!(patch.status, 403, "{}", patch.text());
    let status = registry
        .raw(Method::GET, &location, Some(&auth), None)
        .await;
    assert_eq!(status.status, 404, "the upload session was dropped");

    // The namespace holds at most 3 tags: v1 plus two more, then no more.
    registry.push(&root, "small/other", "a", "a").await;
    registry.push(&root, "small/other", "b", "b").await;
    let r = registry
        .raw(
            Method::PUT,
            "/v2/small/other/manifests/c",
            Some(&auth),
            Some((
                "application/vnd.oci.image.manifest.v1+json",
                manifest_of_unknown_blobs(),
            )),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.text().contains("maxTags") && r.text().contains("namespace small"),
        "{}",
        r.text()
    );
    let tags = registry
        .raw(Method::GET, "/v2/small/other/tags/list", Some(&auth), None)
        .await;
    assert_eq!(tags.json()["tags"], json!(["a", "b"]));
    // Re-pointing an existing tag adds none: allowed.
    registry.push(&root, "small/other", "a", "a again").await;
}

/// Tags matching `spec.immutableTags` cannot be overwritten with other content or
/// deleted, directly or through their manifest; other tags can.
#[tokio::test]
async fn immutable_tags_can_be_neither_overwritten_nor_deleted() {
    let registry = Registry::start(&limited_config()).await;
    let root = creds("root");
    let auth = registry::basic("root", "root-password");
    let (digest, _) = registry.push(&root, "small/app", "v1", "release").await;

    let manifest = registry
        .raw(Method::GET, "/v2/small/app/manifests/v1", Some(&auth), None)
        .await
        .body;
    // The same content again is not an overwrite.
    let r = registry
        .raw(
            Method::PUT,
            "/v2/small/app/manifests/v1",
            Some(&auth),
            Some(("application/vnd.oci.image.manifest.v1+json", manifest)),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());

    // Other content under v1 is refused, and v1 still points where it did.
    let r = registry
        .raw(
            Method::PUT,
            "/v2/small/app/manifests/v1",
            Some(&auth),
            Some((
                "application/vnd.oci.image.manifest.v1+json",
                manifest_of_unknown_blobs(),
            )),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.text().contains("immutable") && r.text().contains("v*"),
        "{}",
        r.text()
    );
    for reference in ["v1", digest.as_str()] {
        let r = registry
            .raw(
                Method::DELETE,
                &format!("/v2/small/app/manifests/{reference}"),
                Some(&auth),
                None,
            )
            .await;
        assert_eq!(r.status, 403, "deleting {reference}: {}", r.text());
    }
    let r = registry
        .raw(
            Method::HEAD,
            "/v2/small/app/manifests/v1",
            Some(&auth),
            None,
        )
        .await;
    assert_eq!(r.headers["docker-content-digest"].to_str().unwrap(), digest);

    // A tag outside the patterns is mutable.
    registry.tag(&root, "small/app", &digest, "latest").await;
    let r = registry
        .raw(
            Method::DELETE,
            "/v2/small/app/manifests/latest",
            Some(&auth),
            None,
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
}
