//! `n` / `last` pagination shared by tag lists and the catalog.

use super::Request;
use super::error::{ErrorCode, RegistryError, Result};

/// The most entries one page holds, whatever `n` asks: a client asking for more gets
/// this many and a `Link` to the rest, so one request cannot make a reply of any size.
pub const MAX_PAGE: usize = 10_000;

pub struct Page {
    pub items: Vec<String>,
    /// The query string of the next page, when there is one.
    pub next: Option<String>,
}

/// The page size from `n`: absent or empty means every entry (up to [`MAX_PAGE`]).
/// Digits only; a number of any size is accepted and capped, never wrapped.
pub fn page_size(n: Option<&str>) -> Result<usize> {
    let v = match n {
        None | Some("") => return Ok(MAX_PAGE),
        Some(v) => v,
    };
    if !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RegistryError::new(
            ErrorCode::PaginationNumberInvalid,
            format!("query parameter n={v:?} must be a non-negative integer"),
        ));
    }
    // All digits: the only parse failure left is a number beyond usize, which is a
    // request for everything, so it gets the cap too.
    Ok(v.parse::<usize>().map_or(MAX_PAGE, |n| n.min(MAX_PAGE)))
}

/// Selects one page of `sorted` according to the request's `n` and `last`.
pub fn paginate(sorted: Vec<String>, req: &Request) -> Result<Page> {
    let n = page_size(req.query("n"))?;
    let last = req.query("last").filter(|l| !l.is_empty());
    let start = last.map_or(0, |l| sorted.partition_point(|item| item.as_str() <= l));
    let mut items: Vec<String> = sorted.into_iter().skip(start).collect();
    let mut next = None;
    if items.len() > n {
        items.truncate(n);
        if let Some(last) = items.last() {
            next = Some(format!("n={n}&last={last}"));
        }
    }
    Ok(Page { items, next })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_size_is_capped_and_never_wraps() {
        assert_eq!(page_size(None).unwrap(), MAX_PAGE);
        assert_eq!(page_size(Some("")).unwrap(), MAX_PAGE);
        assert_eq!(page_size(Some("0")).unwrap(), 0);
        assert_eq!(page_size(Some("7")).unwrap(), 7);
        assert_eq!(page_size(Some("10001")).unwrap(), MAX_PAGE);
        assert_eq!(page_size(Some("18446744073709551616")).unwrap(), MAX_PAGE);
        assert_eq!(page_size(Some(&"9".repeat(500))).unwrap(), MAX_PAGE);
    }

    #[test]
    fn page_size_refuses_anything_but_digits() {
        for bad in ["-1", "+1", " 1", "1e3", "0x10", "ten"] {
            let e = page_size(Some(bad)).unwrap_err();
            assert_eq!(e.code, ErrorCode::PaginationNumberInvalid, "{bad}");
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
        }
    }
}
