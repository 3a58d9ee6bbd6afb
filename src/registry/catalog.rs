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
    let page = paginate(state.store.list_repositories().await?, req)?;
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
