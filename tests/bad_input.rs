//! Bad input gets the spec's error code and status, with a message a person can act
//! on, and leaves nothing half-stored behind.

mod common;

use std::io::{Read, Write};

use common::{Berth, files_under, sha256};
use reqwest::{Client, Response, StatusCode};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

async fn expect_error(response: Response, status: StatusCode, code: &str) -> String {
    assert_eq!(
        response.status(),
        status,
        "wrong status for expected {code}"
    );
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap()),
        Some("application/json")
    );
    let body: serde_json::Value = response.json().await.expect("error body is JSON");
    let error = &body["errors"][0];
    assert_eq!(error["code"], code, "body: {body}");
    let message = error["message"].as_str().expect("a message").to_string();
    assert!(message.len() > 10, "message too terse: {message:?}");
    message
}

/// Content files (blobs and manifests) in the store.
fn stored_content(berth: &Berth) -> Vec<String> {
    files_under(&berth.data_dir.join("blobs"))
}

async fn push_blob(client: &Client, berth: &Berth, repo: &str, data: &[u8]) -> String {
    let digest = sha256(data);
    let r = client
        .post(format!(
            "{}/v2/{repo}/blobs/uploads/?digest={digest}",
            berth.url()
        ))
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    digest
}

fn image_manifest(config: &str, config_size: usize, layers: &[(&str, usize)]) -> String {
    let layers: Vec<String> = layers
        .iter()
        .map(|(d, s)| format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{s}}}"#))
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{config_size}}},"layers":[{}]}}"#,
        layers.join(",")
    )
}

#[tokio::test]
async fn a_blob_whose_content_does_not_match_its_digest_is_refused_and_never_stored() {
    let berth = Berth::start();
    let client = Client::new();
    let claimed = sha256(b"what the client says");
    let r = client
        .post(format!(
            "{}/v2/app/blobs/uploads/?digest={claimed}",
            berth.url()
        ))
        .body(b"what the client sends".to_vec())
        .send()
        .await
        .unwrap();
    let message = expect_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    assert!(message.contains(&claimed), "{message}");
    for digest in [claimed, sha256(b"what the client sends")] {
        let r = client
            .head(format!("{}/v2/app/blobs/{digest}", berth.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    assert_eq!(stored_content(&berth), Vec::<String>::new());
    assert_eq!(
        files_under(&berth.data_dir.join("uploads")),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn a_chunked_upload_finished_with_the_wrong_digest_is_discarded() {
    let berth = Berth::start();
    let client = Client::new();
    let start = client
        .post(format!("{}/v2/app/blobs/uploads/", berth.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), StatusCode::ACCEPTED);
    let location = format!(
        "{}{}",
        berth.url(),
        start.headers()["location"].to_str().unwrap()
    );
    let r = client
        .patch(&location)
        .header("content-range", "0-4")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = client
        .put(format!("{location}?digest={}", sha256(b"goodbye")))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    let r = client.get(&location).send().await.unwrap();
    expect_error(r, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    assert_eq!(stored_content(&berth), Vec::<String>::new());
}

#[tokio::test]
async fn a_manifest_naming_a_missing_blob_is_refused_and_tags_nothing() {
    let berth = Berth::start();
    let client = Client::new();
    let config = push_blob(&client, &berth, "app", b"{}").await;
    let missing = sha256(b"a layer nobody pushed");
    let manifest = image_manifest(&config, 2, &[(&missing, 21)]);
    let r = client
        .put(format!("{}/v2/app/manifests/v1", berth.url()))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    let message = expect_error(r, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
    assert!(message.contains(&missing), "{message}");
    let tags: serde_json::Value = client
        .get(format!("{}/v2/app/tags/list", berth.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], serde_json::json!([]));
    let r = client
        .get(format!(
            "{}/v2/app/manifests/{}",
            berth.url(),
            sha256(manifest.as_bytes())
        ))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn malformed_manifests_are_refused_as_manifest_invalid() {
    let berth = Berth::start();
    let client = Client::new();
    let config = push_blob(&client, &berth, "app", b"{}").await;
    let cases = [
        (OCI_MANIFEST, "{not json".to_string()),
        (
            OCI_MANIFEST,
            format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","layers":[]}}"#),
        ),
        (
            OCI_MANIFEST,
            image_manifest(&config, 2, &[]).replace("\"schemaVersion\":2", "\"schemaVersion\":1"),
        ),
        (
            "application/vnd.oci.image.index.v1+json",
            image_manifest(&config, 2, &[]),
        ),
        ("text/plain", r#"{"schemaVersion":2}"#.to_string()),
        (OCI_MANIFEST, image_manifest("sha256:nothex", 2, &[])),
    ];
    for (content_type, body) in cases {
        let r = client
            .put(format!("{}/v2/app/manifests/bad", berth.url()))
            .header("content-type", content_type)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "accepted: {body}");
        let error: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            error["errors"][0]["code"], "MANIFEST_INVALID",
            "{body} -> {error}"
        );
    }
    let before = stored_content(&berth);
    assert_eq!(before, vec![format!("sha256/{}", &config[7..])]);
}

#[tokio::test]
async fn a_manifest_over_4_mib_is_refused_with_413() {
    let berth = Berth::start();
    let client = Client::new();
    let config = push_blob(&client, &berth, "app", b"{}").await;
    let padding = "x".repeat(4 << 20);
    let body = image_manifest(&config, 2, &[]).replace(
        "\"layers\"",
        &format!("\"annotations\":{{\"pad\":\"{padding}\"}},\"layers\""),
    );
    let r = client
        .put(format!("{}/v2/app/manifests/big", berth.url()))
        .header("content-type", OCI_MANIFEST)
        .body(body)
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID").await;
    assert_eq!(
        stored_content(&berth).len(),
        1,
        "only the config blob is stored"
    );
}

#[tokio::test]
async fn invalid_repository_names_and_tags_are_refused() {
    let berth = Berth::start();
    let client = Client::new();
    for path in [
        "/v2/../etc/manifests/latest",
        "/v2/a/../b/manifests/latest",
        "/v2/%2e%2e/manifests/latest",
        "/v2/a/%2e%2e/b/tags/list",
        "/v2/UPPER/manifests/latest",
        "/v2/Team/app/tags/list",
        "/v2/a//b/manifests/latest",
        "/v2/a/b/c//tags/list",
        "/v2/-a/tags/list",
        "/v2/a%2fb/tags/list",
    ] {
        // reqwest normalises dot segments, so send the raw request line.
        let (status, body) = raw_request(&berth.addr, "GET", path);
        assert_eq!(status, 400, "{path} -> {status} {body}");
        assert!(body.contains("NAME_INVALID"), "{path} -> {body}");
    }
    let (status, body) = raw_request(&berth.addr, "PUT", "/v2/app/manifests/..");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("TAG_INVALID"), "{body}");
    for tag in [".hidden", "-x", "a+b", &"t".repeat(129)] {
        let r = client
            .put(format!("{}/v2/app/manifests/{tag}", berth.url()))
            .header("content-type", OCI_MANIFEST)
            .body("{}")
            .send()
            .await
            .unwrap();
        expect_error(r, StatusCode::BAD_REQUEST, "TAG_INVALID").await;
    }
    let r = client
        .get(format!("{}/v2/app/blobs/sha256:1234", berth.url()))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    assert!(
        !berth.data_dir.join("repositories").exists() || files_under(&berth.data_dir).is_empty()
    );
}

/// Sends `METHOD path` exactly as written (no normalisation); returns status and body.
fn raw_request(addr: &str, method: &str, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[tokio::test]
async fn a_chunk_at_the_wrong_offset_gets_416_and_the_upload_carries_on() {
    let berth = Berth::start();
    let client = Client::new();
    let start = client
        .post(format!("{}/v2/app/blobs/uploads/", berth.url()))
        .send()
        .await
        .unwrap();
    let location = format!(
        "{}{}",
        berth.url(),
        start.headers()["location"].to_str().unwrap()
    );
    let r = client
        .patch(&location)
        .header("content-range", "0-4")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.headers()["range"], "0-4");

    // A chunk that skips ahead, one that repeats, and one whose range disagrees with its length.
    for (range, body) in [("10-14", " worl"), ("0-4", "hello"), ("5-9", " world!!")] {
        let r = client
            .patch(&location)
            .header("content-range", range)
            .body(body)
            .send()
            .await
            .unwrap();
        let message =
            expect_error(r, StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID").await;
        assert!(
            message.contains('5') || message.contains("Content-Length"),
            "{message}"
        );
    }
    let status = client.get(&location).send().await.unwrap();
    assert_eq!(status.status(), StatusCode::NO_CONTENT);
    assert_eq!(status.headers()["range"], "0-4");

    let r = client
        .patch(&location)
        .header("content-range", "5-10")
        .body(" world")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let digest = sha256(b"hello world");
    let r = client
        .put(format!("{location}?digest={digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let blob = client
        .get(format!("{}/v2/app/blobs/{digest}", berth.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(blob.bytes().await.unwrap().as_ref(), b"hello world");
}

#[tokio::test]
async fn unknown_upload_ids_get_blob_upload_unknown() {
    let berth = Berth::start();
    let client = Client::new();
    let unknown = format!(
        "{}/v2/app/blobs/uploads/0b7d3a52-0000-4000-8000-000000000000",
        berth.url()
    );
    let digest = sha256(b"x");
    for request in [
        client.get(&unknown),
        client.patch(&unknown).body("x"),
        client.put(format!("{unknown}?digest={digest}")),
        client.delete(&unknown),
        client.get(format!(
            "{}/v2/app/blobs/uploads/not-a-session",
            berth.url()
        )),
    ] {
        let r = request.send().await.unwrap();
        expect_error(r, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    }

    // A session belongs to the repository it was opened in.
    let start = client
        .post(format!("{}/v2/app/blobs/uploads/", berth.url()))
        .send()
        .await
        .unwrap();
    let location = start.headers()["location"].to_str().unwrap().to_string();
    let elsewhere = location.replace("/v2/app/", "/v2/other/");
    let r = client
        .get(format!("{}{elsewhere}", berth.url()))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
}

#[tokio::test]
async fn a_manifest_pushed_under_a_digest_it_does_not_have_is_refused() {
    let berth = Berth::start();
    let client = Client::new();
    let config = push_blob(&client, &berth, "app", b"{}").await;
    let manifest = image_manifest(&config, 2, &[]);
    let wrong = sha256(b"another manifest");
    let r = client
        .put(format!("{}/v2/app/manifests/{wrong}", berth.url()))
        .header("content-type", OCI_MANIFEST)
        .body(manifest)
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    assert_eq!(stored_content(&berth).len(), 1);
}

#[tokio::test]
async fn a_truncated_upload_commits_nothing_and_can_be_resent() {
    let berth = Berth::start();
    let client = Client::new();
    let start = client
        .post(format!("{}/v2/app/blobs/uploads/", berth.url()))
        .send()
        .await
        .unwrap();
    let location = start.headers()["location"].to_str().unwrap().to_string();
    let data = vec![7u8; 100_000];
    {
        // Promise 100000 bytes, send half, hang up.
        let mut stream = std::net::TcpStream::connect(&berth.addr).unwrap();
        write!(
            stream,
            "PATCH {location} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
            berth.addr,
            data.len()
        )
        .unwrap();
        stream.write_all(&data[..50_000]).unwrap();
        stream.shutdown(std::net::Shutdown::Both).unwrap();
    }
    // The server notices the short body; the session still has zero bytes.
    let mut range = String::new();
    for _ in 0..50 {
        let status = client
            .get(format!("{}{location}", berth.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(status.status(), StatusCode::NO_CONTENT);
        range = status.headers()["range"].to_str().unwrap().to_string();
        if range == "0-0" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(range, "0-0");
    let digest = sha256(&data);
    let r = client
        .put(format!("{}{location}?digest={digest}", berth.url()))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        stored_content(&berth),
        vec![format!("sha256/{}", &digest[7..])]
    );
}

#[tokio::test]
async fn unknown_content_gets_404_with_the_right_code() {
    let berth = Berth::start();
    let client = Client::new();
    let digest = sha256(b"nothing");
    let r = client
        .get(format!("{}/v2/app/blobs/{digest}", berth.url()))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    let r = client
        .get(format!("{}/v2/app/manifests/latest", berth.url()))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    let r = client
        .get(format!("{}/v2/never/pushed/tags/list", berth.url()))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::NOT_FOUND, "NAME_UNKNOWN").await;
    let r = client
        .delete(format!("{}/v2/app/manifests/{digest}", berth.url()))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    let r = client
        .post(format!("{}/v2/_catalog", berth.url()))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED").await;
}
