//! Many clients pushing distinct blobs at the same moment, as a CI fleet does: aggregate
//! throughput and the server's peak memory, which shows whether it buffers uploads.

use std::time::{Duration, Instant};

use anyhow::ensure;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Method, StatusCode, header};

use super::rss::{PeakRss, fmt_mib};
use super::{
    Conn, Row, Settings, Target, cpu_snap, cpu_use, empty, fmt_cores, location, pseudo_random,
    sha256, streamed, with_digest,
};

pub async fn run(s: &Settings, targets: &[Target], nonce: u64) -> anyhow::Result<Vec<Row>> {
    let n = s.push_clients;
    let mib = s.push_clients_bytes >> 20;
    println!(
        "-- {n} clients each pushing a distinct {mib} MiB blob at once (POST + PATCH + PUT), {} rounds",
        s.rounds
    );
    let mut mbps: Vec<Vec<f64>> = targets.iter().map(|_| Vec::new()).collect();
    let mut rss: Vec<Vec<f64>> = targets.iter().map(|_| Vec::new()).collect();
    let mut timed: Vec<Vec<(Duration, Option<Duration>)>> =
        targets.iter().map(|_| Vec::new()).collect();
    for round in 0..s.rounds {
        let mut order: Vec<usize> = (0..targets.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let t = &targets[i];
            // Fresh blobs per registry and round: nothing may be deduplicated away.
            let blobs: Vec<(Bytes, String)> = (0..n)
                .map(|k| {
                    let seed = nonce ^ 0xc0c0 ^ ((round * 1000 + k) as u64) << 20 ^ i as u64;
                    let data = Bytes::from(pseudo_random(s.push_clients_bytes, seed));
                    let digest = sha256(&data);
                    (data, digest)
                })
                .collect();
            if let Some(dir) = &s.data_dir {
                dir.settle()?;
            }
            let mut conns = Vec::with_capacity(n);
            for _ in 0..n {
                conns.push(Conn::open(t).await?);
            }
            let before = cpu_snap(t.pid);
            let watch = PeakRss::watch(t.pid);
            let started = Instant::now();
            let pushes: Vec<_> = conns
                .into_iter()
                .zip(blobs.iter().cloned())
                .map(|(c, (data, digest))| tokio::spawn(push(c, data, digest)))
                .collect();
            let mut failed = Vec::new();
            for p in pushes {
                if let Err(e) = p.await? {
                    failed.push(e.to_string());
                }
            }
            let secs = started.elapsed().as_secs_f64();
            let cpu = cpu_use(before, cpu_snap(t.pid));
            let peak = watch.finish().await;
            let left = s.data_dir.as_ref().map(|d| d.settle()).transpose()?;
            ensure!(
                failed.is_empty(),
                "{}: {} of {n} concurrent pushes failed, first: {}",
                t.name,
                failed.len(),
                failed[0]
            );
            verify(t, &blobs).await?;
            let rate = (n * s.push_clients_bytes) as f64 / secs / 1e6;
            println!(
                "   {:<13} round {round}: {rate:7.1} MB/s aggregate, {:.2} s for all; peak RSS {}; server CPU {:.2} s; cores: {}",
                t.name,
                secs,
                fmt_mib(peak),
                cpu.server_secs.unwrap_or(f64::NAN),
                fmt_cores(&cpu),
            );
            if let Some(left) = left {
                println!(
                    "   {:<13} round {round}: writeback left after the last 201: {:.1} ms",
                    t.name,
                    left.as_secs_f64() * 1e3
                );
            }
            timed[i].push((Duration::from_secs_f64(secs), left));
            mbps[i].push(rate);
            rss[i].extend(peak);
        }
    }
    println!();
    let med = |v: &mut Vec<f64>| super::median(v);
    let rate: Vec<f64> = mbps.iter_mut().map(med).collect();
    let peak: Vec<f64> = rss.iter_mut().map(med).collect();
    let mut rows = vec![
        Row::reported(format!("push {mib} MiB ×{n} at once (MB/s)"), &rate),
        Row::reported(format!("push {mib} MiB ×{n} peak RSS (MiB)"), &peak),
    ];
    if s.data_dir.is_some() {
        rows.extend(super::writeback::rows(
            &format!("push {mib} MiB ×{n} at once"),
            n * s.push_clients_bytes,
            &timed,
        ));
    }
    Ok(rows)
}

async fn push(mut c: Conn, data: Bytes, digest: String) -> anyhow::Result<()> {
    let repo = "bench/fleet";
    let (h, _) = c
        .expect(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/"),
            &[(header::CONTENT_LENGTH, "0")],
            empty(),
            StatusCode::ACCEPTED,
        )
        .await?;
    let loc = location(&h)?;
    let body = streamed(data);
    let (h, _) = c
        .expect(
            Method::PATCH,
            &loc,
            &[(header::CONTENT_TYPE, "application/octet-stream")],
            body,
            StatusCode::ACCEPTED,
        )
        .await?;
    let loc = location(&h)?;
    c.expect(
        Method::PUT,
        &with_digest(&loc, &digest),
        &[(header::CONTENT_LENGTH, "0")],
        empty(),
        StatusCode::CREATED,
    )
    .await
    .map(|_| ())
}

/// Every pushed blob must be served whole under its digest afterwards.
async fn verify(t: &Target, blobs: &[(Bytes, String)]) -> anyhow::Result<()> {
    let mut c = Conn::open(t).await?;
    for (data, digest) in blobs {
        let path = format!("/v2/bench/fleet/blobs/{digest}");
        let response = c.request(Method::GET, &path, &[], empty()).await?;
        ensure!(
            response.status() == StatusCode::OK,
            "{}: GET {path} answered {}",
            t.name,
            response.status()
        );
        let body = response.into_body().collect().await?.to_bytes();
        ensure!(
            body.len() == data.len() && sha256(&body) == *digest,
            "{}: {path} served other bytes than were pushed",
            t.name
        );
    }
    Ok(())
}
