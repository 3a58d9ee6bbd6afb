use axum::http::{StatusCode, header};
use axum::response::Response;
use serde::Serialize;

use super::error::{ErrorCode, RegistryError, Result};
use super::pagination::paginate;
use super::{RegistryState, Request, header_value, json_response};
use crate::oci::RepositoryName;

#[derive(Serialize)]
struct TagList<'a> {
    name: &'a str,
    tags: Vec<String>,
}

pub async fn list(state: &RegistryState, name: &RepositoryName, req: &Request) -> Result<Response> {
    let tags = state.store.list_tags(name).await?.ok_or_else(|| {
        RegistryError::new(
            ErrorCode::NameUnknown,
            format!("repository {name} is not known"),
        )
    })?;
    let page = paginate(tags, req)?;
    let body = serde_json::to_vec(&TagList {
        name: name.as_str(),
        tags: page.items,
    })
    .expect("tag lists serialize");
    let mut response = json_response(StatusCode::OK, body);
    if let Some(next) = page.next {
        response.headers_mut().insert(
            header::LINK,
            header_value(format!("</v2/{name}/tags/list?{next}>; rel=\"next\"")),
        );
    }
    Ok(response)
}
