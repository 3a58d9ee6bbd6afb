//! The pages in headless Chromium (Debian's package): what an anonymous visitor sees,
//! a description whose script does not run, a private repository denied. Its
//! screenshots (`anonymous-*.png`) are saved under `target/tmp/ui-screenshots/`; the
//! signed-in session's pages are in `clicks.rs`.

use std::path::PathBuf;
use std::process::Command;

use crate::common::require_tool;
use crate::{creds, start};

fn chromium() -> Option<PathBuf> {
    require_tool("chromium")
}

fn headless(chromium: &PathBuf, profile: &std::path::Path) -> Command {
    let mut cmd = Command::new(chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--virtual-time-budget=5000",
        "--window-size=1280,900",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

/// The page's DOM once its script has run.
fn dump_dom(chromium: &PathBuf, url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = headless(chromium, profile.path())
        .arg("--dump-dom")
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn screenshot(chromium: &PathBuf, url: &str, name: &str) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let profile = tempfile::tempdir().unwrap();
    let file = dir.join(format!("{name}.png"));
    let out = headless(chromium, profile.path())
        .arg(format!("--screenshot={}", file.display()))
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::metadata(&file).unwrap().len() > 1000,
        "{} is a real picture",
        file.display()
    );
}

#[tokio::test]
async fn an_anonymous_visitor_browses_public_content_and_no_description_script_runs() {
    let Some(chromium) = chromium() else { return };
    let registry = start().await;
    registry.push(&creds("root"), "pub/app", "v1", "p").await;
    registry
        .push(&creds("root"), "team/secret", "v1", "s")
        .await;
    let url = registry.url();

    let home = dump_dom(&chromium, &format!("{url}/ui/"));
    assert!(home.contains("data-ready=\"true\""), "{home}");
    assert!(home.contains("/ui/n/pub"), "{home}");
    assert!(
        !home.contains("team"),
        "a private namespace is not listed: {home}"
    );

    let repo = dump_dom(&chromium, &format!("{url}/ui/r/pub/app"));
    assert!(
        repo.contains("<h1>The app</h1>"),
        "the description is rendered: {repo}"
    );
    assert!(repo.contains("<strong>everything</strong>"), "{repo}");
    assert!(
        repo.contains("&lt;script&gt;"),
        "the script shows as text: {repo}"
    );
    assert!(
        !repo.contains("<title>pwned</title>"),
        "no script from the description ran: {repo}"
    );
    assert!(repo.contains("<title>berth</title>"), "{repo}");
    assert!(
        repo.contains(&format!("docker pull {}/pub/app:v1", registry.berth.addr)),
        "the pull command: {repo}"
    );

    let denied = dump_dom(&chromium, &format!("{url}/ui/r/team/secret"));
    assert!(
        denied.contains("does not exist, or you may not see it"),
        "{denied}"
    );
    assert!(!denied.contains("id=\"tags\""), "{denied}");

    screenshot(&chromium, &format!("{url}/ui/"), "anonymous-namespaces");
    screenshot(
        &chromium,
        &format!("{url}/ui/r/pub/app"),
        "anonymous-repository",
    );
    screenshot(
        &chromium,
        &format!("{url}/ui/t/pub/app/-/v1"),
        "anonymous-tag",
    );
    screenshot(&chromium, &format!("{url}/ui/login"), "anonymous-login");
}

#[tokio::test]
async fn the_pages_forbid_inline_script() {
    let registry = start().await;
    let reply = registry
        .raw(reqwest::Method::GET, "/ui/r/pub/app", None, None)
        .await;
    assert_eq!(reply.status, 200);
    let csp = reply.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(
        !reply.text().contains("<script>"),
        "the shell holds no inline script"
    );
}
