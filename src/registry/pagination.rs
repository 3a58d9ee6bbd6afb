//! `n` / `last` pagination shared by tag lists and the catalog.

use super::Request;
use super::error::{ErrorCode, RegistryError, Result};

pub struct Page {
    pub items: Vec<String>,
    /// The query string of the next page, when there is one.
    pub next: Option<String>,
}

/// Selects one page of `sorted` according to the request's `n` and `last`.
pub fn paginate(sorted: Vec<String>, req: &Request) -> Result<Page> {
    let n = match req.query("n") {
        None | Some("") => None,
        Some(v) => Some(v.parse::<usize>().map_err(|_| {
            RegistryError::new(
                ErrorCode::Unsupported,
                format!("query parameter n={v:?} must be a non-negative integer"),
            )
            .with_status(axum::http::StatusCode::BAD_REQUEST)
        })?),
    };
    let last = req.query("last").filter(|l| !l.is_empty());
    let start = last.map_or(0, |l| sorted.partition_point(|item| item.as_str() <= l));
    let mut items: Vec<String> = sorted.into_iter().skip(start).collect();
    let mut next = None;
    if let Some(n) = n
        && items.len() > n
    {
        items.truncate(n);
        if let Some(last) = items.last() {
            next = Some(format!("n={n}&last={last}"));
        }
    }
    Ok(Page { items, next })
}
