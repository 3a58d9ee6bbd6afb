//! Pods authenticate with their ServiceAccount token: berth asks the apiserver
//! (TokenReview) who the token belongs to, so no password is ever copied into a
//! namespace. Answers are remembered briefly; tokens are checked again after that.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use sha2::{Digest as _, Sha256};

const REMEMBER: Duration = Duration::from_secs(60);
const REMEMBER_MAX: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("the apiserver did not accept the token{0}")]
    NotAuthenticated(String),
    #[error("the token belongs to {0:?}, which is not a ServiceAccount")]
    NotServiceAccount(String),
    #[error("asking the apiserver (TokenReview) failed: {0}")]
    Api(#[from] kube::Error),
}

/// Reviewed tokens by their SHA-256: the ServiceAccount and until when to trust it.
type Remembered = HashMap<[u8; 32], (String, Instant)>;

#[derive(Clone)]
pub struct ServiceAccountReviewer {
    client: kube::Client,
    remembered: Arc<Mutex<Remembered>>,
}

impl ServiceAccountReviewer {
    pub fn new(client: kube::Client) -> Self {
        ServiceAccountReviewer {
            client,
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
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status.error.map(|e| format!(": {e}")).unwrap_or_default();
            return Err(ReviewError::NotAuthenticated(why));
        }
        let name = status.user.and_then(|u| u.username).unwrap_or_default();
        if !name.starts_with("system:serviceaccount:") {
            return Err(ReviewError::NotServiceAccount(name));
        }
        let mut remembered = self.remembered.lock().expect("poisoned");
        if remembered.len() >= REMEMBER_MAX {
            remembered.retain(|_, (_, until)| now < *until);
        }
        remembered.insert(key, (name.clone(), now + REMEMBER));
        Ok(name)
    }
}
