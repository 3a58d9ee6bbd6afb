//! Signing in under attack: floods of wrong passwords cost bounded memory and do not
//! starve real users; refusals do not reveal which user names exist; tokens are minted
//! only from credentials and never outlive them.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::registry::{Creds, Registry, basic, login_command, user_secret};

const CONFIG: &str = r#"
apiVersion: berth.dev/v1alpha1
kind: Namespace
metadata: {name: team-a}
spec:
  visibility: private
  members:
    - {user: alice, permission: write}
---
"#;

async fn start() -> Registry {
    let config = format!("{CONFIG}{}", user_secret("alice", "alice-password", false));
    Registry::start(&config).await
}

fn alice() -> Creds {
    Creds::user("alice", "alice-password")
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn encode(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// A token request for a pull of team-a/app, with `grant`'s fields.
fn form<'a>(grant: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut form = vec![
        ("service", "berth"),
        ("scope", "repository:team-a/app:pull"),
    ];
    form.extend_from_slice(grant);
    form
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_wrong_passwords_keeps_memory_bounded_and_real_users_served() {
    let registry = start().await;
    registry.push(&alice(), "team-a/app", "v1", "flood").await;
    let token = registry
        .token(&alice(), &["repository:team-a/app:pull".to_string()])
        .await
        .expect("alice gets a token")["token"]
        .as_str()
        .unwrap()
        .to_string();
    let pid = registry.berth.pid().unwrap();
    let url = registry.url();
    let baseline = rss_bytes(pid);

    // A real client pulls a manifest with its token all through the flood.
    let flooding = Arc::new(AtomicBool::new(true));
    let puller = {
        let (url, token, flooding) = (url.clone(), token.clone(), flooding.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::builder().no_proxy().build().unwrap();
            let mut latencies = Vec::new();
            while flooding.load(Ordering::SeqCst) || latencies.len() < 20 {
                let started = Instant::now();
                let reply = http
                    .get(format!("{url}/v2/team-a/app/manifests/v1"))
                    .bearer_auth(&token)
                    .header("accept", "application/vnd.oci.image.manifest.v1+json")
                    .send()
                    .await
                    .expect("the manifest GET gets an answer");
                assert_eq!(reply.status(), StatusCode::OK, "a valid token is served");
                reply.bytes().await.unwrap();
                latencies.push(started.elapsed());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            latencies
        })
    };
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampler = {
        let (peak, flooding) = (peak.clone(), flooding.clone());
        tokio::spawn(async move {
            while flooding.load(Ordering::SeqCst) {
                peak.fetch_max(rss_bytes(pid), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // 1,000 concurrent sign-ins with wrong passwords, half for a real user and half for
    // made-up ones, from 100 loopback addresses (so per-address throttling alone does
    // not absorb them and the bounded pool of password checks is what is tested).
    let clients: Vec<reqwest::Client> = (0..100u8)
        .map(|n| {
            reqwest::Client::builder()
                .no_proxy()
                .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 1, n + 1)))
                .build()
                .unwrap()
        })
        .collect();
    let attempts: Vec<_> = (0..1000usize)
        .map(|n| {
            let http = clients[n % clients.len()].clone();
            let url = url.clone();
            let user = if n % 2 == 0 {
                "alice".to_string()
            } else {
                format!("nobody-{n}")
            };
            tokio::spawn(async move {
                let reply = http
                    .get(format!("{url}/v2/"))
                    .header("authorization", basic(&user, &format!("guess-{n}")))
                    .send()
                    .await
                    .expect("every attempt gets an answer");
                let retry_after = reply.headers().contains_key("retry-after");
                (reply.status(), retry_after)
            })
        })
        .collect();
    let (mut refused, mut slowed) = (0, 0);
    for attempt in attempts {
        let (status, retry_after) = attempt.await.unwrap();
        match status {
            StatusCode::UNAUTHORIZED => refused += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(retry_after, "a 429 says when to come back");
                slowed += 1;
            }
            other => panic!("a wrong password got {other}"),
        }
    }
    // Let the checks already queued drain while still sampling memory.
    tokio::time::sleep(Duration::from_secs(1)).await;
    flooding.store(false, Ordering::SeqCst);
    sampler.await.unwrap();
    let mut latencies = puller.await.unwrap();
    latencies.sort();
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    let peak = peak.load(Ordering::SeqCst);
    eprintln!(
        "flood: {refused} × 401, {slowed} × 429; berth RSS {} MiB before, {} MiB at peak; \
         valid pulls: {} in the flood, p50 {p50:?}, p99 {p99:?}",
        baseline >> 20,
        peak >> 20,
        latencies.len()
    );
    assert_eq!(refused + slowed, 1000);
    assert!(
        slowed > 0,
        "the flood was larger than the queue: some must be told to wait"
    );
    assert!(peak < 200 << 20, "berth's RSS reached {} MiB", peak >> 20);
    assert!(p99 < Duration::from_secs(1), "valid pulls p99 {p99:?}");

    // Afterwards the real user still signs in with the right password from a fresh address.
    let http = reqwest::Client::builder()
        .no_proxy()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 2, 1)))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = http
            .get(format!("{url}/v2/"))
            .header("authorization", basic("alice", "alice-password"))
            .send()
            .await
            .unwrap();
        if reply.status() == StatusCode::OK {
            break;
        }
        assert_eq!(reply.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(Instant::now() < deadline, "alice never got back in");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn an_unknown_user_and_a_wrong_password_get_byte_identical_answers() {
    let registry = start().await;
    let url = registry.url();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut answers = Vec::new();
    for (user, password) in [("alice", "wrong"), ("mallory", "wrong")] {
        for path in [
            "/v2/",
            "/v2/team-a/app/manifests/v1",
            "/auth/token?service=berth",
        ] {
            let reply = http
                .get(format!("{url}{path}"))
                .header("authorization", basic(user, password))
                .send()
                .await
                .unwrap();
            let status = reply.status();
            let challenge = reply.headers().get("www-authenticate").cloned();
            let body = reply.bytes().await.unwrap();
            answers.push((path, status, challenge, body));
        }
    }
    let (alice, mallory) = answers.split_at(3);
    for (a, m) in alice.iter().zip(mallory) {
        assert_eq!(a.1, StatusCode::UNAUTHORIZED, "{}", a.0);
        assert_eq!(
            a, m,
            "{}: alice's wrong password and an unknown user differ",
            a.0
        );
    }
}

#[tokio::test]
async fn the_token_endpoint_refuses_an_access_token_as_a_credential() {
    let registry = start().await;
    let url = registry.url();
    let token = registry
        .token(&alice(), &["repository:team-a/app:pull".to_string()])
        .await
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let reply = http
        .get(format!(
            "{url}/auth/token?service=berth&offline_token=true&scope=repository:team-a/app:pull,push"
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::UNAUTHORIZED);
    let body = reply.text().await.unwrap();
    assert!(!body.contains("refresh_token"), "{body}");
    // Nor as a refresh token in the OAuth2 form.
    let reply = http
        .post(format!("{url}/auth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode(&[
            ("grant_type", "refresh_token"),
            ("service", "berth"),
            ("refresh_token", token.as_str()),
            ("scope", "repository:team-a/app:pull"),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_refresh_token_from_a_temporary_credential_dies_with_the_credential() {
    let registry = start().await;
    let url = registry.url();
    let credential = login_command(
        registry.config_dir.path(),
        &registry.berth.data_dir,
        "alice",
        &["--temporary", "--valid-for", "4s"],
    );
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let reply = http
        .post(format!("{url}/auth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode(&form(&[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", credential.as_str()),
            ("access_type", "offline"),
        ])))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    let issued: serde_json::Value = reply.json().await.unwrap();
    let refresh = issued["refresh_token"].as_str().unwrap().to_string();
    assert!(
        issued["expires_in"].as_u64().unwrap() <= 4,
        "the access token outlives the credential: {issued}"
    );
    let refresh_grant = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh.as_str()),
    ];
    let reply = http
        .post(format!("{url}/auth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode(&form(&refresh_grant)))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::OK, "valid before the expiry");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let reply = http
        .post(format!("{url}/auth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode(&form(&refresh_grant)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        reply.status(),
        StatusCode::UNAUTHORIZED,
        "the refresh token outlived its temporary credential"
    );
}
