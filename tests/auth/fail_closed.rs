//! A broken declaration never opens access: a Repository that cannot be read keeps its
//! last valid version, or, if it never had one, is private, whatever its namespace says.

use reqwest::Method;

use crate::registry::{Creds, Registry, basic, user_secret};

fn config(secret_repository_spec: &str) -> String {
    format!(
        r#"
apiVersion: berth.dev/v1alpha1
kind: Namespace
metadata: {{name: pub}}
spec: {{visibility: public}}
---
apiVersion: berth.dev/v1alpha1
kind: Repository
metadata: {{name: pub.secret}}
spec: {secret_repository_spec}
---
{}"#,
        user_secret("root", "root-password", true)
    )
}

const VALID: &str = "{namespace: pub, name: secret, visibility: private}";
/// An unknown visibility: the whole Repository cannot be parsed.
const UNPARSEABLE: &str = "{namespace: pub, name: secret, visibility: nobody}";
/// A regex where a glob is expected: it would protect no tag, so it is refused.
const INVALID: &str =
    "{namespace: pub, name: secret, visibility: private, immutableTags: [\"v[0-9]+\"]}";

/// Whether an anonymous client pulls `repo` (the token flow, as docker does).
async fn anonymous_pulls(registry: &Registry, repo: &str) -> bool {
    let status = registry
        .call(
            &Creds::Anonymous,
            Method::GET,
            &format!("/v2/{repo}/tags/list"),
            &[format!("repository:{repo}:pull")],
            None,
        )
        .await
        .status
        .as_u16();
    assert!(matches!(status, 200 | 401 | 403), "{repo}: {status}");
    status == 200
}

async fn wait_until_anonymous_pulls(registry: &Registry, repo: &str, pulls: bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while anonymous_pulls(registry, repo).await != pulls {
        assert!(
            std::time::Instant::now() < deadline,
            "anonymous pull of {repo} never became {pulls}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_broken_repository_in_a_public_namespace_is_never_public() {
    for broken in [UNPARSEABLE, INVALID] {
        let registry = Registry::start(&config(broken)).await;
        let root = Creds::user("root", "root-password");
        registry.push(&root, "pub/secret", "v1", "secret").await;
        registry.push(&root, "pub/open", "v1", "open").await;
        assert!(anonymous_pulls(&registry, "pub/open").await, "{broken}");
        assert!(!anonymous_pulls(&registry, "pub/secret").await, "{broken}");
        // Administrators still reach it, to repair what was pushed.
        let r = registry
            .raw(
                Method::GET,
                "/v2/pub/secret/tags/list",
                Some(&basic("root", "root-password")),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

#[tokio::test]
async fn a_repository_broken_after_it_was_valid_keeps_its_last_valid_version() {
    let registry = Registry::start(&config(VALID)).await;
    let root = Creds::user("root", "root-password");
    registry.push(&root, "pub/secret", "v1", "secret").await;
    assert!(!anonymous_pulls(&registry, "pub/secret").await);

    // Made public, it opens (the folder is reloaded)...
    registry.rewrite_config(&config(
        "{namespace: pub, name: secret, visibility: public}",
    ));
    wait_until_anonymous_pulls(&registry, "pub/secret", true).await;
    // ...made private again, it closes...
    registry.rewrite_config(&config(VALID));
    wait_until_anonymous_pulls(&registry, "pub/secret", false).await;
    // ...and broken, it stays as it last was, though its namespace is public.
    for broken in [
        UNPARSEABLE,
        INVALID,
        "{namespace: pub, name: secret, visibility: [unclosed",
    ] {
        registry.rewrite_config(&config(broken));
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        assert!(!anonymous_pulls(&registry, "pub/secret").await, "{broken}");
    }
}
