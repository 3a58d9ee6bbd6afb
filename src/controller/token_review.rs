//! The apiserver side of ServiceAccount sign-in: a TokenReview for the audiences berth
//! accepts (see [`crate::auth::service_accounts`]).

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

use crate::auth::service_accounts::{Review, TokenReviews};

pub struct ApiTokenReviews {
    client: kube::Client,
}

impl ApiTokenReviews {
    pub fn new(client: kube::Client) -> Self {
        ApiTokenReviews { client }
    }
}

impl TokenReviews for ApiTokenReviews {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audiences: &'a [String],
    ) -> BoxFuture<'a, Result<Review, String>> {
        Box::pin(async move {
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.to_string()),
                    audiences: Some(audiences.to_vec()),
                },
                ..Default::default()
            };
            let answer = Api::<TokenReview>::all(self.client.clone())
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| e.to_string())?;
            let status = answer.status.unwrap_or_default();
            Ok(Review {
                authenticated: status.authenticated == Some(true),
                username: status.user.and_then(|u| u.username),
                audiences: status.audiences.unwrap_or_default(),
                error: status.error,
            })
        })
    }
}
