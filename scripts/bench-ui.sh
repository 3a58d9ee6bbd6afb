#!/usr/bin/env bash
# The web UI's costs: server time of a namespace page over 10,000 repositories and a
# repository page over 10,000 tags, and berth's peak RSS while a 2 GB image tar
# uploads through the API. Builds berth in release; BENCH_ITEMS and
# BENCH_UPLOAD_BYTES change the sizes, BENCH_DIR where the data goes (needs ~4 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin berth
BENCH_BERTH_BINARY="${CARGO_TARGET_DIR:-target}/release/berth" cargo bench --bench ui -- "$@"
