//! Hostile numbers and names against a running berth: extreme `Range`, `Content-Range`
//! and `n` values get a 4xx with the spec's code (never a panic, a wrap-around or a
//! whole body in place of a part), and made-up HTTP methods cannot grow `/metrics`.

mod common;

use common::{Berth, sha256};
use reqwest::{Client, Method, Response, StatusCode};

async fn expect_error(response: Response, status: StatusCode, code: &str) {
    assert_eq!(response.status(), status, "expected {code}");
    let body: serde_json::Value = response.json().await.expect("error body is JSON");
    assert_eq!(body["errors"][0]["code"], code, "body: {body}");
}

async fn push_blob(client: &Client, berth: &Berth, data: &[u8]) -> String {
    let digest = sha256(data);
    let response = client
        .post(format!(
            "{}/v2/app/blobs/uploads/?digest={digest}",
            berth.url()
        ))
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    digest
}

#[tokio::test]
async fn extreme_ranges_get_416_with_the_blob_size() {
    let berth = Berth::start();
    let client = Client::new();
    let data = b"0123456789";
    let digest = push_blob(&client, &berth, data).await;
    let url = format!("{}/v2/app/blobs/{digest}", berth.url());
    for range in [
        "bytes=18446744073709551615-",
        "bytes=18446744073709551616-",
        "bytes=99999999999999999999999999-1",
        "bytes=-99999999999999999999999999",
        "bytes=10-",
        "bytes=5-2",
        "bytes=-0",
        "bytes=0-1,3-4",
        "bytes=+1-2",
        "bytes=x-y",
    ] {
        let response = client
            .get(&url)
            .header("range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response
                .headers()
                .get("content-range")
                .map(|v| v.to_str().unwrap()),
            Some("bytes */10"),
            "{range}"
        );
        expect_error(response, StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID").await;
    }

    // The largest end a client can write is clamped to the blob, not overflowed.
    let whole = client
        .get(&url)
        .header("range", "bytes=0-18446744073709551615")
        .send()
        .await
        .unwrap();
    assert_eq!(whole.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(whole.headers()["content-range"], "bytes 0-9/10");
    assert_eq!(whole.bytes().await.unwrap().as_ref(), data);
    let tail = client
        .get(&url)
        .header("range", "bytes=-18446744073709551615")
        .send()
        .await
        .unwrap();
    assert_eq!(tail.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(tail.bytes().await.unwrap().as_ref(), data);
}

#[tokio::test]
async fn extreme_content_ranges_on_upload_get_416_and_leave_the_session_usable() {
    let berth = Berth::start();
    let client = Client::new();
    let started = client
        .post(format!("{}/v2/app/blobs/uploads/", berth.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), StatusCode::ACCEPTED);
    let location = started.headers()["location"].to_str().unwrap().to_string();
    let upload = format!("{}{location}", berth.url());
    for (content_range, body) in [
        ("0-18446744073709551615", &b"abc"[..]),
        ("0-18446744073709551616", b"abc"),
        ("18446744073709551615-0", b"abc"),
        ("5-2", b"abc"),
        ("abc", b"abc"),
        ("-1-2", b"abc"),
        ("0-9", b"abc"), // covers 10 bytes, the body has 3
        ("1-3", b"abc"), // does not start where the upload is
    ] {
        let response = client
            .patch(&upload)
            .header("content-range", content_range)
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        expect_error(
            response,
            StatusCode::RANGE_NOT_SATISFIABLE,
            "BLOB_UPLOAD_INVALID",
        )
        .await;
    }
    let accepted = client
        .patch(&upload)
        .header("content-range", "0-2")
        .body(b"abc".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    assert_eq!(accepted.headers()["range"], "0-2");
}

#[tokio::test]
async fn page_sizes_are_digits_and_capped() {
    let berth = Berth::start();
    let client = Client::new();
    push_blob(&client, &berth, b"x").await;
    for n in ["-1", "1e3", "0x10", "%2B1"] {
        let response = client
            .get(format!("{}/v2/_catalog?n={n}", berth.url()))
            .send()
            .await
            .unwrap();
        expect_error(
            response,
            StatusCode::BAD_REQUEST,
            "PAGINATION_NUMBER_INVALID",
        )
        .await;
    }
    let huge = client
        .get(format!(
            "{}/v2/_catalog?n=999999999999999999999999999999",
            berth.url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), StatusCode::OK);
}

/// Series of one metric family in an OpenMetrics scrape: its distinct label sets.
fn series(scrape: &str, family: &str) -> std::collections::BTreeSet<String> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix(family))
        .filter_map(|rest| rest.strip_prefix('{'))
        .filter_map(|rest| rest.split_once('}').map(|(labels, _)| labels))
        // A histogram's buckets are one series per label set, not one per bucket.
        .map(|labels| {
            labels
                .split(',')
                .filter(|l| !l.starts_with("le="))
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect()
}

#[tokio::test]
async fn a_thousand_made_up_methods_add_at_most_one_metric_series() {
    let berth = Berth::start();
    let client = Client::new();
    let scrape = || async {
        client
            .get(format!("{}/metrics", berth.url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    // The first scrape is itself counted in the second.
    scrape().await;
    let before = scrape().await;

    // xorshift: made-up methods, different on every run, without another dependency.
    let mut state = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut methods = std::collections::BTreeSet::new();
    for _ in 0..1000 {
        let mut method = String::from("X");
        for _ in 0..1 + state % 12 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            method.push((b'A' + (state % 26) as u8) as char);
        }
        methods.insert(method.clone());
        let response = client
            .request(
                Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}/v2/", berth.url()),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method}"
        );
    }
    assert!(methods.len() > 500, "the methods are varied");

    let after = scrape().await;
    for family in [
        "berth_http_requests_total",
        "berth_http_request_duration_seconds_bucket",
    ] {
        let (old, new) = (series(&before, family), series(&after, family));
        assert!(
            new.iter().any(|s| s.contains("method=\"other\"")),
            "the flood is counted, under `other`: {new:?}"
        );
        let added: Vec<_> = new.difference(&old).collect();
        assert!(added.len() <= 1, "{family} grew by {added:?}");
        assert!(
            added.iter().all(|s| s.contains("method=\"other\"")),
            "{added:?}"
        );
    }
}
