//! The JSON API: sessions, visibility exactly as the registry decides it, rendered
//! descriptions, pull counts, deletes.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::{api, auth, creds, password, start};

#[tokio::test]
async fn a_session_token_works_on_the_api_and_nowhere_else() {
    let registry = start().await;
    let (status, session) = api(
        &registry,
        Method::POST,
        "/api/session",
        None,
        Some(json!({"username": "rita", "password": password("rita")})),
    )
    .await;
    assert_eq!(status, 200, "{session}");
    let bearer = format!("Bearer {}", session["token"].as_str().unwrap());
    let (status, me) = api(&registry, Method::GET, "/api/session", Some(&bearer), None).await;
    assert_eq!((status, me["user"].as_str()), (200, Some("rita")), "{me}");
    // The session grants nothing on the registry API itself.
    let reply = registry
        .raw(Method::GET, "/v2/team/app/tags/list", Some(&bearer), None)
        .await;
    assert_eq!(reply.status, 401, "{}", reply.text());
    // A wrong password gets the registry's answer, and no token.
    let (status, body) = api(
        &registry,
        Method::POST,
        "/api/session",
        None,
        Some(json!({"username": "rita", "password": "wrong"})),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["message"], "wrong user name or password");
    // A registry token is not a session.
    let token = registry
        .token(&creds("rita"), &["repository:team/app:pull".into()])
        .await
        .unwrap();
    let registry_bearer = format!("Bearer {}", token["token"].as_str().unwrap());
    let (status, _) = api(
        &registry,
        Method::GET,
        "/api/namespaces",
        Some(&registry_bearer),
        None,
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_private_namespace_is_invisible_to_those_who_may_not_read_it() {
    let registry = start().await;
    registry.push(&creds("root"), "team/app", "v1", "t").await;
    registry.push(&creds("root"), "pub/app", "v1", "p").await;
    let names = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, anonymous) = api(&registry, Method::GET, "/api/namespaces", None, None).await;
    // `library` is berth's default public namespace.
    assert_eq!(names(&anonymous), ["library", "pub"]);
    let (_, olga) = api(
        &registry,
        Method::GET,
        "/api/namespaces",
        Some(&auth("olga")),
        None,
    )
    .await;
    assert_eq!(names(&olga), ["library", "pub"]);
    let (_, rita) = api(
        &registry,
        Method::GET,
        "/api/namespaces",
        Some(&auth("rita")),
        None,
    )
    .await;
    assert_eq!(names(&rita), ["library", "pub", "team"]);
    for who in [None, Some(auth("olga"))] {
        let (status, body) = api(
            &registry,
            Method::GET,
            "/api/repositories/team/app",
            who.as_deref(),
            None,
        )
        .await;
        assert_eq!(status, 404, "{body}");
        let (status, _) = api(
            &registry,
            Method::GET,
            "/api/namespaces/team/repositories",
            who.as_deref(),
            None,
        )
        .await;
        assert_eq!(status, 404);
        let (status, _) = api(
            &registry,
            Method::GET,
            "/api/repositories/team/app/-/tags/v1",
            who.as_deref(),
            None,
        )
        .await;
        assert_eq!(status, 404);
    }
    let (status, repo) = api(
        &registry,
        Method::GET,
        "/api/repositories/team/app",
        Some(&auth("rita")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{repo}");
    assert_eq!(
        repo["permissions"],
        json!({"pull": true, "push": false, "delete": false})
    );
}

#[tokio::test]
async fn a_description_is_rendered_and_nothing_in_it_can_run() {
    let registry = start().await;
    registry.push(&creds("root"), "pub/app", "v1", "p").await;
    let (status, repo) = api(
        &registry,
        Method::GET,
        "/api/repositories/pub/app",
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{repo}");
    let html = repo["descriptionHtml"].as_str().unwrap();
    assert!(html.contains("<h1>The app</h1>"), "{html}");
    assert!(html.contains("<strong>everything</strong>"), "{html}");
    assert!(
        !html.contains("<script") && !html.contains("<img"),
        "{html}"
    );
    assert!(html.contains("&lt;script&gt;"), "{html}");
    assert!(!html.contains("javascript:"), "{html}");
    assert_eq!(repo["category"], "web");
    assert_eq!(repo["labels"]["tier"], "frontend");
    let tag = &repo["tags"]["items"][0];
    assert_eq!(tag["tag"], "v1");
    let host = registry.berth.addr.clone();
    assert_eq!(
        tag["pull"]["docker"],
        format!("docker pull {host}/pub/app:v1")
    );
    assert_eq!(
        tag["pull"]["ctr"],
        format!("ctr image pull {host}/pub/app:v1")
    );
}

#[tokio::test]
async fn pull_counts_follow_manifest_gets_and_survive_a_restart() {
    let mut registry = start().await;
    let (digest, _) = registry.push(&creds("root"), "pub/app", "v1", "p").await;
    registry.push(&creds("root"), "pub/app", "v2", "q").await;
    for _ in 0..5 {
        let r = registry
            .raw(Method::GET, "/v2/pub/app/manifests/v1", None, None)
            .await;
        assert_eq!(r.status, 200);
    }
    // By digest counts for the same image; HEAD is no pull; a missing tag is not counted.
    registry
        .raw(
            Method::GET,
            &format!("/v2/pub/app/manifests/{digest}"),
            None,
            None,
        )
        .await;
    registry
        .raw(Method::HEAD, "/v2/pub/app/manifests/v1", None, None)
        .await;
    registry
        .raw(Method::GET, "/v2/pub/app/manifests/nope", None, None)
        .await;
    let pulls = |repo: &serde_json::Value, tag: &str| {
        repo["tags"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tag"] == tag)
            .map(|t| t["pulls"].as_u64().unwrap())
            .unwrap()
    };
    let (_, repo) = api(
        &registry,
        Method::GET,
        "/api/repositories/pub/app",
        None,
        None,
    )
    .await;
    assert_eq!((pulls(&repo, "v1"), pulls(&repo, "v2")), (6, 0), "{repo}");
    assert_eq!(repo["pullCount"], 6);
    // Flushed within the interval (5 s): a SIGKILL after it loses nothing.
    tokio::time::sleep(Duration::from_secs(7)).await;
    registry.berth.kill();
    registry.berth.restart();
    registry.wait_ready().await;
    let (_, repo) = api(
        &registry,
        Method::GET,
        "/api/repositories/pub/app",
        None,
        None,
    )
    .await;
    assert_eq!(pulls(&repo, "v1"), 6, "{repo}");
    let (_, list) = api(
        &registry,
        Method::GET,
        "/api/namespaces/pub/repositories?sort=pulls",
        None,
        None,
    )
    .await;
    assert_eq!(list["items"][0]["pulls"], 6, "{list}");
}

#[tokio::test]
async fn repositories_are_searched_sorted_and_paged() {
    let registry = start().await;
    for name in ["alpha", "beta", "gamma"] {
        registry
            .push(&creds("root"), &format!("pub/{name}"), "v1", name)
            .await;
    }
    for _ in 0..3 {
        registry
            .raw(Method::GET, "/v2/pub/beta/manifests/v1", None, None)
            .await;
    }
    let names = |v: &serde_json::Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, page) = api(
        &registry,
        Method::GET,
        "/api/namespaces/pub/repositories?per_page=2&page=2",
        None,
        None,
    )
    .await;
    assert_eq!(
        (names(&page), page["total"].as_u64()),
        (vec!["pub/gamma".to_string()], Some(3))
    );
    let (_, found) = api(
        &registry,
        Method::GET,
        "/api/namespaces/pub/repositories?q=amm",
        None,
        None,
    )
    .await;
    assert_eq!(names(&found), ["pub/gamma"]);
    let (_, by_pulls) = api(
        &registry,
        Method::GET,
        "/api/namespaces/pub/repositories?sort=pulls",
        None,
        None,
    )
    .await;
    assert_eq!(names(&by_pulls)[0], "pub/beta");
    let (status, _) = api(
        &registry,
        Method::GET,
        "/api/namespaces/pub/repositories?sort=size",
        None,
        None,
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn tags_are_deleted_in_a_batch_only_by_managers_and_never_immutable_ones() {
    let registry = start().await;
    for tag in ["a", "b", "c", "release-1"] {
        registry.push(&creds("root"), "pub/app", tag, tag).await;
    }
    let batch = json!({"tags": ["a", "b"]});
    let (status, body) = api(
        &registry,
        Method::POST,
        "/api/repositories/pub/app/-/delete-tags",
        Some(&auth("will")),
        Some(batch.clone()),
    )
    .await;
    assert_eq!(status, 403, "a writer may not delete: {body}");
    let (status, body) = api(
        &registry,
        Method::POST,
        "/api/repositories/pub/app/-/delete-tags",
        None,
        Some(batch.clone()),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = api(
        &registry,
        Method::POST,
        "/api/repositories/pub/app/-/delete-tags",
        Some(&auth("mona")),
        Some(json!({"tags": ["a", "b", "release-1"]})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[0], json!({"tag": "a", "deleted": true}));
    assert_eq!(body[1], json!({"tag": "b", "deleted": true}));
    assert_eq!(body[2]["deleted"], false);
    assert!(
        body[2]["error"].as_str().unwrap().contains("immutable"),
        "{body}"
    );
    let tags = registry
        .raw(Method::GET, "/v2/pub/app/tags/list", None, None)
        .await
        .json();
    assert_eq!(tags["tags"], json!(["c", "release-1"]));
    // One tag, and a whole repository (refused while it holds an immutable tag).
    let (status, _) = api(
        &registry,
        Method::DELETE,
        "/api/repositories/pub/app/-/tags/c",
        Some(&auth("mona")),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, body) = api(
        &registry,
        Method::DELETE,
        "/api/repositories/pub/app",
        Some(&auth("mona")),
        None,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    registry.push(&creds("root"), "pub/other", "v1", "o").await;
    let (status, body) = api(
        &registry,
        Method::DELETE,
        "/api/repositories/pub/other",
        Some(&auth("mona")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let r = registry
        .raw(Method::GET, "/v2/pub/other/manifests/v1", None, None)
        .await;
    assert_eq!(r.status, 404);
}
