//! A user's session in headless Chromium, driven over the DevTools protocol (`cdp.rs`)
//! by mouse clicks and typing: sign in, open a namespace and a repository, read the
//! rendered description, upload a `docker save` tar through the file input and watch
//! the progress and the new tag, pull it with skopeo and see the pull count rise, copy
//! a pull command, delete two tags in a batch through the in-page confirmation, sign
//! out, and be denied a private repository as an anonymous visitor. Screenshots of the
//! main pages land in `target/tmp/ui-screenshots/`. A failing step names itself.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::Method;
use serde_json::json;

use crate::cdp::{Browser, Page};
use crate::common::{missing_prerequisite, require_tool, run};
use crate::upload::Dockerd;
use crate::{creds, start_with_args, tarball};

async fn step<T>(name: &str, work: impl Future<Output = Result<T, String>>) -> T {
    eprintln!("step: {name}");
    match work.await {
        Ok(value) => value,
        Err(e) => panic!("step \"{name}\" failed: {e}"),
    }
}

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(what()) }
}

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots")
}

/// A `docker save` tar of a fresh image of a few MiB (so the upload reports progress):
/// made by a dockerd of the test's own where there is one, else written in the same
/// layout by the test (outside CI only).
fn docker_saved_image(work: &Path) -> PathBuf {
    let saved = work.join("saved.tar");
    // Incompressible-ish content, so the layer is as big as it says.
    let mut content = String::with_capacity(6 << 20);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while content.len() < 6 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        content.push_str(&format!("{x:016x}"));
    }
    let daemon = require_tool("dockerd").and_then(|dockerd| {
        require_tool("docker")?;
        let daemon = Dockerd::start(&dockerd);
        if daemon.is_none() {
            missing_prerequisite(
                "a running dockerd",
                "run the tests as root with Debian's docker.io installed",
            );
        }
        daemon
    });
    match daemon {
        Some(daemon) => {
            let root = work.join("rootfs");
            std::fs::create_dir_all(&root).unwrap();
            std::fs::write(root.join("data.txt"), &content).unwrap();
            let rootfs = work.join("rootfs.tar");
            run(Command::new("tar")
                .arg("-C")
                .arg(&root)
                .arg("-cf")
                .arg(&rootfs)
                .arg("data.txt"));
            run(daemon
                .docker()
                .arg("import")
                .arg(&rootfs)
                .arg("berth-test/browser:1"));
            run(daemon
                .docker()
                .args(["save", "-o"])
                .arg(&saved)
                .arg("berth-test/browser:1"));
        }
        None => {
            eprintln!("no dockerd: the test writes the docker save layout itself");
            std::fs::write(&saved, tarball::docker_save(&content).bytes).unwrap();
        }
    }
    saved
}

/// Reloads the repository page until the tag's pull count reaches `at_least`.
async fn pulls_reach(page: &Page<'_>, url: &str, tag: &str, at_least: u64) -> Result<u64, String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        page.goto(url).await?;
        let cell = page
            .wait_for(&format!(
                "document.querySelector('tr[data-tag=\"{tag}\"] td.pulls')?.textContent"
            ))
            .await?;
        let pulls: u64 = cell
            .as_str()
            .unwrap_or("")
            .trim()
            .parse()
            .map_err(|_| format!("pull count cell {cell}"))?;
        if pulls >= at_least {
            return Ok(pulls);
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "the page still shows {pulls} pulls of {tag}, expected {at_least}"
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn a_user_signs_in_uploads_pulls_copies_and_deletes_through_the_pages() {
    let Some(chromium) = require_tool("chromium") else {
        return;
    };
    let Some(skopeo) = require_tool("skopeo") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let image = docker_saved_image(work.path());
    // Counts reach storage every second (the page shows unflushed counts too).
    let registry = start_with_args(&["--pull-count-flush", "1s"]).await;
    for tag in ["old-1", "old-2", "keep"] {
        registry.push(&creds("root"), "pub/app", tag, tag).await;
    }
    registry
        .push(&creds("root"), "team/secret", "v1", "s")
        .await;
    let url = registry.url();
    let shots = screenshots();
    let browser = step("start chromium", Browser::launch(&chromium)).await;
    let page = step("open a tab", browser.new_page()).await;
    step("grant clipboard access", async {
        browser
            .call(
                None,
                "Browser.grantPermissions",
                json!({"origin": url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]}),
            )
            .await
    })
    .await;

    step("sign in through the sign-in page", async {
        page.goto(&format!("{url}/ui/login")).await?;
        page.screenshot(&shots, "sign-in").await?;
        page.type_into("#username", "mona").await?;
        page.type_into("#password", &crate::password("mona"))
            .await?;
        page.click("#sign-in").await?;
        page.wait_for("document.getElementById('user')?.textContent === 'mona'")
            .await?;
        let cookies = page.cookies(&url).await?;
        let session = cookies
            .iter()
            .find(|c| c["name"] == "berth_session")
            .ok_or_else(|| format!("no session cookie in {cookies:?}"))?;
        ensure(
            session["httpOnly"] == true
                && session["sameSite"] == "Strict"
                && session["path"] == "/",
            || format!("the session cookie is HttpOnly, SameSite=Strict, Path=/: {session}"),
        )?;
        let visible = page.eval("document.cookie").await?;
        ensure(!visible.to_string().contains("berth_session"), || {
            format!("the page's script cannot read the session: {visible}")
        })
    })
    .await;

    step(
        "the namespaces page lists the private namespace mona belongs to",
        async {
            page.wait_for("document.querySelector('#namespaces a[href=\"/ui/n/team\"]')")
                .await?;
            page.screenshot(&shots, "namespaces").await.map(|_| ())
        },
    )
    .await;

    step("open a namespace", async {
        page.click("#namespaces a[href=\"/ui/n/pub\"]").await?;
        page.wait_for("document.querySelector('#repositories a[href=\"/ui/r/pub/app\"]')")
            .await?;
        page.screenshot(&shots, "namespace").await.map(|_| ())
    })
    .await;

    step(
        "open a repository and read its rendered description",
        async {
            page.click("#repositories a[href=\"/ui/r/pub/app\"]")
                .await?;
            let heading = page
                .wait_for("document.querySelector('#description h1')?.textContent")
                .await?;
            ensure(heading == "The app", || {
                format!("description heading {heading}")
            })?;
            let strong = page
                .eval("document.querySelector('#description strong')?.textContent")
                .await?;
            ensure(strong == "everything", || format!("bold text {strong}"))?;
            let text = page
                .eval("document.getElementById('description').textContent")
                .await?;
            ensure(text.as_str().unwrap_or("").contains("<script>"), || {
                format!("the description's script shows as text: {text}")
            })?;
            let title = page.eval("document.title").await?;
            ensure(title == "berth", || {
                format!("no script from the description ran; title is {title}")
            })?;
            page.wait_for("document.querySelector('tr[data-tag=\"old-1\"]')")
                .await?;
            page.screenshot(&shots, "repository").await.map(|_| ())
        },
    )
    .await;

    step("upload a docker save tar through the file input", async {
        page.choose_file("#upload-file", &image).await?;
        page.type_into("#upload-tag", "uploaded").await?;
        page.click("#upload-start").await?;
        let message = page
            .wait_for("document.querySelector('#upload-message.ok, #upload-message.error')?.textContent")
            .await?;
        ensure(message.as_str().unwrap_or("").starts_with("Uploaded pub/app:uploaded"), || {
            format!("the upload's message: {message}")
        })?;
        let progress = page
            .eval("[document.getElementById('upload-progress').value, Number(document.getElementById('upload-progress').dataset.events || 0)]")
            .await?;
        ensure(progress[0] == 100 && progress[1].as_u64().unwrap_or(0) >= 1, || {
            format!("progress shown ([percent, progress events]): {progress}")
        })?;
        page.wait_for("document.querySelector('tr[data-tag=\"uploaded\"]')").await?;
        Ok(())
    })
    .await;

    step("open the uploaded tag's page", async {
        page.click("tr[data-tag=\"uploaded\"] a").await?;
        let digest = page
            .wait_for("document.getElementById('digest')?.textContent")
            .await?;
        ensure(digest.as_str().unwrap_or("").starts_with("sha256:"), || {
            format!("digest {digest}")
        })?;
        let layers = page
            .eval("document.querySelectorAll('#layers tr').length")
            .await?;
        ensure(layers == 2, || {
            format!("one layer row (and the header): {layers}")
        })?;
        page.screenshot(&shots, "tag").await.map(|_| ())
    })
    .await;

    let repository = format!("{url}/ui/r/pub/app");
    step("pull with skopeo and see the pull count go up", async {
        let before = pulls_reach(&page, &repository, "uploaded", 0).await?;
        ensure(before == 0, || {
            format!("nobody pulled it yet, the page shows {before}")
        })?;
        let out = tempfile::tempdir().unwrap();
        let copy = Command::new(&skopeo)
            .args(["copy", "--src-tls-verify=false"])
            .arg(format!("docker://{}/pub/app:uploaded", registry.berth.addr))
            .arg(format!("dir:{}", out.path().display()))
            .output()
            .map_err(|e| e.to_string())?;
        ensure(copy.status.success(), || {
            String::from_utf8_lossy(&copy.stderr).into_owned()
        })?;
        // After the flush interval, the count is the stored one.
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        pulls_reach(&page, &repository, "uploaded", 1)
            .await
            .map(|_| ())
    })
    .await;

    step("copy the pull command", async {
        let expected = format!("docker pull {}/pub/app:uploaded", registry.berth.addr);
        page.click("#copy-uploaded").await?;
        let copied = page
            .wait_for("document.getElementById('copy-uploaded').dataset.copied")
            .await?;
        ensure(copied == expected.as_str(), || {
            format!("the page copied {copied}")
        })?;
        let clipboard = page.eval("navigator.clipboard.readText()").await?;
        ensure(clipboard == expected.as_str(), || {
            format!("the clipboard holds {clipboard}")
        })
    })
    .await;

    step("delete two tags in a batch through the in-page confirmation", async {
        page.click("tr[data-tag=\"old-1\"] input.select-tag").await?;
        page.click("tr[data-tag=\"old-2\"] input.select-tag").await?;
        page.click("#delete-selected").await?;
        let question = page
            .wait_for("!document.getElementById('confirm').hidden && document.getElementById('confirm').textContent")
            .await?;
        ensure(question.as_str().unwrap_or("").contains("Delete 2 tag(s) of pub/app: old-1, old-2"), || {
            format!("the confirmation asks: {question}")
        })?;
        page.screenshot(&shots, "delete-confirmation").await?;
        page.click("#confirm-delete").await?;
        page.wait_for("!document.querySelector('tr[data-tag=\"old-1\"]') && !document.querySelector('tr[data-tag=\"old-2\"]') && !!document.querySelector('tr[data-tag=\"keep\"]')").await?;
        let tags = registry.raw(Method::GET, "/v2/pub/app/tags/list", None, None).await.json();
        ensure(tags["tags"] == json!(["keep", "uploaded"]), || format!("really gone from /v2/: {tags}"))?;
        for tag in ["old-1", "old-2"] {
            let reply = registry
                .raw(Method::GET, &format!("/v2/pub/app/manifests/{tag}"), None, None)
                .await;
            ensure(reply.status == 404, || format!("{tag} still resolves: {}", reply.status))?;
        }
        Ok(())
    })
    .await;

    step("sign out", async {
        page.click("#sign-out").await?;
        page.wait_for("document.querySelector('#who a[href=\"/ui/login\"]')")
            .await?;
        let cookies = page.cookies(&url).await?;
        ensure(
            !cookies.iter().any(|c| c["name"] == "berth_session"),
            || format!("the session cookie is gone: {cookies:?}"),
        )
    })
    .await;

    step(
        "an anonymous visitor is denied a private repository",
        async {
            page.goto(&format!("{url}/ui/r/team/secret")).await?;
            let error = page
                .wait_for("document.getElementById('error')?.textContent")
                .await?;
            ensure(
                error
                    .as_str()
                    .unwrap_or("")
                    .contains("does not exist, or you may not see it"),
                || format!("the page says {error}"),
            )?;
            let tags = page.eval("!!document.getElementById('tags')").await?;
            ensure(tags == false, || {
                "no tag table for a private repository".into()
            })?;
            page.goto(&format!("{url}/ui/")).await?;
            page.wait_for("document.querySelector('#namespaces a[href=\"/ui/n/pub\"]')")
                .await?;
            let listed = page
                .eval("!!document.querySelector('#namespaces a[href=\"/ui/n/team\"]')")
                .await?;
            ensure(listed == false, || {
                "the private namespace is not listed".into()
            })?;
            page.goto(&format!("{url}/ui/r/team/secret")).await?;
            page.screenshot(&shots, "denied").await.map(|_| ())
        },
    )
    .await;
}
