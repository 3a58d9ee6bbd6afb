// berth's pages. Text from the server is put in the page with textContent only; the
// one exception is a repository's description, which the server renders from
// markdown with every raw HTML tag escaped (see src/web/markdown.rs).
"use strict";

// The session is an HttpOnly cookie this script cannot read; writes carry the session's
// CSRF token (from /api/session) in X-Berth-CSRF, which no other site's page can learn.
const CSRF = "berth-csrf";
const main = () => document.getElementById("main");

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "onclick" || k === "onsubmit" || k === "onchange" || k === "oninput") node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
  }
  return node;
}

function headers() {
  const token = sessionStorage.getItem(CSRF);
  return token ? { "X-Berth-CSRF": token } : {};
}

async function api(method, path, body) {
  const opts = { method, headers: headers(), credentials: "same-origin" };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const response = await fetch(path, opts);
  if (response.status === 204) return null;
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    if (response.status === 401) sessionStorage.removeItem(CSRF);
    const error = new Error((data.error && data.error.message) || response.statusText);
    error.status = response.status;
    throw error;
  }
  return data;
}

function size(bytes) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let n = bytes, i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function enc(name) { return name.split("/").map(encodeURIComponent).join("/"); }

function link(href, text) {
  return el("a", { href, onclick: (e) => { e.preventDefault(); go(href); } }, text);
}

function go(href) { history.pushState(null, "", href); route(); }
window.addEventListener("popstate", () => route());

function crumbs(...parts) {
  const nav = document.getElementById("crumbs");
  nav.replaceChildren(...parts.flatMap((p, i) => (i ? [" / ", p] : [p])));
}

function show(...nodes) { main().replaceChildren(...nodes.flat().filter((n) => n !== null && n !== undefined)); }

function failure(e) {
  show(el("p", { class: "error", id: "error" }, e.message),
    e.status === 401 || e.status === 404 ? el("p", {}, link("/ui/login", "Sign in")) : null);
}

async function who() {
  const span = document.getElementById("who");
  try {
    const me = await api("GET", "/api/session");
    if (me.csrfToken) sessionStorage.setItem(CSRF, me.csrfToken); else sessionStorage.removeItem(CSRF);
    if (me.signedIn) {
      span.replaceChildren("Signed in as ", el("b", { id: "user" }, me.user || ""),
        el("button", {
          id: "sign-out", onclick: async () => {
            await api("DELETE", "/api/session").catch(() => null);
            sessionStorage.removeItem(CSRF); go("/ui/");
          },
        }, "Sign out"));
    } else if (!me.open) {
      span.replaceChildren(link("/ui/login", "Sign in"));
    } else {
      span.replaceChildren();
    }
  } catch (e) {
    span.replaceChildren(link("/ui/login", "Sign in"));
  }
}

function loginPage() {
  crumbs(el("span", {}, "Sign in"));
  const user = el("input", { id: "username", name: "username", autocomplete: "username", required: true });
  const pass = el("input", { id: "password", name: "password", type: "password", autocomplete: "current-password", required: true });
  const message = el("p", { id: "message" });
  const form = el("form", {
    id: "login", class: "card", onsubmit: async (e) => {
      e.preventDefault();
      try {
        const session = await api("POST", "/api/session", { username: user.value, password: pass.value });
        sessionStorage.setItem(CSRF, session.csrfToken);
        go("/ui/");
      } catch (err) {
        message.className = "error";
        message.textContent = err.message;
      }
    },
  }, el("p", {}, el("label", {}, "User ", user)), el("p", {}, el("label", {}, "Password ", pass)),
    el("button", { type: "submit", id: "sign-in" }, "Sign in"), message);
  show(el("h1", {}, "Sign in"), form);
}

async function namespacesPage() {
  crumbs(el("span", {}, "Namespaces"));
  const list = await api("GET", "/api/namespaces");
  show(el("h1", {}, "Namespaces"),
    list.length === 0 ? el("p", { id: "empty" }, "No namespace you can see.") :
      el("table", { id: "namespaces" },
        el("tr", {}, el("th", {}, "Namespace"), el("th", {}, "Visibility"), el("th", {}, "Repositories"),
          el("th", {}, "Tags"), el("th", {}, "Usage")),
        list.map((ns) => el("tr", {},
          el("td", {}, link("/ui/n/" + encodeURIComponent(ns.name), ns.name)),
          el("td", {}, el("span", { class: "badge" }, ns.visibility)),
          el("td", {}, ns.repositories), el("td", {}, ns.tags),
          el("td", {}, size(ns.bytes) + (ns.maxBytes ? " of " + size(ns.maxBytes) : ""))))));
}

async function namespacePage(ns) {
  crumbs(link("/ui/", "Namespaces"), el("span", {}, ns));
  const params = new URLSearchParams(location.search);
  const q = params.get("q") || "", sort = params.get("sort") || "name", page = Number(params.get("page") || 1);
  const data = await api("GET", `/api/namespaces/${encodeURIComponent(ns)}/repositories?` +
    new URLSearchParams({ q, sort, page, per_page: 50 }));
  const search = el("input", { id: "search", value: q, placeholder: "Search repositories" });
  const order = el("select", { id: "sort" }, ["name", "pushed", "pulls", "tags"].map((s) =>
    el("option", { value: s, selected: s === sort }, "sort by " + s)));
  const apply = (p) => go(`/ui/n/${encodeURIComponent(ns)}?` + new URLSearchParams({ q: search.value, sort: order.value, page: p }));
  search.addEventListener("keydown", (e) => { if (e.key === "Enter") apply(1); });
  order.addEventListener("change", () => apply(1));
  const pages = Math.max(1, Math.ceil(data.total / data.perPage));
  show(el("h1", {}, ns),
    el("div", { class: "toolbar" }, search, order, el("span", {}, `${data.total} repositories`)),
    el("table", { id: "repositories" },
      el("tr", {}, el("th", {}, "Repository"), el("th", {}, "Category"), el("th", {}, "Tags"),
        el("th", {}, "Pulls"), el("th", {}, "Last push")),
      data.items.map((r) => el("tr", {},
        el("td", {}, link("/ui/r/" + enc(r.name), r.name), r.summary ? el("div", {}, r.summary) : null),
        el("td", {}, r.category || ""), el("td", {}, r.tags), el("td", {}, r.pulls),
        el("td", {}, r.lastPush ? new Date(r.lastPush).toLocaleString() : "")))),
    el("div", { class: "toolbar" },
      page > 1 ? el("button", { onclick: () => apply(page - 1) }, "Previous") : null,
      el("span", {}, `page ${page} of ${pages}`),
      page < pages ? el("button", { onclick: () => apply(page + 1) }, "Next") : null));
}

function copyButton(text, id) {
  return el("button", {
    id, "data-copy": text, onclick: async (e) => {
      const button = e.target;
      // The page says what it copied (button text and data-copied), for the user and tests.
      button.removeAttribute("data-copied");
      try { await navigator.clipboard.writeText(text); button.textContent = "Copied"; button.dataset.copied = text; }
      catch (_) {
        const area = el("textarea", {}, text);
        document.body.append(area); area.select();
        const ok = document.execCommand && document.execCommand("copy");
        area.remove();
        button.textContent = ok ? "Copied" : "Copy failed";
        if (ok) button.dataset.copied = text;
      }
    },
  }, "Copy");
}

// The outcome of the last upload, shown by the repository page it reloads.
let uploaded = null;

function uploadCard(repo, reload) {
  const file = el("input", { type: "file", id: "upload-file", accept: ".tar,.tgz,.gz,application/x-tar,application/gzip" });
  const tag = el("input", { id: "upload-tag", placeholder: "tag", value: "latest" });
  const bar = el("progress", { id: "upload-progress", max: 100, value: 0 });
  const message = el("p", { id: "upload-message" });
  const start = () => {
    if (!file.files.length) { message.textContent = "Choose a file first."; return; }
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/api/repositories/${enc(repo)}/-/upload?` + new URLSearchParams({ tag: tag.value }));
    for (const [k, v] of Object.entries(headers())) xhr.setRequestHeader(k, v);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    let events = 0;
    xhr.upload.onprogress = (e) => {
      if (!e.lengthComputable) return;
      bar.value = Math.round((e.loaded / e.total) * 100);
      bar.dataset.events = String(++events);
      message.textContent = `Uploading… ${size(e.loaded)} of ${size(e.total)}`;
    };
    message.className = ""; message.textContent = "Uploading…";
    xhr.onload = () => {
      let data = {};
      try { data = JSON.parse(xhr.responseText); } catch (_) { }
      if (xhr.status === 201) {
        // Shown again by the reloaded page, which lists the new tag.
        uploaded = { text: `Uploaded ${data.repository}:${data.tag} (${data.digest})`, events };
        message.className = "ok";
        message.textContent = uploaded.text;
        reload();
      } else {
        message.className = "error";
        message.textContent = (data.error && data.error.message) || xhr.statusText;
      }
    };
    xhr.onerror = () => { message.className = "error"; message.textContent = "The upload failed."; };
    xhr.send(file.files[0]);
  };
  if (uploaded) {
    message.className = "ok"; message.textContent = uploaded.text;
    bar.value = 100; bar.dataset.events = String(uploaded.events);
    uploaded = null;
  }
    return el("div", { class: "card", id: "upload" }, el("h2", {}, "Upload an image"),
    el("p", {}, "A docker save or OCI image-layout tar, plain or gzip, up to 2 GiB. An existing tag of that name is replaced."),
    el("div", { class: "toolbar" }, file, tag, el("button", { id: "upload-start", onclick: start }, "Upload"), bar), message);
}

async function repositoryPage(repo) {
  const ns = repo.split("/")[0];
  crumbs(link("/ui/", "Namespaces"), link("/ui/n/" + encodeURIComponent(ns), ns), el("span", {}, repo));
  const params = new URLSearchParams(location.search);
  const page = Number(params.get("page") || 1), q = params.get("q") || "";
  const data = await api("GET", `/api/repositories/${enc(repo)}?` + new URLSearchParams({ page, q, per_page: 50 }));
  const reload = () => route();
  const description = el("div", { class: "description card", id: "description" });
  // Rendered and sanitised by the server: raw HTML in the markdown arrives escaped.
  if (data.descriptionHtml) description.innerHTML = data.descriptionHtml;
  else description.append(el("p", {}, "No description."));
  const selected = new Set();
  const confirmBox = el("div", { id: "confirm", class: "card", hidden: true });
  const askDelete = (tags) => {
    confirmBox.hidden = false;
    const outcome = el("p", { id: "delete-message" });
    confirmBox.replaceChildren(el("p", {}, `Delete ${tags.length} tag(s) of ${repo}: ${tags.join(", ")}? This cannot be undone.`),
      el("button", {
        class: "danger", id: "confirm-delete", onclick: async () => {
          try {
            const results = await api("POST", `/api/repositories/${enc(repo)}/-/delete-tags`, { tags });
            const failed = results.filter((r) => !r.deleted);
            if (failed.length) { outcome.className = "error"; outcome.textContent = failed.map((f) => `${f.tag}: ${f.error}`).join("; "); }
            else reload();
          } catch (e) { outcome.className = "error"; outcome.textContent = e.message; }
        },
      }, "Delete"),
      el("button", { id: "cancel-delete", onclick: () => { confirmBox.hidden = true; } }, "Cancel"), outcome);
  };
  const rows = data.tags.items.map((t) => el("tr", { "data-tag": t.tag },
    data.permissions.delete ? el("td", {}, el("input", {
      type: "checkbox", class: "select-tag", value: t.tag,
      onchange: (e) => { e.target.checked ? selected.add(t.tag) : selected.delete(t.tag); },
    })) : null,
    el("td", {}, link(`/ui/t/${enc(repo)}/-/${encodeURIComponent(t.tag)}`, t.tag)),
    el("td", { class: "mono" }, (t.digest || "").slice(0, 19)),
    el("td", {}, size(t.size)), el("td", {}, t.platforms.join(", ")),
    el("td", {}, new Date(t.pushedAt).toLocaleString()),
    el("td", { class: "pulls" }, t.pulls),
    el("td", { class: "mono" }, t.pull.docker, " ", copyButton(t.pull.docker, "copy-" + t.tag)),
  ));
  const pages = Math.max(1, Math.ceil(data.tags.total / data.tags.perPage));
  const go2 = (p) => go(`/ui/r/${enc(repo)}?` + new URLSearchParams({ page: p, q }));
  show(el("h1", {}, repo),
    el("p", {}, el("span", { class: "badge" }, data.visibility), data.category ? el("span", { class: "badge", id: "category" }, data.category) : null,
      Object.entries(data.labels).map(([k, v]) => el("span", { class: "badge label" }, `${k}=${v}`)),
      " ", el("span", { id: "pull-count" }, `${data.pullCount} pulls`)),
    description,
    data.permissions.push ? uploadCard(repo, reload) : null,
    el("h2", {}, `Tags (${data.tags.total})`),
    data.permissions.delete ? el("div", { class: "toolbar" },
      el("button", { class: "danger", id: "delete-selected", onclick: () => { if (selected.size) askDelete([...selected]); } }, "Delete selected tags"),
      el("button", { id: "delete-repository", onclick: () => deleteRepository(repo) }, "Delete repository")) : null,
    confirmBox,
    el("table", { id: "tags" },
      el("tr", {}, data.permissions.delete ? el("th", {}, "") : null, el("th", {}, "Tag"), el("th", {}, "Digest"),
        el("th", {}, "Size"), el("th", {}, "Platforms"), el("th", {}, "Pushed"), el("th", {}, "Pulls"), el("th", {}, "Pull")),
      rows),
    el("div", { class: "toolbar" },
      page > 1 ? el("button", { onclick: () => go2(page - 1) }, "Previous") : null,
      el("span", {}, `page ${page} of ${pages}`),
      page < pages ? el("button", { onclick: () => go2(page + 1) }, "Next") : null));
}

async function deleteRepository(repo) {
  const typed = prompt(`Type ${repo} to delete the repository and all its tags.`);
  if (typed !== repo) return;
  try { await api("DELETE", `/api/repositories/${enc(repo)}`); go("/ui/n/" + encodeURIComponent(repo.split("/")[0])); }
  catch (e) { alert(e.message); }
}

async function tagPage(repo, tag) {
  const ns = repo.split("/")[0];
  crumbs(link("/ui/", "Namespaces"), link("/ui/n/" + encodeURIComponent(ns), ns), link("/ui/r/" + enc(repo), repo), el("span", {}, tag));
  const t = await api("GET", `/api/repositories/${enc(repo)}/-/tags/${encodeURIComponent(tag)}`);
  const runs = t.runs ? el("div", { class: "card", id: "runs" }, el("h2", {}, "Where it runs"),
    t.runs.error ? el("p", { class: "error" }, t.runs.error) : null,
    t.runs.workloads.length === 0 ? el("p", {}, "No Pod runs this digest.") :
      el("table", { id: "workloads" }, el("tr", {}, el("th", {}, "Namespace"), el("th", {}, "Workload"), el("th", {}, "Pods")),
        t.runs.workloads.map((w) => el("tr", {}, el("td", {}, w.namespace), el("td", {}, `${w.kind}/${w.name}`), el("td", {}, w.pods.join(", "))))),
    t.runs.triggers.length === 0 ? el("p", {}, "No Trigger rolled it out.") :
      el("table", { id: "triggers" }, el("tr", {}, el("th", {}, "Trigger"), el("th", {}, "Target"), el("th", {}, "History")),
        t.runs.triggers.map((r) => el("tr", {}, el("td", {}, `${r.namespace}/${r.name}`), el("td", {}, r.target),
          el("td", {}, r.history.map((h) => el("div", {}, `${h.tag} ${h.result} pushed ${h.pushedAt}` + (h.latencyMs != null ? ` (${h.latencyMs} ms)` : "")))))))) : null;
  show(el("h1", {}, `${repo}:${tag}`),
    el("div", { class: "card" },
      el("p", {}, "Digest ", el("code", { id: "digest" }, t.digest)),
      el("p", {}, `Size ${size(t.size)} · ${t.platforms.join(", ") || "unknown platform"} · `, el("span", { id: "tag-pulls" }, `${t.pulls} pulls`)),
      el("p", { class: "mono" }, t.pull.docker, " ", copyButton(t.pull.docker, "copy-docker")),
      el("p", { class: "mono" }, t.pull.ctr, " ", copyButton(t.pull.ctr, "copy-ctr"))),
    runs,
    el("h2", {}, "Layers"),
    el("table", { id: "layers" }, el("tr", {}, el("th", {}, "Digest"), el("th", {}, "Media type"), el("th", {}, "Size")),
      t.layers.map((l) => el("tr", {}, el("td", { class: "mono" }, l.digest), el("td", {}, l.mediaType), el("td", {}, size(l.size))))),
    t.history.length ? el("h2", {}, "History") : null,
    t.history.length ? el("table", { id: "history" }, el("tr", {}, el("th", {}, "Step"), el("th", {}, "Created")),
      t.history.map((h) => el("tr", {}, el("td", { class: "mono" }, h.createdBy || h.comment || ""), el("td", {}, h.created || "")))) : null,
    el("h2", {}, "Manifest"), el("pre", { id: "manifest", class: "card mono" }, JSON.stringify(t.manifest, null, 2)),
    t.config ? el("h2", {}, "Config") : null,
    t.config ? el("pre", { id: "config", class: "card mono" }, JSON.stringify(t.config, null, 2)) : null);
}

async function route() {
  const path = decodeURIComponent(location.pathname.replace(/^\/ui\/?/, ""));
  who();
  try {
    if (path === "login") return loginPage();
    if (path.startsWith("n/")) return await namespacePage(path.slice(2));
    if (path.startsWith("t/")) {
      const [repo, tag] = path.slice(2).split("/-/");
      return await tagPage(repo, tag);
    }
    if (path.startsWith("r/")) return await repositoryPage(path.slice(2).replace(/\/$/, ""));
    return await namespacesPage();
  } catch (e) {
    failure(e);
  } finally {
    document.body.setAttribute("data-ready", "true");
  }
}

route();
