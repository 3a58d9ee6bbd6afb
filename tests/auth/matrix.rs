//! The permission matrix over every endpoint class: for a public, an internal and a
//! private namespace, each kind of caller, signed in with Basic auth on every request
//! and with a bearer token from `/auth/token`, gets exactly the status the tables below
//! state. A refusal of an unknown caller is `401 UNAUTHORIZED` with a challenge naming
//! the scope to ask for; of a known one, `403 DENIED`.
//!
//! The upload-session rows act on a session an administrator opened: knowing a
//! session's id gives nothing without push permission on its repository.

use futures::StreamExt;
use reqwest::Method;
use serde_json::json;

use crate::common::sha256;
use crate::registry::{Creds, Registry, Reply, basic, user_secret};

/// One namespace per visibility, with the same members; `outsider` writes to another.
const NAMESPACES: &str = r#"
apiVersion: berth.dev/v1alpha1
kind: Namespace
metadata: {name: open}
spec:
  visibility: public
  members:
    - {user: reader, permission: read}
    - {user: writer, permission: write}
    - {user: manager, permission: manage}
---
apiVersion: berth.dev/v1alpha1
kind: Namespace
metadata: {name: inside}
spec:
  visibility: internal
  members:
    - {user: reader, permission: read}
    - {user: writer, permission: write}
    - {user: manager, permission: manage}
---
apiVersion: berth.dev/v1alpha1
kind: Namespace
metadata: {name: closed}
spec:
  visibility: private
  members:
    - {user: reader, permission: read}
    - {user: writer, permission: write}
    - {user: manager, permission: manage}
---
apiVersion: berth.dev/v1alpha1
kind: Namespace
metadata: {name: elsewhere}
spec:
  visibility: private
  members:
    - {user: outsider, permission: write}
---
"#;

/// The callers, in the tables' column order.
const CALLERS: [Caller; 6] = [
    Caller::Anonymous,
    Caller::User("reader"),
    Caller::User("writer"),
    Caller::User("manager"),
    Caller::User("outsider"),
    Caller::User("root"),
];

#[derive(Clone, Copy, Debug)]
enum Caller {
    Anonymous,
    User(&'static str),
}

impl Caller {
    fn creds(self) -> Creds {
        match self {
            Caller::Anonymous => Creds::Anonymous,
            Caller::User(name) => Creds::user(name, &password(name)),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Caller::Anonymous => "anonymous",
            Caller::User(name) => name,
        }
    }
}

/// How the caller presents itself on the registry request.
#[derive(Clone, Copy, Debug)]
enum Form {
    /// The Basic header on the request itself (anonymous: no header at all).
    Basic,
    /// A token from `/auth/token` for the endpoint's scope (anonymous: an anonymous token).
    Bearer,
}

fn password(user: &str) -> String {
    format!("{user}-password")
}

fn config() -> String {
    let mut config = NAMESPACES.to_string();
    for (user, admin) in [
        ("root", true),
        ("reader", false),
        ("writer", false),
        ("manager", false),
        ("outsider", false),
    ] {
        config.push_str(&user_secret(user, &password(user), admin));
    }
    config
}

/// The endpoint classes, in the tables' row order.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Endpoint {
    Base,
    ManifestGet,
    ManifestHead,
    ManifestPut,
    ManifestDelete,
    BlobGet,
    BlobHead,
    BlobDelete,
    UploadStart,
    SessionPatch,
    SessionPut,
    SessionGet,
    SessionDelete,
    Tags,
    Referrers,
    Catalog,
}

/// Expected outcome per caller (anonymous, reader, writer, manager, outsider, root):
/// the status, or for the catalog whether the namespace's repository is `listed`.
/// `A|B` is `A` with Basic auth (anonymous: no credentials) and `B` with a token.
type Table = [(Endpoint, [&'static str; 6]); 16];

// The writes are the same whatever the visibility: push needs write, delete manage.
// (Rows, not a shared constant, so each table reads whole.)
#[rustfmt::skip]
const PUBLIC: Table = [
    //                             anonymous   reader    writer    manager   outsider  root
    (Endpoint::Base,           ["401|200", "200",    "200",    "200",    "200",    "200"]),
    (Endpoint::ManifestGet,    ["200",     "200",    "200",    "200",    "200",    "200"]),
    (Endpoint::ManifestHead,   ["200",     "200",    "200",    "200",    "200",    "200"]),
    (Endpoint::ManifestPut,    ["401",     "403",    "201",    "201",    "403",    "201"]),
    (Endpoint::ManifestDelete, ["401",     "403",    "403",    "202",    "403",    "202"]),
    (Endpoint::BlobGet,        ["200",     "200",    "200",    "200",    "200",    "200"]),
    (Endpoint::BlobHead,       ["200",     "200",    "200",    "200",    "200",    "200"]),
    (Endpoint::BlobDelete,     ["401",     "403",    "403",    "202",    "403",    "202"]),
    (Endpoint::UploadStart,    ["401",     "403",    "202",    "202",    "403",    "202"]),
    (Endpoint::SessionPatch,   ["401",     "403",    "202",    "202",    "403",    "202"]),
    (Endpoint::SessionPut,     ["401",     "403",    "201",    "201",    "403",    "201"]),
    (Endpoint::SessionGet,     ["401",     "403",    "204",    "204",    "403",    "204"]),
    (Endpoint::SessionDelete,  ["401",     "403",    "204",    "204",    "403",    "204"]),
    (Endpoint::Tags,           ["200",     "200",    "200",    "200",    "200",    "200"]),
    (Endpoint::Referrers,      ["200",     "200",    "200",    "200",    "200",    "200"]),
    (Endpoint::Catalog,        ["401",     "listed", "listed", "listed", "listed", "listed"]),
];

#[rustfmt::skip]
const INTERNAL: Table = [
    //                             anonymous   reader    writer    manager   outsider  root
    (Endpoint::Base,           ["401|200", "200",    "200",    "200",    "200",    "200"]),
    (Endpoint::ManifestGet,    ["401",     "200",    "200",    "200",    "200",    "200"]),
    (Endpoint::ManifestHead,   ["401",     "200",    "200",    "200",    "200",    "200"]),
    (Endpoint::ManifestPut,    ["401",     "403",    "201",    "201",    "403",    "201"]),
    (Endpoint::ManifestDelete, ["401",     "403",    "403",    "202",    "403",    "202"]),
    (Endpoint::BlobGet,        ["401",     "200",    "200",    "200",    "200",    "200"]),
    (Endpoint::BlobHead,       ["401",     "200",    "200",    "200",    "200",    "200"]),
    (Endpoint::BlobDelete,     ["401",     "403",    "403",    "202",    "403",    "202"]),
    (Endpoint::UploadStart,    ["401",     "403",    "202",    "202",    "403",    "202"]),
    (Endpoint::SessionPatch,   ["401",     "403",    "202",    "202",    "403",    "202"]),
    (Endpoint::SessionPut,     ["401",     "403",    "201",    "201",    "403",    "201"]),
    (Endpoint::SessionGet,     ["401",     "403",    "204",    "204",    "403",    "204"]),
    (Endpoint::SessionDelete,  ["401",     "403",    "204",    "204",    "403",    "204"]),
    (Endpoint::Tags,           ["401",     "200",    "200",    "200",    "200",    "200"]),
    (Endpoint::Referrers,      ["401",     "200",    "200",    "200",    "200",    "200"]),
    (Endpoint::Catalog,        ["401",     "listed", "listed", "listed", "listed", "listed"]),
];

#[rustfmt::skip]
const PRIVATE: Table = [
    //                             anonymous   reader    writer    manager   outsider  root
    (Endpoint::Base,           ["401|200", "200",    "200",    "200",    "200",    "200"]),
    (Endpoint::ManifestGet,    ["401",     "200",    "200",    "200",    "403",    "200"]),
    (Endpoint::ManifestHead,   ["401",     "200",    "200",    "200",    "403",    "200"]),
    (Endpoint::ManifestPut,    ["401",     "403",    "201",    "201",    "403",    "201"]),
    (Endpoint::ManifestDelete, ["401",     "403",    "403",    "202",    "403",    "202"]),
    (Endpoint::BlobGet,        ["401",     "200",    "200",    "200",    "403",    "200"]),
    (Endpoint::BlobHead,       ["401",     "200",    "200",    "200",    "403",    "200"]),
    (Endpoint::BlobDelete,     ["401",     "403",    "403",    "202",    "403",    "202"]),
    (Endpoint::UploadStart,    ["401",     "403",    "202",    "202",    "403",    "202"]),
    (Endpoint::SessionPatch,   ["401",     "403",    "202",    "202",    "403",    "202"]),
    (Endpoint::SessionPut,     ["401",     "403",    "201",    "201",    "403",    "201"]),
    (Endpoint::SessionGet,     ["401",     "403",    "204",    "204",    "403",    "204"]),
    (Endpoint::SessionDelete,  ["401",     "403",    "204",    "204",    "403",    "204"]),
    (Endpoint::Tags,           ["401",     "200",    "200",    "200",    "403",    "200"]),
    (Endpoint::Referrers,      ["401",     "200",    "200",    "200",    "403",    "200"]),
    (Endpoint::Catalog,        ["401",     "listed", "listed", "listed", "hidden", "listed"]),
];

/// What one visibility's repository holds before the callers arrive.
struct Shared {
    repo: String,
    manifest: String,
    /// The manifest's bytes, which each cell puts again under its own tag.
    manifest_body: Vec<u8>,
    layer: String,
}

/// What one cell (visibility × caller × form) may consume without disturbing others:
/// its own manifest and blob to delete, its own tag to put, and four sessions an
/// administrator opened.
struct Own {
    tag: String,
    manifest: String,
    blob: String,
    session_data: Vec<u8>,
    sessions: [String; 4],
}

impl Endpoint {
    fn method(self) -> Method {
        use Endpoint::*;
        match self {
            ManifestHead | BlobHead => Method::HEAD,
            ManifestPut | SessionPut => Method::PUT,
            ManifestDelete | BlobDelete | SessionDelete => Method::DELETE,
            UploadStart => Method::POST,
            SessionPatch => Method::PATCH,
            Base | ManifestGet | BlobGet | SessionGet | Tags | Referrers | Catalog => Method::GET,
        }
    }

    fn path(self, shared: &Shared, own: &Own) -> String {
        use Endpoint::*;
        let repo = &shared.repo;
        match self {
            Base => "/v2/".into(),
            ManifestGet => format!("/v2/{repo}/manifests/v1"),
            ManifestHead => format!("/v2/{repo}/manifests/{}", shared.manifest),
            ManifestPut => format!("/v2/{repo}/manifests/{}", own.tag),
            ManifestDelete => format!("/v2/{repo}/manifests/{}", own.manifest),
            BlobGet | BlobHead => format!("/v2/{repo}/blobs/{}", shared.layer),
            BlobDelete => format!("/v2/{repo}/blobs/{}", own.blob),
            UploadStart => format!("/v2/{repo}/blobs/uploads/"),
            SessionPatch => own.sessions[0].clone(),
            SessionPut => format!("{}?digest={}", own.sessions[1], sha256(&own.session_data)),
            SessionGet => own.sessions[2].clone(),
            SessionDelete => own.sessions[3].clone(),
            Tags => format!("/v2/{repo}/tags/list"),
            Referrers => format!("/v2/{repo}/referrers/{}", shared.manifest),
            Catalog => "/v2/_catalog".into(),
        }
    }

    /// The scope a token is asked for, and a challenge must name.
    fn scope(self, repo: &str) -> Option<String> {
        use Endpoint::*;
        match self {
            Base => None,
            Catalog => Some("registry:catalog:*".into()),
            ManifestGet | ManifestHead | BlobGet | BlobHead | Tags | Referrers => {
                Some(format!("repository:{repo}:pull"))
            }
            ManifestPut | UploadStart | SessionPatch | SessionPut | SessionGet | SessionDelete => {
                Some(format!("repository:{repo}:pull,push"))
            }
            ManifestDelete | BlobDelete => Some(format!("repository:{repo}:delete")),
        }
    }

    fn body(self, shared: &Shared, own: &Own) -> Option<(&'static str, Vec<u8>)> {
        match self {
            Endpoint::ManifestPut => Some((
                "application/vnd.oci.image.manifest.v1+json",
                shared.manifest_body.clone(),
            )),
            Endpoint::SessionPatch | Endpoint::SessionPut => {
                Some(("application/octet-stream", own.session_data.clone()))
            }
            _ => None,
        }
    }

    fn is_session(self) -> bool {
        matches!(
            self,
            Endpoint::SessionPatch
                | Endpoint::SessionPut
                | Endpoint::SessionGet
                | Endpoint::SessionDelete
        )
    }
}

async fn open_session(registry: &Registry, root: &str, repo: &str) -> String {
    let r = registry
        .raw(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/"),
            Some(root),
            None,
        )
        .await;
    assert_eq!(r.status, 202, "opening a session: {}", r.text());
    r.headers["location"].to_str().unwrap().to_string()
}

async fn prepare(registry: &Registry, repo: &str, cell: &str) -> Own {
    let root = basic("root", &password("root"));
    let (manifest, _) = registry
        .push(
            &Caller::User("root").creds(),
            repo,
            &format!("own-{cell}"),
            cell,
        )
        .await;
    let blob_data = format!("blob of {cell}").into_bytes();
    let blob = sha256(&blob_data);
    let r = registry
        .raw(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?digest={blob}"),
            Some(&root),
            Some(("application/octet-stream", blob_data)),
        )
        .await;
    assert_eq!(r.status, 201, "pushing a blob: {}", r.text());
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(open_session(registry, &root, repo).await);
    }
    Own {
        tag: format!("put-{cell}"),
        manifest,
        blob,
        session_data: format!("session data of {cell}").into_bytes(),
        sessions: sessions.try_into().unwrap(),
    }
}

/// What a reply says, in the tables' vocabulary, plus any way it breaks the refusal
/// rules (error code, challenge) or left a refused session changed.
async fn judge(
    registry: &Registry,
    endpoint: Endpoint,
    repo: &str,
    path: &str,
    reply: &Reply,
) -> (String, Vec<String>) {
    let mut problems = Vec::new();
    let status = reply.status.as_u16();
    let code = reply.json()["errors"][0]["code"]
        .as_str()
        .map(str::to_string);
    let head = endpoint.method() == Method::HEAD;
    match status {
        401 => {
            if !head && code.as_deref() != Some("UNAUTHORIZED") {
                problems.push(format!("401 with error code {code:?}"));
            }
            let challenge = reply
                .headers
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let named = challenge
                .split("scope=\"")
                .nth(1)
                .map(|rest| rest.split('"').next().unwrap_or_default().to_string());
            if !challenge.starts_with("Bearer realm=") || named != endpoint.scope(repo) {
                problems.push(format!(
                    "challenge {challenge:?} should name scope {:?}",
                    endpoint.scope(repo)
                ));
            }
        }
        403 if !head && code.as_deref() != Some("DENIED") => {
            problems.push(format!("403 with error code {code:?}"));
        }
        _ => {}
    }
    if endpoint.is_session() && matches!(status, 401 | 403) {
        let root = basic("root", &password("root"));
        let session = path.split('?').next().unwrap();
        let after = registry.raw(Method::GET, session, Some(&root), None).await;
        let range = after.headers.get("range").and_then(|v| v.to_str().ok());
        if after.status != 204 || range != Some("0-0") {
            problems.push(format!(
                "the refused request changed the session: now {} with range {range:?}",
                after.status
            ));
        }
    }
    let outcome = match (endpoint, status) {
        (Endpoint::Catalog, 200) => {
            let listed = reply.json()["repositories"]
                .as_array()
                .is_some_and(|l| l.contains(&json!(repo)));
            if listed { "listed" } else { "hidden" }.to_string()
        }
        _ => status.to_string(),
    };
    (outcome, problems)
}

/// Runs every endpoint class for one caller in one form on one visibility's repository;
/// returns the differences from `table`.
async fn run_cell(
    registry: &Registry,
    visibility: &str,
    table: &Table,
    shared: &Shared,
    column: usize,
    form: Form,
) -> Vec<String> {
    let caller = CALLERS[column];
    let cell = format!("{}-{form:?}", caller.describe()).to_lowercase();
    let own = prepare(registry, &shared.repo, &cell).await;
    let mut differences = Vec::new();
    for (endpoint, expected) in table {
        let path = endpoint.path(shared, &own);
        let authorization = match (form, caller) {
            (Form::Basic, Caller::Anonymous) => None,
            (Form::Basic, Caller::User(name)) => Some(basic(name, &password(name))),
            (Form::Bearer, _) => {
                let scopes: Vec<String> = endpoint.scope(&shared.repo).into_iter().collect();
                match registry.token(&caller.creds(), &scopes).await {
                    Ok(token) => Some(format!("Bearer {}", token["token"].as_str().unwrap())),
                    Err(reply) => {
                        differences.push(format!(
                            "{visibility} {endpoint:?} as {} ({form:?}): the token endpoint answered {}",
                            caller.describe(),
                            reply.status
                        ));
                        continue;
                    }
                }
            }
        };
        let reply = registry
            .raw(
                endpoint.method(),
                &path,
                authorization.as_deref(),
                endpoint.body(shared, &own),
            )
            .await;
        let (outcome, problems) = judge(registry, *endpoint, &shared.repo, &path, &reply).await;
        let expected = expected[column];
        let expected = match (expected.split_once('|'), form) {
            (Some((basic, _)), Form::Basic) => basic,
            (Some((_, bearer)), Form::Bearer) => bearer,
            (None, _) => expected,
        };
        let who = format!(
            "{visibility} {endpoint:?} as {} ({form:?})",
            caller.describe()
        );
        if outcome != expected {
            differences.push(format!(
                "{who}: expected {expected}, got {outcome}: {}",
                reply.text()
            ));
        }
        differences.extend(problems.into_iter().map(|p| format!("{who}: {p}")));
    }
    differences
}

#[tokio::test]
async fn every_endpoint_class_answers_each_caller_as_its_visibility_table_says() {
    let registry = Registry::start(&config()).await;
    let root = Caller::User("root").creds();
    let mut visibilities = Vec::new();
    for (visibility, namespace, table) in [
        ("public", "open", &PUBLIC),
        ("internal", "inside", &INTERNAL),
        ("private", "closed", &PRIVATE),
    ] {
        let repo = format!("{namespace}/app");
        let (manifest, layer) = registry.push(&root, &repo, "v1", namespace).await;
        let manifest_body = registry
            .raw(
                Method::GET,
                &format!("/v2/{repo}/manifests/v1"),
                Some(&basic("root", &password("root"))),
                None,
            )
            .await
            .body;
        visibilities.push((
            visibility,
            table,
            Shared {
                repo,
                manifest,
                manifest_body,
                layer,
            },
        ));
    }

    let registry = &registry;
    let mut cells = Vec::new();
    for (visibility, table, shared) in &visibilities {
        for column in 0..CALLERS.len() {
            for form in [Form::Basic, Form::Bearer] {
                cells.push(run_cell(registry, visibility, table, shared, column, form));
            }
        }
    }
    let mut differences: Vec<String> = futures::stream::iter(cells)
        .buffer_unordered(6)
        .flat_map(futures::stream::iter)
        .collect()
        .await;
    differences.sort();
    assert!(
        differences.is_empty(),
        "the permission matrix differs in {} cells:\n{}",
        differences.len(),
        differences.join("\n")
    );
}

/// An upload id is no capability: addressed through another repository, even one the
/// caller may push to, a session is unknown, and stays as it was.
#[tokio::test]
async fn an_upload_session_answers_only_through_its_own_repository() {
    let registry = Registry::start(&config()).await;
    let root = basic("root", &password("root"));
    let outsider = basic("outsider", &password("outsider"));
    let session = open_session(&registry, &root, "closed/app").await;
    let id = session.rsplit('/').next().unwrap();
    let elsewhere = format!("/v2/elsewhere/app/blobs/uploads/{id}");
    let data = b"not yours".to_vec();
    for (method, path) in [
        (Method::PATCH, elsewhere.clone()),
        (Method::PUT, format!("{elsewhere}?digest={}", sha256(&data))),
        (Method::GET, elsewhere.clone()),
        (Method::DELETE, elsewhere.clone()),
    ] {
        let r = registry
            .raw(
                method.clone(),
                &path,
                Some(&outsider),
                Some(("application/octet-stream", data.clone())),
            )
            .await;
        assert_eq!(r.status, 404, "{method} {path}: {}", r.text());
        assert_eq!(r.json()["errors"][0]["code"], "BLOB_UPLOAD_UNKNOWN");
    }
    let after = registry.raw(Method::GET, &session, Some(&root), None).await;
    assert_eq!(after.status, 204);
    assert_eq!(after.headers["range"], "0-0", "the session is untouched");
}

/// A token is limited to the scopes it was issued for, even when the policy would
/// allow more: the caller is sent back for a token naming the missing scope. A mount
/// also needs pull on its source; a caller who may not read the source gets a plain
/// upload instead, which says nothing about the source.
#[tokio::test]
async fn a_token_without_the_scope_is_sent_back_for_one_naming_it() {
    let registry = Registry::start(&config()).await;
    let root = Caller::User("root").creds();
    let (_, layer) = registry.push(&root, "closed/app", "v1", "source").await;
    let writer = Caller::User("writer").creds();
    let bearer = |token: serde_json::Value| format!("Bearer {}", token["token"].as_str().unwrap());
    let challenge = |r: &Reply| {
        r.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .split_once(",scope=")
            .map(|(_, rest)| rest.to_string())
            .unwrap_or_default()
    };

    let pull_only = registry
        .token(&writer, &["repository:closed/app:pull".into()])
        .await
        .unwrap();
    let r = registry
        .raw(
            Method::POST,
            "/v2/closed/app/blobs/uploads/",
            Some(&bearer(pull_only)),
            None,
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["errors"][0]["code"], "UNAUTHORIZED");
    assert_eq!(
        challenge(&r),
        "\"repository:closed/app:pull,push\",error=\"insufficient_scope\""
    );

    let mount = format!("/v2/closed/copy/blobs/uploads/?mount={layer}&from=closed/app");
    let both = "\"repository:closed/copy:pull,push repository:closed/app:pull\"";
    let r = registry.raw(Method::POST, &mount, None, None).await;
    assert_eq!(r.status, 401);
    assert_eq!(challenge(&r), both, "one challenge names both scopes");

    let target_only = registry
        .token(&writer, &["repository:closed/copy:pull,push".into()])
        .await
        .unwrap();
    let r = registry
        .raw(Method::POST, &mount, Some(&bearer(target_only)), None)
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(
        challenge(&r),
        format!("{both},error=\"insufficient_scope\"")
    );

    let scopes: Vec<String> = both
        .trim_matches('"')
        .split(' ')
        .map(str::to_string)
        .collect();
    let full = registry.token(&writer, &scopes).await.unwrap();
    let r = registry
        .raw(Method::POST, &mount, Some(&bearer(full)), None)
        .await;
    assert_eq!(r.status, 201, "mounted: {}", r.text());

    // The outsider may push to its namespace but not read closed/app.
    let outsider = Caller::User("outsider").creds();
    let mount = format!("/v2/elsewhere/copy/blobs/uploads/?mount={layer}&from=closed/app");
    let token = registry
        .token(
            &outsider,
            &[
                "repository:elsewhere/copy:pull,push".into(),
                "repository:closed/app:pull".into(),
            ],
        )
        .await
        .unwrap();
    let r = registry
        .raw(Method::POST, &mount, Some(&bearer(token)), None)
        .await;
    assert_eq!(r.status, 202, "a plain upload instead: {}", r.text());
}

/// A client's first request may go out without credentials, to learn the challenge.
/// When it carries a large manifest, the 401 must still reach the client once it has
/// sent the body, not a connection closed under its writes.
#[tokio::test]
async fn a_large_manifest_sent_without_credentials_gets_its_401() {
    let registry = Registry::start(&config()).await;
    let addr = registry.berth.addr.clone();
    let reply = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let body = vec![b' '; 3_900_000];
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            stream,
            "PUT /v2/closed/app/manifests/big HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        // In pieces, as a client on a real network sends it: the refusal is ready
        // long before the last byte.
        for piece in body.chunks(64 << 10) {
            stream
                .write_all(piece)
                .map_err(|e| format!("writing the body: {e}"))?;
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let mut head = [0u8; 12];
        stream
            .read_exact(&mut head)
            .map_err(|e| format!("reading the reply: {e}"))?;
        Ok::<_, String>(String::from_utf8_lossy(&head).into_owned())
    })
    .await
    .unwrap();
    assert_eq!(reply.as_deref(), Ok("HTTP/1.1 401"));
}
