#!/usr/bin/env bash
# Scale-out benchmark: berth and CNCF distribution v3 each run as 1, 2 and 3 replicas
# (separate processes) on one MinIO bucket prefix, on loopback; many clients push and
# then pull distinct blobs, round-robin over the replicas, and the aggregate MB/s of
# both registries is printed side by side with ratios and the cores each side used.
# MinIO (one server, built from its Go module by scripts/build-peers.sh) starts afresh
# with an empty bucket for every configuration. See benches/README.md.
#
#   scripts/bench-replicas.sh
#
# Environment:
#   BENCH_CLIENTS       concurrent clients (default 32), each with a distinct blob
#   BENCH_BLOB_MIB      blob size in MiB (default 16)
#   BENCH_ROUNDS        measured rounds per configuration, median reported (default 3)
#   BENCH_REPLICAS      replica counts to run (default "1 2 3")
#   BENCH_VARIANTS      proxy and/or redirect (default "proxy redirect"): proxy has every
#                       replica serve the bytes (berth's default; distribution with
#                       storage.redirect.disable); redirect sends blob GETs to presigned
#                       MinIO URLs (berth --blob-redirect-min-size 1MiB; distribution's default)
#   BENCH_MINIO_DIR     parent folder of MinIO's data (default /dev/shm: the disk out of
#                       the comparison)
#   BENCH_RESULTS       where to keep the JSON lines (default: a temp file, deleted)
#   CARGO_TARGET_DIR    where cargo builds (default target/)
#   BERTH_BINARY        run this berth binary instead of building one
#   BENCH_BINARY        run this already built bench executable instead of building it
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

case "${1:-}" in
  -h | --help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
esac

CLIENTS="${BENCH_CLIENTS:-32}"
BLOB_MIB="${BENCH_BLOB_MIB:-16}"
ROUNDS="${BENCH_ROUNDS:-3}"
read -r -a REPLICA_COUNTS <<<"${BENCH_REPLICAS:-1 2 3}"
read -r -a VARIANTS <<<"${BENCH_VARIANTS:-proxy redirect}"

[ -x "$BERTH_BIN/minio" ] || scripts/build-peers.sh minio
[ -x "$BERTH_BIN/distribution-registry" ] || scripts/build-peers.sh distribution
MINIO="$BERTH_BIN/minio"
DISTRIBUTION="$BERTH_BIN/distribution-registry"

if [ -n "${BERTH_BINARY:-}" ]; then
  [ -x "$BERTH_BINARY" ] || die "BERTH_BINARY=$BERTH_BINARY is not an executable"
  BERTH_VERSION="$BERTH_BINARY"
else
  log "building berth (release)"
  cargo build --release --bin berth
  BERTH_BINARY="${CARGO_TARGET_DIR:-target}/release/berth"
  BERTH_VERSION=$(git describe --always --dirty 2>/dev/null || echo unknown)
fi
if [ -n "${BENCH_BINARY:-}" ]; then
  [ -x "$BENCH_BINARY" ] || die "BENCH_BINARY=$BENCH_BINARY is not an executable"
  bench() { "$BENCH_BINARY" "$@"; }
else
  cargo bench --bench replicas --no-run
  bench() { cargo bench -q --bench replicas -- "$@"; }
fi

WORK=$(mktemp -d /tmp/berth-bench-replicas.XXXXXX)
RESULTS="${BENCH_RESULTS:-$WORK/results.jsonl}"
: >"$RESULTS"
MINIO_PID=""
MINIO_DATA=""
REGISTRY_PIDS=()
stop_registries() {
  for pid in "${REGISTRY_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${REGISTRY_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  REGISTRY_PIDS=()
}
stop_minio() {
  if [ -n "$MINIO_PID" ]; then
    kill "$MINIO_PID" 2>/dev/null || true
    wait "$MINIO_PID" 2>/dev/null || true
  fi
  MINIO_PID=""
  [ -n "$MINIO_DATA" ] && rm -rf "$MINIO_DATA"
  MINIO_DATA=""
}
cleanup() {
  set +e
  stop_registries
  stop_minio
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

KEY=berth-bench
SECRET=berth-bench-secret
BUCKET=bench
REGION=us-east-1

# A fresh MinIO with an empty bucket. Sets MINIO_URL and MINIO_PID.
start_minio() {
  MINIO_DATA=$(mktemp -d "${BENCH_MINIO_DIR:-/dev/shm}/berth-bench-minio.XXXXXX")
  local port console
  port=$(free_port)
  console=$(free_port)
  MINIO_ROOT_USER=$KEY MINIO_ROOT_PASSWORD=$SECRET MINIO_BROWSER=off \
    "$MINIO" server "$MINIO_DATA" --address "127.0.0.1:$port" --console-address "127.0.0.1:$console" \
    >"$WORK/minio.log" 2>&1 &
  MINIO_PID=$!
  MINIO_URL="http://127.0.0.1:$port"
  for _ in $(seq 1 300); do
    # The bucket, created with a SigV4-signed PUT as any S3 client does.
    if curl -fsS -o /dev/null --aws-sigv4 "aws:amz:$REGION:s3" --user "$KEY:$SECRET" \
      -X PUT "$MINIO_URL/$BUCKET" 2>/dev/null; then
      return 0
    fi
    kill -0 "$MINIO_PID" 2>/dev/null || { cat "$WORK/minio.log" >&2; die "MinIO exited"; }
    sleep 0.1
  done
  die "MinIO at $MINIO_URL did not create the bucket"
}

wait_http() { # URL NAME
  for _ in $(seq 1 200); do
    curl -fsS -o /dev/null "$1/v2/" 2>/dev/null && return 0
    sleep 0.1
  done
  die "$2 did not answer at $1/v2/"
}

# start_berth N VARIANT: N berth processes on one bucket prefix. Sets URLS.
start_berth() {
  local n=$1 variant=$2 i port extra=()
  [ "$variant" = redirect ] && extra=(--blob-redirect-min-size 1MiB)
  URLS=""
  for i in $(seq 1 "$n"); do
    port=$(free_port)
    AWS_ENDPOINT=$MINIO_URL AWS_ALLOW_HTTP=true AWS_REGION=$REGION \
      AWS_ACCESS_KEY_ID=$KEY AWS_SECRET_ACCESS_KEY=$SECRET RUST_LOG="${RUST_LOG:-warn}" \
      "$BERTH_BINARY" serve --listen "127.0.0.1:$port" --storage "s3://$BUCKET/berth" \
      --data-dir "$WORK/berth-scratch-$i" --replica-id "bench-$i" "${extra[@]}" \
      >"$WORK/berth-$i.out" 2>"$WORK/berth-$i.log" &
    REGISTRY_PIDS+=($!)
    wait_http "http://127.0.0.1:$port" "berth replica $i"
    URLS="${URLS:+$URLS,}http://127.0.0.1:$port"
  done
}

# start_distribution N VARIANT: N distribution processes, S3 driver, one shared
# http.secret (upload state is signed with it, so any replica continues an upload).
start_distribution() {
  local n=$1 variant=$2 i port redirect
  redirect=true
  [ "$variant" = redirect ] && redirect=false
  URLS=""
  for i in $(seq 1 "$n"); do
    port=$(free_port)
    cat >"$WORK/distribution-$i.yml" <<YML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  s3:
    accesskey: $KEY
    secretkey: $SECRET
    region: $REGION
    regionendpoint: $MINIO_URL
    forcepathstyle: true
    secure: false
    bucket: $BUCKET
    rootdirectory: /distribution
  cache:
    blobdescriptor: inmemory
  delete:
    enabled: true
  redirect:
    disable: $redirect
http:
  addr: 127.0.0.1:$port
  secret: berth-bench-shared-http-secret
YML
    "$DISTRIBUTION" serve "$WORK/distribution-$i.yml" >"$WORK/distribution-$i.log" 2>&1 &
    REGISTRY_PIDS+=($!)
    wait_http "http://127.0.0.1:$port" "distribution replica $i"
    URLS="${URLS:+$URLS,}http://127.0.0.1:$port"
  done
}

echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ); uptime:$(uptime)"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores"
echo "berth: $BERTH_VERSION"
echo "distribution: $("$DISTRIBUTION" --version 2>&1 | head -1)"
echo "minio: $("$MINIO" --version 2>&1 | head -1), data in ${BENCH_MINIO_DIR:-/dev/shm}"
for variant in "${VARIANTS[@]}"; do
  case "$variant" in proxy | redirect) ;; *) die "BENCH_VARIANTS: $variant is not proxy or redirect" ;; esac
  for n in "${REPLICA_COUNTS[@]}"; do
    for registry in berth distribution; do
      start_minio
      "start_$registry" "$n" "$variant"
      log "$registry $variant x$n: $URLS (MinIO $MINIO_URL)"
      bench measure --name "$registry" --variant "$variant" --urls "$URLS" \
        --pids "$(IFS=,; echo "${REGISTRY_PIDS[*]}")" --store-pid "$MINIO_PID" \
        --clients "$CLIENTS" --blob-mib "$BLOB_MIB" --rounds "$ROUNDS" --results "$RESULTS"
      stop_registries
      stop_minio
    done
  done
done
echo
bench report --results "$RESULTS"
