#!/usr/bin/env bash
# The added cost of auth per manifest GET: builds berth in release and runs
# `cargo bench --bench auth`, which serves a public and a private repository from
# one berth and compares anonymous, bearer-token and Basic-auth GETs (req/s and
# ratio to anonymous). BENCH_SECS sets the seconds per phase (default 10).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin berth
BENCH_BERTH_BINARY="${CARGO_TARGET_DIR:-target}/release/berth" cargo bench --bench auth -- "$@"
