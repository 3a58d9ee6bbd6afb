//! Proving who a caller is: users and their passwords, credentials derived for
//! `docker login`, Kubernetes ServiceAccount tokens, and the bearer tokens of the
//! Docker token flow. What an authenticated caller may do is decided in
//! [`crate::policy`]; this module only establishes the [`Caller`].

pub mod challenge;
pub mod credentials;
pub mod key;
pub mod login_command;
pub mod pull_credential;
pub mod scope;
pub mod service_accounts;
pub mod token;
pub mod users;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, header};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use jiff::Timestamp;

use crate::policy::Caller;
use credentials::{CredentialError, Verifier};
use key::SigningKey;
use service_accounts::ServiceAccountReviewer;
use token::{Claims, Subject, TokenError, TokenKind};
use users::Users;

/// The user name clients give with a Kubernetes ServiceAccount token as password.
pub const SERVICE_ACCOUNT_USER: &str = "serviceaccount";

#[derive(Debug, Clone)]
pub struct Settings {
    /// The `service` of challenges and the audience of tokens.
    pub service: String,
    /// The token endpoint's absolute URL, when the one seen by clients cannot be
    /// derived from the request (e.g. behind a proxy that rewrites Host).
    pub realm: Option<String>,
    pub token_ttl: Duration,
    pub refresh_ttl: Duration,
    /// How long a `berth login-command --temporary` credential lasts.
    pub temporary_ttl: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            service: "berth".into(),
            realm: None,
            token_ttl: Duration::from_secs(300),
            refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            temporary_ttl: Duration::from_secs(6 * 3600),
        }
    }
}

/// Why authentication failed. Each becomes `UNAUTHORIZED` with a challenge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    #[error(transparent)]
    Credential(#[from] CredentialError),
    #[error("bearer token refused: {0}")]
    Token(#[from] TokenError),
    #[error("the token's user {0:?} no longer exists")]
    GoneUser(String),
    #[error("the token's password changed; log in again")]
    PasswordChanged,
    #[error("the Authorization header is malformed")]
    MalformedHeader,
    #[error("ServiceAccount token refused: {0}")]
    ServiceAccount(String),
    #[error(transparent)]
    PullCredential(#[from] pull_credential::PullCredentialError),
}

/// A caller as authenticated for one request.
#[derive(Debug, Clone)]
pub struct Identity {
    pub caller: Caller,
    /// Whether the request carried credentials at all (an anonymous *token* counts:
    /// the client went through the token flow).
    pub presented: bool,
    /// For bearer requests, the token: it limits the request to what it grants.
    pub token: Option<Arc<Claims>>,
}

impl Identity {
    pub fn nobody() -> Self {
        Identity {
            caller: Caller::Anonymous,
            presented: false,
            token: None,
        }
    }
}

struct Inner {
    users: Users,
    key: SigningKey,
    verifier: Verifier,
    settings: Settings,
    reviewer: Option<ServiceAccountReviewer>,
}

#[derive(Clone)]
pub struct Auth(Arc<Inner>);

impl Auth {
    pub fn new(
        users: Users,
        key: SigningKey,
        settings: Settings,
        reviewer: Option<ServiceAccountReviewer>,
    ) -> Self {
        Auth(Arc::new(Inner {
            users,
            verifier: Verifier::new(key.clone()),
            key,
            settings,
            reviewer,
        }))
    }

    pub fn users(&self) -> &Users {
        &self.0.users
    }

    pub fn key(&self) -> &SigningKey {
        &self.0.key
    }

    pub fn settings(&self) -> &Settings {
        &self.0.settings
    }

    pub fn verifier(&self) -> &Verifier {
        &self.0.verifier
    }

    /// Who sent this request: nobody, a Basic-auth user, or the bearer of a token.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Identity, AuthError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Ok(Identity::nobody());
        };
        let value = value.to_str().map_err(|_| AuthError::MalformedHeader)?;
        let (scheme, credentials) = value.split_once(' ').ok_or(AuthError::MalformedHeader)?;
        if scheme.eq_ignore_ascii_case("basic") {
            let (user, password) = decode_basic(credentials.trim())?;
            let caller = self.login(&user, &password).await?;
            Ok(Identity {
                caller,
                presented: true,
                token: None,
            })
        } else if scheme.eq_ignore_ascii_case("bearer") {
            let claims = token::decode(
                &self.0.key,
                credentials.trim(),
                &self.0.settings.service,
                TokenKind::Access,
                Timestamp::now().as_second(),
            )?;
            let caller = self.caller_of(&claims)?;
            Ok(Identity {
                caller,
                presented: true,
                token: Some(Arc::new(claims)),
            })
        } else {
            Err(AuthError::MalformedHeader)
        }
    }

    /// Checks a user name and password (or derived credential, or ServiceAccount token).
    pub async fn login(&self, user: &str, password: &str) -> Result<Caller, AuthError> {
        if user == SERVICE_ACCOUNT_USER || user.starts_with("system:serviceaccount:") {
            let reviewer = self.0.reviewer.as_ref().ok_or_else(|| {
                AuthError::ServiceAccount(
                    "this berth is not connected to a Kubernetes cluster".into(),
                )
            })?;
            let name = reviewer
                .review(password)
                .await
                .map_err(|e| AuthError::ServiceAccount(e.to_string()))?;
            return Ok(Caller::user(name));
        }
        let directory = self.0.users.current();
        let found = directory
            .get(user)
            .ok_or_else(|| AuthError::UnknownUser(user.to_string()))?;
        if pull_credential::is_pull_credential(password) {
            pull_credential::verify(&self.0.key, found, password, Timestamp::now())?;
            return Ok(Caller::PullOnly {
                name: found.name.clone(),
                admin: found.admin,
            });
        }
        let verifier = &self.0.verifier;
        // argon2 is deliberately slow: keep it off the async workers, unless the
        // password was verified moments ago (every request of a Basic-auth client).
        let checked = if password.starts_with("berth-") {
            verifier.check(found, password, Timestamp::now())
        } else if verifier.remembers(found, password) {
            Ok(())
        } else {
            let auth = self.clone();
            let found = found.clone();
            let password = password.to_string();
            tokio::task::spawn_blocking(move || {
                auth.0.verifier.check(&found, &password, Timestamp::now())
            })
            .await
            .unwrap_or(Err(CredentialError::Wrong(user.to_string())))
        };
        checked?;
        Ok(Caller::User {
            name: found.name.clone(),
            admin: found.admin,
        })
    }

    /// The caller a token speaks for, re-checked against the live users so a deleted
    /// user's tokens stop working at once.
    pub fn caller_of(&self, claims: &Claims) -> Result<Caller, AuthError> {
        match claims.subject {
            Subject::Anonymous => Ok(Caller::Anonymous),
            Subject::ServiceAccount => Ok(Caller::user(claims.sub.clone())),
            Subject::User => {
                let directory = self.0.users.current();
                let user = directory
                    .get(&claims.sub)
                    .ok_or_else(|| AuthError::GoneUser(claims.sub.clone()))?;
                if let Some(pwf) = &claims.pwf
                    && *pwf != password_fingerprint(&user.password_hash)
                {
                    return Err(AuthError::PasswordChanged);
                }
                Ok(Caller::User {
                    name: user.name.clone(),
                    admin: user.admin,
                })
            }
        }
    }
}

/// A short fingerprint of a password hash, carried in tokens that must die with it.
pub fn password_fingerprint(hash: &str) -> String {
    use sha2::Digest as _;
    hex::encode(&sha2::Sha256::digest(hash.as_bytes())[..8])
}

fn decode_basic(encoded: &str) -> Result<(String, String), AuthError> {
    let bytes = STANDARD
        .decode(encoded)
        .map_err(|_| AuthError::MalformedHeader)?;
    let text = String::from_utf8(bytes).map_err(|_| AuthError::MalformedHeader)?;
    let (user, password) = text.split_once(':').ok_or(AuthError::MalformedHeader)?;
    Ok((user.to_string(), password.to_string()))
}
