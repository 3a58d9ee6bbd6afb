//! Just enough AWS Signature Version 4 to send one bucket-level S3 request (`PUT /bucket`)
//! to MinIO. `object_store` signs object requests only and cannot create buckets, and
//! no S3 client is installed, so the test signs the request itself: HMAC-SHA256 on top
//! of the `sha2` crate berth already depends on, and the canonical request of
//! <https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html>.

use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block_key = [0u8; BLOCK];
    if key.len() > BLOCK {
        block_key[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block_key[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block_key.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(block_key.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// The key that signs requests on `date` (YYYYMMDD) for `region` and `service`.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k = hmac_sha256(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac_sha256(&k, region.as_bytes());
    let k = hmac_sha256(&k, service.as_bytes());
    hmac_sha256(&k, b"aws4_request")
}

/// `YYYYMMDDTHHMMSSZ` for a time in seconds since the epoch (UTC).
pub fn amz_date(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The headers (besides `Host`) that sign an S3 request with no query string and an
/// empty body, for the path-style `path` on `host`.
pub fn sign_empty_request(
    method: &str,
    host: &str,
    path: &str,
    region: &str,
    access_key: &str,
    secret_key: &str,
) -> Vec<(String, String)> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let datetime = amz_date(now);
    let date = &datetime[..8];
    let payload_hash = sha256_hex(b"");
    let signed_headers = "host;x-amz-content-sha256;x-amz-date";
    let canonical_request = format!(
        "{method}\n{path}\n\nhost:{host}\nx-amz-content-sha256:{payload_hash}\nx-amz-date:{datetime}\n\n{signed_headers}\n{payload_hash}"
    );
    let scope = format!("{date}/{region}/s3/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{datetime}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    let signature = hex::encode(hmac_sha256(
        &signing_key(secret_key, date, region, "s3"),
        string_to_sign.as_bytes(),
    ));
    vec![
        ("x-amz-content-sha256".into(), payload_hash),
        ("x-amz-date".into(), datetime.clone()),
        (
            "authorization".into(),
            format!(
                "AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed_headers}, Signature={signature}"
            ),
        ),
    ]
}

#[test]
fn hmac_matches_rfc_4231() {
    // Test case 2 of RFC 4231.
    assert_eq!(
        hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    // Test case 6: a key longer than the block is hashed first.
    assert_eq!(
        hex::encode(hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First"
        )),
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
    );
}

#[test]
fn signing_key_matches_the_aws_example() {
    // From the AWS Signature Version 4 documentation's key derivation example.
    assert_eq!(
        hex::encode(signing_key(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20120215",
            "us-east-1",
            "iam"
        )),
        "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
    );
}

#[test]
fn formats_amz_dates() {
    assert_eq!(amz_date(0), "19700101T000000Z");
    assert_eq!(amz_date(951_782_400), "20000229T000000Z");
    assert_eq!(amz_date(1_700_000_000), "20231114T221320Z");
}
