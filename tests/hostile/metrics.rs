//! Metric series come from closed sets: no request can invent new ones.

use crate::common::Berth;

fn series(metrics: &str) -> usize {
    metrics
        .lines()
        .filter(|l| l.starts_with("berth_http_request"))
        .count()
}

#[tokio::test]
async fn a_thousand_made_up_http_methods_add_at_most_one_series_per_metric() {
    let berth = Berth::start();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let metrics = || async {
        http.get(format!("{}/metrics", berth.url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    // One ordinary request first, so its own series exist before counting.
    http.get(format!("{}/v2/", berth.url()))
        .send()
        .await
        .unwrap();
    metrics().await;
    let before = series(&metrics().await);
    for n in 0..1000 {
        let method = reqwest::Method::from_bytes(format!("M{n:04}X").as_bytes()).unwrap();
        let reply = http
            .request(method, format!("{}/v2/", berth.url()))
            .send()
            .await
            .unwrap();
        assert!(reply.status().is_client_error(), "{}", reply.status());
    }
    let after = series(&metrics().await);
    // One new label set (method="other") on the request counter and on the duration
    // histogram (whose series are its buckets, sum and count).
    let histogram_lines = 16 + 1 + 2;
    assert!(
        after - before <= 1 + histogram_lines,
        "{} new series lines for 1,000 made-up methods",
        after - before
    );
}
