//! Repository descriptions: markdown rendered to HTML that cannot run anything.
//!
//! Sanitised by construction rather than by filtering HTML afterwards: raw HTML in the
//! markdown (block or inline) is rendered as text, so a `<script>` shows as those
//! characters; link and image targets keep only `http`, `https` and `mailto` schemes
//! and relative paths (a `javascript:` link becomes `#`). The pages' Content-Security-
//! Policy forbids inline script besides, as a second wall.

use pulldown_cmark::{CowStr, Event, Options, Parser, Tag};

fn safe_url(url: &str) -> bool {
    let lower = url.trim().to_ascii_lowercase();
    match lower.split_once(':') {
        // A colon before any `/`, `?` or `#` starts a scheme.
        Some((scheme, _)) if !scheme.contains(['/', '?', '#']) => {
            matches!(scheme, "http" | "https" | "mailto")
        }
        _ => true,
    }
}

fn clean(url: CowStr<'_>) -> CowStr<'_> {
    if safe_url(&url) { url } else { "#".into() }
}

pub fn render(markdown: &str) -> String {
    let options =
        Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS;
    let events = Parser::new_ext(markdown, options).map(|event| match event {
        Event::Html(raw) | Event::InlineHtml(raw) => Event::Text(raw),
        Event::Start(Tag::Link {
            link_type,
            dest_url,
            title,
            id,
        }) => Event::Start(Tag::Link {
            link_type,
            dest_url: clean(dest_url),
            title,
            id,
        }),
        Event::Start(Tag::Image {
            link_type,
            dest_url,
            title,
            id,
        }) => Event::Start(Tag::Image {
            link_type,
            dest_url: clean(dest_url),
            title,
            id,
        }),
        other => other,
    });
    let mut html = String::with_capacity(markdown.len() * 3 / 2);
    pulldown_cmark::html::push_html(&mut html, events);
    html
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn raw_html_is_shown_as_text_and_never_becomes_markup() {
        let html = render("# Hi\n\n<script>alert(1)</script>\n\nx <img src=x onerror=alert(1)> y");
        assert!(html.contains("<h1>Hi</h1>"), "{html}");
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
    }

    #[test]
    fn only_harmless_link_schemes_survive() {
        let html = render(
            "[a](javascript:alert(1)) [b](https://example.org) [c](/ui/) [d](JavaScript:x) ![e](data:text/html,x)",
        );
        assert!(!html.to_lowercase().contains("javascript:"), "{html}");
        assert!(!html.contains("data:"), "{html}");
        assert!(html.contains(r#"href="https://example.org""#), "{html}");
        assert!(html.contains(r#"href="/ui/""#), "{html}");
    }
}
