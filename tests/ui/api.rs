//! The JSON API: sessions, visibility exactly as the registry decides it, rendered
//! descriptions, pull counts, deletes.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::registry::Registry;
use crate::{api, auth, creds, password, start};

/// Signs in through the API as a page does; the `Set-Cookie` header and the JSON answer.
pub async fn sign_in(registry: &Registry, user: &str, extra: &[(&str, &str)]) -> (String, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{}/api/session", registry.url()))
        .json(&json!({"username": user, "password": password(user)}));
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let reply = request.send().await.unwrap();
    assert_eq!(reply.status(), 200, "signing in as {user}");
    let cookie = reply
        .headers()
        .get("set-cookie")
        .expect("a sign-in sets the session cookie")
        .to_str()
        .unwrap()
        .to_string();
    (cookie, reply.json().await.unwrap())
}

/// A request from a browser holding `cookie` (the `name=value` part of a `Set-Cookie`).
async fn with_cookie(
    registry: &Registry,
    method: Method,
    path: &str,
    cookie: &str,
    extra: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("{}{path}", registry.url()))
        .header("cookie", cookie);
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let reply = request.send().await.unwrap();
    let status = reply.status().as_u16();
    (status, reply.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_session_cookie_is_http_only_same_site_and_works_on_the_api_and_nowhere_else() {
    let registry = start().await;
    let (set_cookie, session) = sign_in(&registry, "rita", &[]).await;
    let attributes: Vec<&str> = set_cookie.split(';').map(str::trim).collect();
    for wanted in ["Path=/", "HttpOnly", "SameSite=Strict"] {
        assert!(attributes.contains(&wanted), "{wanted} in {set_cookie}");
    }
    assert!(
        attributes.iter().any(|a| a.starts_with("Max-Age=")),
        "{set_cookie}"
    );
    assert!(!attributes.contains(&"Secure"), "plain HTTP: {set_cookie}");
    // The page never sees the session itself, only the CSRF token for its writes.
    assert!(session.get("token").is_none(), "{session}");
    assert_eq!(
        session["csrfToken"].as_str().unwrap().len(),
        64,
        "{session}"
    );
    let cookie = attributes[0];
    assert!(cookie.starts_with("berth_session="), "{set_cookie}");
    let (status, me) = with_cookie(&registry, Method::GET, "/api/session", cookie, &[], None).await;
    assert_eq!((status, me["user"].as_str()), (200, Some("rita")), "{me}");
    assert_eq!(me["csrfToken"], session["csrfToken"]);
    let (status, namespaces) =
        with_cookie(&registry, Method::GET, "/api/namespaces", cookie, &[], None).await;
    assert_eq!(status, 200);
    assert!(namespaces.to_string().contains("\"team\""), "{namespaces}");
    // The session grants nothing on the registry API itself.
    let bearer = format!("Bearer {}", cookie.trim_start_matches("berth_session="));
    let reply = registry
        .raw(Method::GET, "/v2/team/app/tags/list", Some(&bearer), None)
        .await;
    assert_eq!(reply.status, 401, "{}", reply.text());
    // Behind a TLS-terminating proxy the cookie is Secure.
    let (over_tls, _) = sign_in(&registry, "rita", &[("x-forwarded-proto", "https")]).await;
    assert!(
        over_tls.split(';').map(str::trim).any(|a| a == "Secure"),
        "{over_tls}"
    );
    // A wrong password gets the registry's answer, and no cookie.
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
    // A cookie that is not a session berth signed is refused, and removed.
    let (status, body) = with_cookie(
        &registry,
        Method::GET,
        "/api/namespaces",
        "berth_session=forged.token.value",
        &[],
        None,
    )
    .await;
    assert_eq!(status, 401, "{body}");
    // Signing out removes the cookie (with the CSRF token, like every cookie write).
    let csrf = session["csrfToken"].as_str().unwrap();
    let reply = reqwest::Client::new()
        .delete(format!("{}/api/session", registry.url()))
        .header("cookie", cookie)
        .header("x-berth-csrf", csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 204);
    let cleared = reply.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cleared.starts_with("berth_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
}

#[tokio::test]
async fn a_forged_cross_site_write_with_the_cookie_is_refused() {
    let registry = start().await;
    for tag in ["a", "b"] {
        registry.push(&creds("root"), "pub/app", tag, tag).await;
    }
    let (set_cookie, session) = sign_in(&registry, "mona", &[]).await;
    let cookie = set_cookie.split(';').next().unwrap();
    let csrf = session["csrfToken"].as_str().unwrap();
    let batch = json!({"tags": ["a"]});
    let path = "/api/repositories/pub/app/-/delete-tags";
    // What another site's page can send: the browser adds the cookie, but the page
    // cannot know the CSRF token.
    let (status, body) = with_cookie(
        &registry,
        Method::POST,
        path,
        cookie,
        &[
            ("origin", "https://evil.example"),
            ("sec-fetch-site", "cross-site"),
        ],
        Some(batch.clone()),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "CSRF_REJECTED", "{body}");
    // Without browser markers, the missing token alone refuses it.
    let (status, body) = with_cookie(
        &registry,
        Method::POST,
        path,
        cookie,
        &[],
        Some(batch.clone()),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("CSRF_REJECTED")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("x-berth-csrf"),
        "{body}"
    );
    // A token from another session does not do either.
    let (_, rita) = sign_in(&registry, "rita", &[]).await;
    let other = rita["csrfToken"].as_str().unwrap();
    let (status, body) = with_cookie(
        &registry,
        Method::DELETE,
        "/api/repositories/pub/app/-/tags/a",
        cookie,
        &[("x-berth-csrf", other)],
        None,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // Even with the right token, a write another site sends is refused.
    let (status, _) = with_cookie(
        &registry,
        Method::POST,
        path,
        cookie,
        &[("x-berth-csrf", csrf), ("sec-fetch-site", "cross-site")],
        Some(batch.clone()),
    )
    .await;
    assert_eq!(status, 403);
    let tags = registry
        .raw(Method::GET, "/v2/pub/app/tags/list", None, None)
        .await
        .json();
    assert_eq!(tags["tags"], json!(["a", "b"]), "nothing was deleted");
    // berth's own page sends the token and is from berth's origin.
    let host = registry.url().trim_start_matches("http://").to_string();
    let origin = registry.url();
    let (status, body) = with_cookie(
        &registry,
        Method::POST,
        path,
        cookie,
        &[
            ("x-berth-csrf", csrf),
            ("sec-fetch-site", "same-origin"),
            ("origin", &origin),
            ("host", &host),
        ],
        Some(batch),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[0], json!({"tag": "a", "deleted": true}));
    // Another site cannot sign a user in either (login CSRF).
    let reply = reqwest::Client::new()
        .post(format!("{}/api/session", registry.url()))
        .header("sec-fetch-site", "cross-site")
        .json(&json!({"username": "rita", "password": password("rita")}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 403);
    assert!(reply.headers().get("set-cookie").is_none());
    // Scripts with Basic credentials need no token.
    let (status, body) = api(
        &registry,
        Method::POST,
        path,
        Some(&auth("mona")),
        Some(json!({"tags": ["b"]})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
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

/// Listings come from an in-memory summary of each repository; every push, delete and
/// pull must show in them at once, and a restart (an empty summary) must agree.
#[tokio::test]
async fn pushes_deletes_and_pulls_show_at_once_in_sorted_listings_and_usage() {
    let mut registry = crate::start_with_args(&["--pull-count-flush", "1s"]).await;
    registry.push(&creds("root"), "pub/alpha", "v1", "a1").await;
    registry.push(&creds("root"), "pub/beta", "v1", "b1").await;
    let list = |sort| listing(&registry, sort);
    // Fill the summaries.
    assert_eq!(list("tags").await[0].1, 1);
    let (tags, bytes) = usage(&registry).await;
    assert_eq!(tags, 2);
    // A push into alpha: it leads by tags and by last push, and usage grows.
    for tag in ["v2", "v3"] {
        registry.push(&creds("root"), "pub/alpha", tag, tag).await;
    }
    assert_eq!(list("tags").await[0], ("pub/alpha".into(), 3, 0));
    registry.push(&creds("root"), "pub/beta", "v2", "b2").await;
    assert_eq!(list("pushed").await[0].0, "pub/beta");
    let (tags, grown) = usage(&registry).await;
    assert_eq!(tags, 5);
    assert!(grown > bytes, "{grown} > {bytes}");
    // Pulls show at once (unflushed counts included).
    for _ in 0..2 {
        let reply = registry
            .raw(Method::GET, "/v2/pub/beta/manifests/v1", None, None)
            .await;
        assert_eq!(reply.status, 200);
    }
    assert_eq!(list("pulls").await[0], ("pub/beta".into(), 2, 2));
    // Deletes: alpha loses two tags and falls behind beta by tags.
    for tag in ["v2", "v3"] {
        let (status, body) = api(
            &registry,
            Method::DELETE,
            &format!("/api/repositories/pub/alpha/-/tags/{tag}"),
            Some(&auth("mona")),
            None,
        )
        .await;
        assert_eq!(status, 204, "{body}");
    }
    let by_tags = list("tags").await;
    assert_eq!(by_tags[0], ("pub/beta".into(), 2, 2));
    assert_eq!(by_tags[1].1, 1);
    assert_eq!(usage(&registry).await.0, 3);
    // A restart starts with no summaries; storage says the same (the pulls were
    // flushed: the interval is 1 s).
    let before = (list("tags").await, list("pulls").await);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    registry.berth.restart();
    registry.wait_ready().await;
    assert_eq!(
        (
            listing(&registry, "tags").await,
            listing(&registry, "pulls").await
        ),
        before
    );
    assert_eq!(usage(&registry).await.0, 3);
}

/// A namespace's repositories sorted by `sort`: (name, tags, pulls) each.
async fn listing(registry: &Registry, sort: &str) -> Vec<(String, u64, u64)> {
    let (status, page) = api(
        registry,
        Method::GET,
        &format!("/api/namespaces/pub/repositories?sort={sort}"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["tags"].as_u64().unwrap(),
                r["pulls"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The `pub` namespace's (tags, bytes) in `/api/namespaces`.
async fn usage(registry: &Registry) -> (u64, u64) {
    let (_, namespaces) = api(registry, Method::GET, "/api/namespaces", None, None).await;
    let ns = namespaces
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "pub")
        .unwrap()
        .clone();
    (ns["tags"].as_u64().unwrap(), ns["bytes"].as_u64().unwrap())
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
