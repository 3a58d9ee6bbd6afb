//! The Secrets auth reads in a cluster: the signing key every replica shares, and the
//! users (Secrets labelled `berth.dev/user` in berth's namespace). Runs on every replica.

use std::collections::BTreeMap;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use crate::auth::key::SigningKey;
use crate::auth::users::{Directory, UserError, Users};
use crate::config::user_secrets::{USER_LABEL, user_from_secret};

const KEY_FIELD: &str = "key";
/// How often pull Secrets are rewritten without a change to the users: often enough
/// that a new rotation window's credential is in place within the hour.
const PULL_SECRET_SYNC: std::time::Duration = std::time::Duration::from_secs(3600);

/// The signing key from Secret `name`, created (with a fresh random key) when missing.
/// Replicas racing to create it agree: the loser reads the winner's.
pub async fn signing_key(
    client: Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<SigningKey> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    loop {
        if let Some(secret) = api.get_opt(name).await? {
            let bytes = secret
                .data
                .as_ref()
                .and_then(|d| d.get(KEY_FIELD))
                .map(|b| b.0.clone())
                .unwrap_or_default();
            return SigningKey::from_bytes(bytes).ok_or_else(|| {
                anyhow::anyhow!(
                    "Secret {namespace}/{name} has no data.{KEY_FIELD} of at least {} bytes",
                    crate::auth::key::KEY_LEN
                )
            });
        }
        let key = SigningKey::generate();
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_string(),
                    "berth".to_string(),
                )])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                KEY_FIELD.to_string(),
                ByteString(key.bytes().to_vec()),
            )])),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                tracing::info!(namespace, name, "created the signing key Secret");
                return Ok(key);
            }
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The user named `name` among the user Secrets of `namespace`.
pub async fn find_user(
    client: Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<crate::auth::users::User> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let secrets = api
        .list(&kube::api::ListParams::default().labels(USER_LABEL))
        .await?;
    for secret in secrets {
        if let Ok(user) = user_from_secret(&secret)
            && user.name == name
        {
            return Ok(user);
        }
    }
    anyhow::bail!(
        "no berth user {name:?} among the Secrets labelled {USER_LABEL} in namespace {namespace}"
    )
}

fn directory(secrets: &Store<Secret>) -> Directory {
    let mut users = Vec::new();
    for secret in secrets.state() {
        match user_from_secret(&secret) {
            Ok(user) => users.push(user),
            Err(e) => tracing::warn!(
                secret = %secret.name_any(),
                error = %e,
                "ignoring an invalid berth user Secret"
            ),
        }
    }
    Directory::new(users)
}

/// A user Secret with neither `password` nor `passwordHash` gets a generated password,
/// written into the Secret for its owner to read. The write is conditional on the
/// Secret's resourceVersion, so when several replicas try at once exactly one wins.
async fn generate_missing_passwords(api: &Api<Secret>, secrets: &Store<Secret>) {
    for secret in secrets.state() {
        if !matches!(user_from_secret(&secret), Err(UserError::NoPassword)) {
            continue;
        }
        let mut bytes = [0u8; 18];
        getrandom::fill(&mut bytes).expect("the operating system provides randomness");
        let password =
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes);
        let mut updated = (*secret).clone();
        updated
            .data
            .get_or_insert_with(BTreeMap::new)
            .insert("password".into(), ByteString(password.into_bytes()));
        let name = secret.name_any();
        match api.replace(&name, &PostParams::default(), &updated).await {
            Ok(_) => tracing::info!(secret = %name, "generated a password for a berth user"),
            Err(kube::Error::Api(e)) if e.code == 409 => {} // another replica did it
            Err(e) => {
                tracing::warn!(secret = %name, error = %e, "writing a generated password failed")
            }
        }
    }
}

/// Keeps `users` equal to the user Secrets in `namespace`, and the pull Secrets they
/// ask for written.
pub async fn watch_users(
    client: Client,
    namespace: String,
    users: Users,
    pull_secrets: super::pull_secrets::PullSecrets,
) {
    let api: Api<Secret> = Api::namespaced(client, &namespace);
    let (store, writer) = reflector::store::<Secret>();
    let mut events = reflector::reflector(
        writer,
        watcher(api.clone(), watcher::Config::default().labels(USER_LABEL)),
    )
    .default_backoff()
    .boxed();
    // Pull Secrets are rewritten periodically too, so their credential rotates.
    let mut rotate = tokio::time::interval(PULL_SECRET_SYNC);
    loop {
        let event = tokio::select! {
            event = events.next() => match event {
                Some(event) => event,
                None => return,
            },
            _ = rotate.tick() => {
                if futures::FutureExt::now_or_never(store.wait_until_ready()).is_some() {
                    let secrets: Vec<Secret> = store.state().iter().map(|s| (**s).clone()).collect();
                    pull_secrets.sync(&secrets).await;
                }
                continue;
            }
        };
        if let Err(e) = event {
            tracing::warn!(error = %e, "watching user Secrets failed; retrying");
            continue;
        }
        if futures::FutureExt::now_or_never(store.wait_until_ready()).is_none() {
            continue;
        }
        // argon2 hashing of plain passwords is slow: off the async workers.
        let snapshot = store.clone();
        let Ok(dir) = tokio::task::spawn_blocking(move || directory(&snapshot)).await else {
            continue;
        };
        generate_missing_passwords(&api, &store).await;
        let first = !users.is_loaded();
        let count = dir.len();
        users.replace(dir);
        let secrets: Vec<Secret> = store.state().iter().map(|s| (**s).clone()).collect();
        pull_secrets.sync(&secrets).await;
        if first {
            tracing::info!(users = count, "users loaded from the cluster");
        }
    }
}
