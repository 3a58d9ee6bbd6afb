//! Proving who a caller is: users and their passwords, credentials derived for
//! `docker login`, Kubernetes ServiceAccount tokens, and the bearer tokens of the
//! Docker token flow. What an authenticated caller may do is decided in
//! [`crate::policy`]; this module only establishes the [`Caller`].

pub mod challenge;
pub mod credentials;
pub mod key;
pub mod login_command;
pub mod passwords;
pub mod pull_credential;
pub mod scope;
pub mod service_accounts;
pub mod throttle;
pub mod token;
pub mod users;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use jiff::Timestamp;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::metrics::PasswordCheckLabels;
use crate::policy::Caller;
use credentials::{CredentialError, Verifier};
use key::SigningKey;
use passwords::{Busy, PasswordChecker};
use service_accounts::ServiceAccountReviewer;
use throttle::Throttle;
use token::{Claims, Subject, TokenError, TokenKind};
use users::{User, Users};

/// The user name clients give with a Kubernetes ServiceAccount token as password.
pub const SERVICE_ACCOUNT_USER: &str = "serviceaccount";

/// ServiceAccount token reviews (calls to the apiserver) in flight at once; beyond
/// them a sign-in is told to retry, so a flood of made-up tokens cannot become a
/// flood on the apiserver.
const CONCURRENT_REVIEWS: usize = 8;

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
    /// Threads that verify argon2 password hashes (each holds one hash's memory).
    pub password_threads: usize,
    /// Password checks that may wait for a thread; beyond them, `429`.
    pub password_queue: usize,
    pub throttle: throttle::Limits,
}

impl Default for Settings {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Settings {
            service: "berth".into(),
            realm: None,
            token_ttl: Duration::from_secs(300),
            refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            temporary_ttl: Duration::from_secs(6 * 3600),
            password_threads: cores,
            password_queue: 16 * cores,
            throttle: throttle::Limits::default(),
        }
    }
}

/// Why authentication failed. Each becomes `UNAUTHORIZED` with a challenge, except
/// the two that ask the client to slow down (`TOOMANYREQUESTS`, see [`Self::retry_after`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// An unknown user, a wrong password and a wrong derived credential all read the
    /// same, so user names cannot be probed.
    #[error("wrong user name or password")]
    BadCredentials,
    #[error(
        "the temporary credential of user {user:?} expired at {expired}; get a new one with `berth login-command --temporary`"
    )]
    CredentialExpired { user: String, expired: Timestamp },
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
    #[error(
        "the token endpoint takes a password, a login-command credential or a refresh token, not a bearer token"
    )]
    NotACredential,
    #[error("too many failed sign-ins; retry in {} s", .retry_after.as_secs().max(1))]
    Throttled { retry_after: Duration },
    #[error(transparent)]
    Busy(#[from] Busy),
    #[error(transparent)]
    PullCredential(#[from] pull_credential::PullCredentialError),
}

impl AuthError {
    /// For refusals that mean "slow down": how long the client should wait.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AuthError::Throttled { retry_after } => Some(*retry_after),
            AuthError::Busy(busy) => Some(busy.retry_after),
            _ => None,
        }
    }
}

impl From<CredentialError> for AuthError {
    fn from(e: CredentialError) -> Self {
        match e {
            CredentialError::Wrong => AuthError::BadCredentials,
            CredentialError::Expired { user, expired } => {
                AuthError::CredentialExpired { user, expired }
            }
        }
    }
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

/// A successful sign-in with a password, a derived credential or a ServiceAccount token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedIn {
    pub caller: Caller,
    /// When what the caller presented stops being valid (a temporary credential's
    /// expiry): nothing minted from it may outlive it.
    pub until: Option<Timestamp>,
}

struct Inner {
    users: Users,
    key: SigningKey,
    verifier: Verifier,
    settings: Settings,
    reviewer: Option<ServiceAccountReviewer>,
    reviews: tokio::sync::Semaphore,
    passwords: PasswordChecker,
    throttle: Throttle,
    checks: Family<PasswordCheckLabels, Counter>,
}

#[derive(Clone)]
pub struct Auth(Arc<Inner>);

impl Auth {
    pub fn new(
        users: Users,
        key: SigningKey,
        settings: Settings,
        reviewer: Option<ServiceAccountReviewer>,
        checks: Family<PasswordCheckLabels, Counter>,
    ) -> Self {
        Auth(Arc::new(Inner {
            users,
            verifier: Verifier::new(key.clone()),
            key,
            passwords: PasswordChecker::new(settings.password_threads, settings.password_queue),
            throttle: Throttle::new(settings.throttle),
            settings,
            reviewer,
            reviews: tokio::sync::Semaphore::new(CONCURRENT_REVIEWS),
            checks,
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
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        client: Option<IpAddr>,
    ) -> Result<Identity, AuthError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Ok(Identity::nobody());
        };
        let value = value.to_str().map_err(|_| AuthError::MalformedHeader)?;
        let (scheme, credentials) = value.split_once(' ').ok_or(AuthError::MalformedHeader)?;
        if scheme.eq_ignore_ascii_case("basic") {
            let (user, password) = decode_basic(credentials.trim())?;
            let signed_in = self.login(&user, &password, client).await?;
            Ok(Identity {
                caller: signed_in.caller,
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

    /// Who asks the token endpoint for a token: nobody (an anonymous token) or a user
    /// with Basic credentials. A bearer token is refused: tokens are minted only from
    /// credentials, so a leaked short-lived token cannot be turned into a longer one.
    pub async fn sign_in(
        &self,
        headers: &HeaderMap,
        client: Option<IpAddr>,
    ) -> Result<Option<SignedIn>, AuthError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Ok(None);
        };
        let value = value.to_str().map_err(|_| AuthError::MalformedHeader)?;
        let (scheme, credentials) = value.split_once(' ').ok_or(AuthError::MalformedHeader)?;
        if scheme.eq_ignore_ascii_case("basic") {
            let (user, password) = decode_basic(credentials.trim())?;
            self.login(&user, &password, client).await.map(Some)
        } else if scheme.eq_ignore_ascii_case("bearer") {
            Err(AuthError::NotACredential)
        } else {
            Err(AuthError::MalformedHeader)
        }
    }

    /// Checks a user name and password (or derived credential, or ServiceAccount token).
    pub async fn login(
        &self,
        user: &str,
        password: &str,
        client: Option<IpAddr>,
    ) -> Result<SignedIn, AuthError> {
        if user == SERVICE_ACCOUNT_USER || user.starts_with("system:serviceaccount:") {
            return self.service_account(password).await;
        }
        let directory = self.0.users.current();
        let found = directory.get(user);
        if pull_credential::is_pull_credential(password) {
            // A pull Secret's credential: a MAC, and it grants pulls only.
            let found = found.ok_or(AuthError::BadCredentials)?;
            pull_credential::verify(&self.0.key, found, password, Timestamp::now())?;
            return Ok(SignedIn {
                caller: Caller::PullOnly {
                    name: found.name.clone(),
                    admin: found.admin,
                },
                until: None,
            });
        }
        if credentials::is_derived(password) {
            // A MAC: cheap, never throttled, and as fast for an unknown user.
            let found = found.ok_or(AuthError::BadCredentials)?;
            let until = self
                .0
                .verifier
                .check_derived(found, password, Timestamp::now())?;
            return Ok(signed_in(found, until));
        }
        if let Some(found) = found
            && self.0.verifier.remembers(found, password)
        {
            return Ok(signed_in(found, None));
        }
        if let Err(wait) = self.0.throttle.check(user, client, Instant::now()) {
            self.count("throttled");
            return Err(AuthError::Throttled { retry_after: wait });
        }
        // An unknown user costs one check against a hash nothing matches, so it reads
        // and takes the same as a wrong password.
        let checked = match found {
            Some(found) => {
                self.0
                    .passwords
                    .verify(password, &found.password_hash)
                    .await
            }
            None => self
                .0
                .passwords
                .verify_dummy(password)
                .await
                .map(|()| false),
        };
        let matched = checked.inspect_err(|_| self.count("busy"))?;
        match found {
            Some(found) if matched => {
                self.count("ok");
                self.0.throttle.succeeded(user, client);
                self.0.verifier.remember(found, password);
                Ok(signed_in(found, None))
            }
            _ => {
                self.count("wrong");
                self.0.throttle.failed(user, client, Instant::now());
                Err(AuthError::BadCredentials)
            }
        }
    }

    async fn service_account(&self, token: &str) -> Result<SignedIn, AuthError> {
        let reviewer = self.0.reviewer.as_ref().ok_or_else(|| {
            AuthError::ServiceAccount("this berth is not connected to a Kubernetes cluster".into())
        })?;
        let _permit = self.0.reviews.try_acquire().map_err(|_| {
            AuthError::Busy(Busy {
                retry_after: Duration::from_secs(1),
            })
        })?;
        let name = reviewer
            .review(token)
            .await
            .map_err(|e| AuthError::ServiceAccount(e.to_string()))?;
        Ok(SignedIn {
            caller: Caller::user(name),
            until: None,
        })
    }

    fn count(&self, result: &'static str) {
        self.0
            .checks
            .get_or_create(&PasswordCheckLabels { result })
            .inc();
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
                    && *pwf != self.password_fingerprint(user)
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

    /// A short fingerprint of a user's password revision, carried in tokens that must
    /// die with it. Keyed, so a token reveals nothing usable about the password.
    pub fn password_fingerprint(&self, user: &User) -> String {
        let mac = self
            .0
            .key
            .sign(&["password-fingerprint", &user.name, &user.revision]);
        hex::encode(&mac[..8])
    }
}

fn signed_in(user: &User, until: Option<Timestamp>) -> SignedIn {
    SignedIn {
        caller: Caller::User {
            name: user.name.clone(),
            admin: user.admin,
        },
        until,
    }
}

fn decode_basic(encoded: &str) -> Result<(String, String), AuthError> {
    let bytes = STANDARD
        .decode(encoded)
        .map_err(|_| AuthError::MalformedHeader)?;
    let text = String::from_utf8(bytes).map_err(|_| AuthError::MalformedHeader)?;
    let (user, password) = text.split_once(':').ok_or(AuthError::MalformedHeader)?;
    Ok((user.to_string(), password.to_string()))
}
