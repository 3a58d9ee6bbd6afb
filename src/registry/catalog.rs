use axum::http::{StatusCode, header};
use axum::response::Response;
use serde::Serialize;

use super::error::Result;
use super::pagination::paginate;
use super::{RegistryState, Request, header_value, json_response};

#[derive(Serialize)]
struct Catalog {
    repositories: Vec<String>,
}

pub async fn list(state: &RegistryState, req: &Request) -> Result<Response> {
    // Only repositories the caller may pull are listed, before paging, so pages stay full.
    let visible = state
        .store
        .list_repositories()
        .await?
        .into_iter()
        .filter(|name| {
            name.parse::<crate::oci::RepositoryName>()
                .is_ok_and(|repo| super::access::may_list(state, &req.identity, &repo))
        })
        .collect();
    let page = paginate(visible, req)?;
    let body = serde_json::to_vec(&Catalog {
        repositories: page.items,
    })
    .expect("catalogs serialize");
    let mut response = json_response(StatusCode::OK, body);
    if let Some(next) = page.next {
        response.headers_mut().insert(
            header::LINK,
            header_value(format!("</v2/_catalog?{next}>; rel=\"next\"")),
        );
    }
    Ok(response)
}
