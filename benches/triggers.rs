//! Push to rollout: how long after a tag is pushed berth patches the Deployment, and
//! how long until the rollout completes. A measurement, not a test: it fails only when
//! something answers wrongly, never on a target.
//!
//! berth (`berth operator`) and a control plane must already run; `scripts/bench-triggers.sh`
//! starts both (see benches/README.md) and runs
//!
//! ```text
//! cargo bench --bench triggers -- --berth http://127.0.0.1:PORT --kubeconfig FILE \
//!     [--tags 50] [--replicas 1] [--namespace default]
//! ```
//!
//! For each of `--tags` new tags, one after another: the manifest is PUT (its blobs are
//! uploaded once beforehand, so the push is the manifest commit), berth's trigger patches
//! the Deployment, the bench waits for the rollout to complete, then pushes the next.
//! Reported, each as p50 / p90 / p99 / max:
//! - push → patch as berth records it in `status.history` (manifest commit to the
//!   patch's reply, on berth's clock), and as this client sees it (PUT sent to the
//!   Deployment's new image arriving on a watch);
//! - push → rollout complete, as berth records it (`finishedAt`) and as the client
//!   sees it (the watch shows every replica updated and available).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use berth::api::{Namespace, Trigger};

const USAGE: &str = "\
trigger benchmark: push to patch and push to rollout (normally run by scripts/bench-triggers.sh)

  cargo bench --bench triggers -- --berth URL --kubeconfig FILE [options]

  --berth URL        the registry of a running `berth operator`   (env BENCH_BERTH)
  --kubeconfig FILE  the cluster that operator manages            (env KUBECONFIG)
  --namespace NS     Kubernetes namespace for the Deployment and the Trigger [default]
  --tags N           tags pushed, one after another [50]
  --replicas N       replicas of the Deployment [1]
  --user NAME        push as this berth user (Basic auth)           (env BENCH_USER)
  --password SECRET  its password                                   (env BENCH_PASSWORD)
";

struct Settings {
    berth: String,
    kubeconfig: String,
    namespace: String,
    tags: usize,
    replicas: i32,
    /// Basic-auth credentials for the pushes, when berth wants them.
    credentials: Option<(String, String)>,
}

impl Settings {
    fn sign_in(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.credentials {
            Some((user, password)) => request.basic_auth(user, Some(password)),
            None => request,
        }
    }
}

fn parse_settings() -> anyhow::Result<Option<Settings>> {
    let mut flags: HashMap<String, String> = HashMap::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => {}
            "--help" | "-h" => {
                print!("{USAGE}");
                return Ok(None);
            }
            _ if arg.starts_with("--") => {
                let value = args
                    .next()
                    .with_context(|| format!("{arg} needs a value"))?;
                flags.insert(arg, value);
            }
            _ => {}
        }
    }
    let get = |flag: &str, env: &str| {
        flags
            .get(flag)
            .cloned()
            .or_else(|| std::env::var(env).ok().filter(|v| !v.is_empty()))
    };
    let Some(berth) = get("--berth", "BENCH_BERTH") else {
        // `cargo test --all-targets` runs this binary too: without berth, do nothing.
        eprintln!(
            "trigger bench: no --berth URL (or BENCH_BERTH) given, nothing to measure; \
             run scripts/bench-triggers.sh"
        );
        return Ok(None);
    };
    let kubeconfig = get("--kubeconfig", "KUBECONFIG").context("--kubeconfig is required")?;
    let number = |flag: &str, default: usize| -> anyhow::Result<usize> {
        flags.get(flag).map_or(Ok(default), |v| {
            v.parse()
                .with_context(|| format!("{flag}: {v:?} is not a number"))
        })
    };
    Ok(Some(Settings {
        berth: berth.trim_end_matches('/').to_string(),
        kubeconfig,
        namespace: flags
            .get("--namespace")
            .cloned()
            .unwrap_or_else(|| "default".into()),
        tags: number("--tags", 50)?,
        replicas: number("--replicas", 1)? as i32,
        credentials: get("--user", "BENCH_USER").zip(get("--password", "BENCH_PASSWORD")),
    }))
}

fn main() -> anyhow::Result<()> {
    let Some(settings) = parse_settings()? else {
        return Ok(());
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(settings))
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// What the client saw of the Deployment, by image: when it first appeared in the
/// template, and when a rollout to it was first complete.
#[derive(Default)]
struct Seen {
    patched: HashMap<String, Instant>,
    complete: HashMap<String, Instant>,
}

fn watch_deployment(api: Api<Deployment>, seen: Arc<Mutex<Seen>>) {
    let config = watcher::Config::default().fields("metadata.name=web");
    let stream = watcher(api, config).default_backoff().applied_objects();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(Ok(d)) = stream.next().await {
            let now = Instant::now();
            let spec = d.spec.unwrap_or_default();
            let Some(image) = spec
                .template
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.clone())
            else {
                continue;
            };
            let status = d.status.unwrap_or_default();
            let wanted = spec.replicas.unwrap_or(1);
            let complete = status.observed_generation >= d.metadata.generation
                && status.updated_replicas == Some(wanted)
                && status.replicas == Some(wanted)
                && status.available_replicas == Some(wanted);
            let mut seen = seen.lock().unwrap();
            seen.patched.entry(image.clone()).or_insert(now);
            if complete {
                seen.complete.entry(image).or_insert(now);
            }
        }
    });
}

async fn wait<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("{what} did not happen within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Milliseconds at the nearest-rank percentile `p` of sorted `values`.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn report(name: &str, mut values: Vec<f64>, target: &str, pass: Option<bool>) {
    values.sort_by(f64::total_cmp);
    let verdict = match pass {
        Some(true) => "PASS",
        Some(false) => "MISS",
        None => "-",
    };
    println!(
        "| {name} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {target} | {verdict} |",
        values.len(),
        percentile(&values, 50.0),
        percentile(&values, 90.0),
        percentile(&values, 99.0),
        values.last().copied().unwrap_or(0.0),
    );
}

async fn run(s: Settings) -> anyhow::Result<()> {
    let config = kube::config::Kubeconfig::read_from(&s.kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(config, &Default::default()).await?;
    let client = kube::Client::try_from(config)?;
    let http = reqwest::Client::new();
    let host = s.berth.trim_start_matches("http://").to_string();
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let team = format!("bench-{suffix}");
    let repo = format!("{team}/web");

    // The registry namespace, the Deployment (Available) and the Trigger (Ready).
    let namespaces = Api::<Namespace>::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "Namespace",
        "metadata": {"name": team}, "spec": {},
    }))?;
    namespaces.create(&PostParams::default(), &ns).await?;
    let result = measure(&s, &client, &http, &host, &team, &repo).await;
    let _ = namespaces.delete(&team, &DeleteParams::default()).await;
    let _ = Api::<Trigger>::namespaced(client.clone(), &s.namespace)
        .delete("web-bench", &DeleteParams::default())
        .await;
    let _ = Api::<Deployment>::namespaced(client, &s.namespace)
        .delete("web", &DeleteParams::default())
        .await;
    result
}

async fn measure(
    s: &Settings,
    client: &kube::Client,
    http: &reqwest::Client,
    host: &str,
    team: &str,
    repo: &str,
) -> anyhow::Result<()> {
    let url = &s.berth;
    let namespaces = Api::<Namespace>::all(client.clone());
    wait(
        "the berth Namespace Ready",
        Duration::from_secs(60),
        async || {
            let ns = namespaces.get(team).await?;
            Ok(ns
                .status
                .filter(|st| berth::api::conditions::is_ready(&st.conditions))
                .map(|_| ()))
        },
    )
    .await?;

    let deployments = Api::<Deployment>::namespaced(client.clone(), &s.namespace);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": s.replicas,
            "selector": {"matchLabels": {"app": "web-bench"}},
            "template": {
                "metadata": {"labels": {"app": "web-bench"}},
                "spec": {"containers": [{"name": "web", "image": format!("{host}/{repo}:v0")}]},
            },
        },
    }))?;
    deployments
        .create(&PostParams::default(), &deployment)
        .await?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    watch_deployment(deployments.clone(), seen.clone());
    wait(
        "the Deployment Available",
        Duration::from_secs(60),
        async || {
            let d = deployments.get("web").await?;
            Ok((d.status.and_then(|st| st.available_replicas) == Some(s.replicas)).then_some(()))
        },
    )
    .await?;

    let triggers = Api::<Trigger>::namespaced(client.clone(), &s.namespace);
    let trigger: Trigger = serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "Trigger",
        "metadata": {"name": "web-bench"},
        "spec": {"repository": repo, "target": {"name": "web"}, "historyLimit": 100},
    }))?;
    triggers.create(&PostParams::default(), &trigger).await?;
    wait("the Trigger Ready", Duration::from_secs(60), async || {
        let t = triggers.get("web-bench").await?;
        Ok(t.status
            .filter(|st| berth::api::conditions::is_ready(&st.conditions))
            .map(|_| ()))
    })
    .await?;

    // Blobs once; each tag is a manifest of its own (an annotation makes it unique).
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer = b"the one layer of every benchmark image".to_vec();
    for blob in [config.to_vec(), layer.clone()] {
        let digest = sha256(&blob);
        let r = s
            .sign_in(http.post(format!("{url}/v2/{repo}/blobs/uploads/?digest={digest}")))
            .body(blob.clone())
            .send()
            .await?;
        ensure!(r.status().is_success(), "blob upload: {}", r.status());
    }

    println!("== berth trigger benchmark ==");
    println!(
        "{} tags pushed one after another to {url} ({}), Deployment with {} replica(s) on kwok",
        s.tags, repo, s.replicas
    );
    let mut berth_patch = Vec::new();
    let mut client_patch = Vec::new();
    let mut berth_rollout = Vec::new();
    let mut client_rollout = Vec::new();
    for i in 1..=s.tags {
        let tag = format!("v{i}");
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(config), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(&layer), "size": layer.len()}],
            "annotations": {"bench.berth.dev/tag": tag},
        })
        .to_string();
        let digest = sha256(manifest.as_bytes());
        let image = format!("{host}/{repo}:{tag}@{digest}");
        let sent = Instant::now();
        let r = s
            .sign_in(http.put(format!("{url}/v2/{repo}/manifests/{tag}")))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(manifest)
            .send()
            .await?;
        ensure!(r.status() == 201, "manifest PUT {tag}: {}", r.status());

        let firing = wait(
            &format!("the rollout of {tag}"),
            Duration::from_secs(120),
            async || {
                let t = triggers.get("web-bench").await?;
                let history = t.status.map(|st| st.history).unwrap_or_default();
                Ok(history
                    .into_iter()
                    .find(|f| f.tag == tag && f.digest == digest && f.result != "Progressing"))
            },
        )
        .await?;
        ensure!(
            firing.result == "Succeeded",
            "{tag}: {} ({:?})",
            firing.result,
            firing.message
        );
        let pushed = firing.pushed_at.0;
        let patched = firing.patched_at.context("patchedAt")?.0;
        let finished = firing.finished_at.context("finishedAt")?.0;
        berth_patch.push(patched.duration_since(pushed).as_secs_f64() * 1000.0);
        berth_rollout.push(finished.duration_since(pushed).as_secs_f64() * 1000.0);
        let (seen_patch, seen_done) = wait(
            &format!("the watch to show the rollout of {tag}"),
            Duration::from_secs(30),
            async || {
                let seen = seen.lock().unwrap();
                Ok(seen
                    .patched
                    .get(&image)
                    .zip(seen.complete.get(&image))
                    .map(|(p, c)| (*p, *c)))
            },
        )
        .await?;
        client_patch.push(seen_patch.duration_since(sent).as_secs_f64() * 1000.0);
        client_rollout.push(seen_done.duration_since(sent).as_secs_f64() * 1000.0);
        if i % 10 == 0 {
            eprintln!("  {i}/{} tags", s.tags);
        }
    }

    let p50 = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        percentile(&v, 50.0)
    };
    let p99 = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        percentile(&v, 99.0)
    };
    println!();
    println!("| milliseconds | n | p50 | p90 | p99 | max | target | result |");
    println!("|---|---:|---:|---:|---:|---:|---|---|");
    let patch_ok = p50(&berth_patch) < 300.0 && p99(&berth_patch) < 1000.0;
    report(
        "push → patch (berth: manifest commit → patch reply)",
        berth_patch.clone(),
        "p50 < 300, p99 < 1000",
        Some(patch_ok),
    );
    let client_ok = p50(&client_patch) < 300.0 && p99(&client_patch) < 1000.0;
    report(
        "push → patch (client: PUT sent → new image on a watch)",
        client_patch,
        "p50 < 300, p99 < 1000",
        Some(client_ok),
    );
    report(
        "push → rollout complete (berth: commit → finishedAt)",
        berth_rollout,
        "-",
        None,
    );
    report(
        "push → rollout complete (client: PUT sent → all replicas available on a watch)",
        client_rollout,
        "-",
        None,
    );
    println!();
    println!(
        "percentiles are nearest-rank over {} samples (with 50, p99 is the largest)",
        s.tags
    );
    Ok(())
}
