//! The web UI's API and pages against a real berth serving a config folder: sign-in
//! sessions, what each caller sees, sanitised descriptions, pull counts, batch
//! deletes, tarball uploads (built here, plain and gzip, good and broken), and the
//! pages in headless Chromium.

#[path = "../common/mod.rs"]
mod common;
#[path = "../auth/registry.rs"]
#[allow(dead_code)]
mod registry;

mod api;
mod browser;
mod cdp;
mod clicks;
mod tarball;
mod upload;

use registry::{Creds, Registry, basic, user_secret};
use reqwest::Method;
use serde_json::Value;

pub const CONFIG: &str = r#"
apiVersion: berth.dev/v1alpha1
kind: Namespace
metadata: {name: pub}
spec:
  visibility: public
  members:
    - {user: will, permission: write}
    - {user: mona, permission: manage}
---
apiVersion: berth.dev/v1alpha1
kind: Namespace
metadata: {name: team}
spec:
  visibility: private
  members:
    - {user: rita, permission: read}
    - {user: will, permission: write}
    - {user: mona, permission: manage}
---
apiVersion: berth.dev/v1alpha1
kind: Repository
metadata: {name: pub.app}
spec:
  namespace: pub
  name: app
  category: web
  labels: {tier: frontend}
  immutableTags: ["release-*"]
  description: |
    # The app

    Serves **everything**. <script>document.title = "pwned"</script>
    <img src=x onerror="document.title='pwned'">
    [docs](https://example.org) [bad](javascript:document.title='pwned')
---
"#;

pub const USERS: [(&str, bool); 5] = [
    ("root", true),
    ("rita", false),
    ("will", false),
    ("mona", false),
    ("olga", false),
];

pub fn password(user: &str) -> String {
    format!("{user}-password")
}

pub fn creds(user: &str) -> Creds {
    Creds::user(user, &password(user))
}

pub fn auth(user: &str) -> String {
    basic(user, &password(user))
}

pub async fn start() -> Registry {
    start_with_args(&[]).await
}

/// berth on the test configuration, with more `berth serve` arguments.
pub async fn start_with_args(args: &[&str]) -> Registry {
    let mut config = CONFIG.to_string();
    for (user, admin) in USERS {
        config.push_str(&user_secret(user, &password(user), admin));
    }
    Registry::start_with_args(&config, args).await
}

/// An API call; `authorization` as sent (Basic or Bearer), or anonymous.
pub async fn api(
    registry: &Registry,
    method: Method,
    path: &str,
    authorization: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let reply = registry
        .raw(
            method,
            path,
            authorization,
            body.map(|b| ("application/json", b.to_string().into_bytes())),
        )
        .await;
    (reply.status.as_u16(), reply.json())
}
