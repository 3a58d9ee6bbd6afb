//! One client pulling one large blob, whole and by range, next to what this machine's
//! loopback can carry: a server that only writes bytes it already holds in memory to a
//! TCP socket, read by the same kind of client. A registry cannot beat that limit; the
//! question is how close it gets.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{
    Conn, LoadResult, LoadSpec, Row, Settings, Target, load_phase, medians, pseudo_random, put_blob,
};

pub async fn run(s: &Settings, targets: &[Target], nonce: u64) -> anyhow::Result<Vec<Row>> {
    let size = s.big_pull_bytes;
    let mib = size >> 20;
    let blob = pseudo_random(size, nonce ^ 0xb16);
    let mut paths = Vec::new();
    for t in targets {
        let mut c = Conn::open(t).await?;
        let digest = put_blob(&mut c, "bench/big", &blob)
            .await
            .with_context(|| format!("{mib} MiB fixture on {}", t.name))?;
        paths.push(format!("/v2/bench/big/blobs/{digest}"));
    }
    drop(blob);
    let measure = Duration::from_secs_f64(s.seconds);
    let warmup = Duration::from_secs_f64(s.warmup);
    let mut rows = Vec::new();

    let whole = load_phase(
        s,
        targets,
        &format!("pull one {mib} MiB blob whole, 1 client"),
        |i| LoadSpec {
            path: paths[i].clone(),
            accept: None,
            range: None,
            expect_len: size as u64,
            clients: 1,
            warmup,
            measure,
        },
    )
    .await?;
    // The middle half: a resumed or parallel download asks for such a range.
    let (from, to) = (size / 4, size / 4 * 3 - 1);
    let ranged = load_phase(
        s,
        targets,
        &format!("pull bytes={from}-{to} of the {mib} MiB blob, 1 client"),
        |i| LoadSpec {
            path: paths[i].clone(),
            accept: None,
            range: Some(format!("bytes={from}-{to}")),
            expect_len: (to - from + 1) as u64,
            clients: 1,
            warmup,
            measure,
        },
    )
    .await?;
    let limit = loopback_limit(size, measure).await?;
    println!(
        "-- loopback limit: one TCP connection carrying {mib} MiB from memory: {limit:.1} MB/s\n"
    );

    for (what, results) in [("whole", &whole), ("range", &ranged)] {
        let mbps = medians(results, LoadResult::mbps);
        rows.push(Row {
            metric: format!("pull {mib} MiB ×1, {what} (MB/s)"),
            berth: mbps[0],
            peer: mbps.get(1).copied(),
            target: format!("near {limit:.0} (loopback)"),
            verdict: None,
        });
    }
    rows.push(Row {
        metric: format!("pull {mib} MiB ×1, berth of loopback (%)"),
        berth: medians(&whole, LoadResult::mbps)[0] / limit * 100.0,
        peer: None,
        target: "-".to_string(),
        verdict: None,
    });
    Ok(rows)
}

/// MB/s of one connection over which a server in this process writes `size` bytes from
/// memory per one-byte request, read and dropped by the client in 1 MiB reads.
async fn loopback_limit(size: usize, measure: Duration) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let data = pseudo_random(size, 7);
        let (mut sock, _) = listener.accept().await?;
        sock.set_nodelay(true)?;
        let mut ask = [0u8; 1];
        while sock.read_exact(&mut ask).await.is_ok() {
            sock.write_all(&data).await?;
        }
        anyhow::Ok(())
    });
    let mut sock = TcpStream::connect(addr).await?;
    sock.set_nodelay(true)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut moved = 0u64;
    let started = Instant::now();
    while started.elapsed() < measure {
        sock.write_all(b"?").await?;
        let mut left = size;
        while left > 0 {
            let n = sock.read(&mut buf[..left.min(1 << 20)]).await?;
            anyhow::ensure!(n > 0, "loopback server closed early");
            left -= n;
        }
        moved += size as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    drop(sock);
    let _ = server.await;
    Ok(moved as f64 / secs / 1e6)
}
