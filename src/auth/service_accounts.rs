//! Pods authenticate with their ServiceAccount token: berth asks the apiserver
//! (TokenReview) who the token belongs to, so no password is ever copied into a
//! namespace, and deleting the ServiceAccount revokes access. Tokens must be meant for
//! berth (an audience it accepts), so a token a Pod holds for another service cannot be
//! replayed here. Answers are remembered briefly; tokens are checked again after that.
//!
//! Asking the apiserver is [`TokenReviews`]' job, done outside `auth` (in the operator),
//! so this module stays free of Kubernetes types.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use sha2::{Digest as _, Sha256};

/// How long an accepted token is trusted without asking again: also how long a deleted
/// ServiceAccount keeps access.
pub const REMEMBER: Duration = Duration::from_secs(10);
const REMEMBER_MAX: usize = 10_000;

/// The audience berth accepts ServiceAccount tokens for unless told otherwise.
pub const DEFAULT_AUDIENCE: &str = "berth";

/// What the apiserver answered about a token.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Review {
    pub authenticated: bool,
    pub username: Option<String>,
    /// The audiences the token is valid for, among those asked about.
    pub audiences: Vec<String>,
    pub error: Option<String>,
}

/// Asks the apiserver whether `token` is valid for one of `audiences` (a TokenReview).
pub trait TokenReviews: Send + Sync {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audiences: &'a [String],
    ) -> BoxFuture<'a, Result<Review, String>>;
}

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("the apiserver did not accept the token{0}")]
    NotAuthenticated(String),
    #[error(
        "the token is not meant for berth: request one for audience {wanted} (a projected serviceAccountToken volume with `audience: {first}`)",
        wanted = .0.join(" or "),
        first = .0.first().map(String::as_str).unwrap_or(DEFAULT_AUDIENCE),
    )]
    WrongAudience(Vec<String>),
    #[error("the token belongs to {0:?}, which is not a ServiceAccount")]
    NotServiceAccount(String),
    #[error("asking the apiserver (TokenReview) failed: {0}")]
    Api(String),
}

/// Reviewed tokens by their SHA-256: the ServiceAccount and until when to trust it.
type Remembered = HashMap<[u8; 32], (String, Instant)>;

#[derive(Clone)]
pub struct ServiceAccountReviewer {
    reviews: Arc<dyn TokenReviews>,
    audiences: Vec<String>,
    remembered: Arc<Mutex<Remembered>>,
}

impl ServiceAccountReviewer {
    /// Accepts tokens valid for one of `audiences` (at least one; empty means the default).
    pub fn new(reviews: Arc<dyn TokenReviews>, audiences: Vec<String>) -> Self {
        let audiences = if audiences.is_empty() {
            vec![DEFAULT_AUDIENCE.to_string()]
        } else {
            audiences
        };
        ServiceAccountReviewer {
            reviews,
            audiences,
            remembered: Arc::default(),
        }
    }

    /// The ServiceAccount's user name (`system:serviceaccount:<namespace>:<name>`).
    pub async fn review(&self, token: &str) -> Result<String, ReviewError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = Instant::now();
        if let Some((name, until)) = self.remembered.lock().expect("poisoned").get(&key)
            && now < *until
        {
            return Ok(name.clone());
        }
        let review = self
            .reviews
            .review(token, &self.audiences)
            .await
            .map_err(ReviewError::Api)?;
        let name = accepted(&review, &self.audiences)?;
        remember(
            &mut self.remembered.lock().expect("poisoned"),
            key,
            name.clone(),
            now,
        );
        Ok(name)
    }
}

/// The ServiceAccount a review names, if it authenticates the token for one of `audiences`.
fn accepted(review: &Review, audiences: &[String]) -> Result<String, ReviewError> {
    if !review.authenticated {
        let why = review
            .error
            .as_ref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        // The apiserver refuses a token for another audience with this wording.
        if why.contains("audience") {
            return Err(ReviewError::WrongAudience(audiences.to_vec()));
        }
        return Err(ReviewError::NotAuthenticated(why));
    }
    // An apiserver that ignored the audiences asked for answers with its own: check them.
    if !review.audiences.iter().any(|a| audiences.contains(a)) {
        return Err(ReviewError::WrongAudience(audiences.to_vec()));
    }
    let name = review.username.clone().unwrap_or_default();
    if !name.starts_with("system:serviceaccount:") {
        return Err(ReviewError::NotServiceAccount(name));
    }
    Ok(name)
}

/// Remembers an accepted token; the memory never holds more than `REMEMBER_MAX`
/// entries: expired ones go first, and when all are live the newcomer is not kept.
fn remember(remembered: &mut Remembered, key: [u8; 32], name: String, now: Instant) {
    if remembered.len() >= REMEMBER_MAX {
        remembered.retain(|_, (_, until)| now < *until);
    }
    if remembered.len() < REMEMBER_MAX {
        remembered.insert(key, (name, now + REMEMBER));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn berth() -> Vec<String> {
        vec!["berth".to_string()]
    }

    fn review(audiences: &[&str]) -> Review {
        Review {
            authenticated: true,
            username: Some("system:serviceaccount:ci:builder".into()),
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            error: None,
        }
    }

    #[test]
    fn a_token_is_accepted_only_for_an_audience_berth_asked_for() {
        assert_eq!(
            accepted(&review(&["berth"]), &berth()).unwrap(),
            "system:serviceaccount:ci:builder"
        );
        let refused = accepted(&review(&["https://kubernetes.default.svc"]), &berth());
        assert!(matches!(refused, Err(ReviewError::WrongAudience(_))));
        assert!(refused.unwrap_err().to_string().contains("audience: berth"));
    }

    #[test]
    fn a_user_that_is_not_a_service_account_is_refused() {
        let mut r = review(&["berth"]);
        r.username = Some("alice".into());
        assert!(matches!(
            accepted(&r, &berth()),
            Err(ReviewError::NotServiceAccount(_))
        ));
    }

    #[test]
    fn the_memory_of_reviews_is_bounded() {
        let now = Instant::now();
        let mut remembered = Remembered::new();
        for i in 0..REMEMBER_MAX + 10 {
            let key: [u8; 32] = Sha256::digest(i.to_le_bytes()).into();
            remember(&mut remembered, key, "sa".into(), now);
        }
        assert_eq!(remembered.len(), REMEMBER_MAX);
        let later = now + REMEMBER + Duration::from_secs(1);
        remember(&mut remembered, [0; 32], "sa".into(), later);
        assert_eq!(remembered.len(), 1, "expired entries make room");
    }
}
