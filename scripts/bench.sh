#!/usr/bin/env bash
# Benchmarks berth next to CNCF distribution v3 (the current release, built from its Go
# module by scripts/build-peers.sh) on this machine: builds berth in release, starts
# both registries on loopback ports with their data on a fresh tmpfs and then on the
# machine's real disk, runs `cargo bench --bench registry` against both each time and
# tears everything down. See benches/README.md for what is measured.
#
#   scripts/bench.sh [bench options...]     e.g. scripts/bench.sh --quick
#
# Options after the script name go to the bench (`--help` lists them).
# Environment:
#   BENCH_PEER         distribution-v3 (default) or distribution-2.8 (Debian's docker-registry)
#   BENCH_STORAGE      tmpfs, disk or both (default both): where both registries keep data
#   BENCH_DISK_DIR     folder on the real disk for the disk run (default /var/tmp)
#   BENCH_TMPFS_SIZE   size of the tmpfs (default 8g; a full run stores about 4 GB)
#   BENCH_MAX_LOAD     wait (up to BENCH_WAIT_SECS, default 600) until the 1-minute
#                      load average is below this before measuring
#   DOCKER_REGISTRY    the distribution binary (overrides BENCH_PEER)
#   RUST_LOG           berth's log filter (default warn: no per-request logging)
#   CARGO_TARGET_DIR   where cargo builds (default target/); the release berth runs from there
#   BERTH_BINARY       run this berth binary instead of building one (to compare two builds)
#   BENCH_BINARY       run this already built bench executable instead of building it
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

for arg in "$@"; do
  case "$arg" in
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      echo
      exec cargo bench -q --bench registry -- --help
      ;;
  esac
done

case "${BENCH_PEER:-distribution-v3}" in
  distribution-v3)
    if [ -z "${DOCKER_REGISTRY:-}" ]; then
      [ -x "$BERTH_BIN/distribution-registry" ] || scripts/build-peers.sh distribution
      DOCKER_REGISTRY="$BERTH_BIN/distribution-registry"
    fi
    ;;
  distribution-2.8) DOCKER_REGISTRY="${DOCKER_REGISTRY:-docker-registry}" ;;
  *) die "BENCH_PEER=${BENCH_PEER}: use distribution-v3 or distribution-2.8" ;;
esac
command -v "$DOCKER_REGISTRY" >/dev/null ||
  die "$DOCKER_REGISTRY not found (distribution-v3: scripts/build-peers.sh distribution; distribution-2.8: Debian package docker-registry)"
case "${BENCH_STORAGE:-both}" in
  tmpfs) STORAGES=(tmpfs) ;;
  disk) STORAGES=(disk) ;;
  both) STORAGES=(tmpfs disk) ;;
  *) die "BENCH_STORAGE=${BENCH_STORAGE}: use tmpfs, disk or both" ;;
esac

if [ -n "${BERTH_BINARY:-}" ]; then
  [ -x "$BERTH_BINARY" ] || die "BERTH_BINARY=$BERTH_BINARY is not an executable"
  log "building the bench; berth is $BERTH_BINARY"
  BERTH_VERSION="$BERTH_BINARY"
else
  log "building berth (release) and the bench"
  cargo build --release --bin berth
  BERTH_BINARY="${CARGO_TARGET_DIR:-target}/release/berth"
  BERTH_VERSION=$(git describe --always --dirty 2>/dev/null || echo unknown)
fi
if [ -n "${BENCH_BINARY:-}" ]; then
  [ -x "$BENCH_BINARY" ] || die "BENCH_BINARY=$BENCH_BINARY is not an executable"
  bench() { "$BENCH_BINARY" --bench "$@"; }
else
  cargo bench --bench registry --no-run
  bench() { cargo bench --bench registry -- "$@"; }
fi


WORK=$(mktemp -d /tmp/berth-bench.XXXXXX)
MNT=""
SHM_DIR=""
DISK_DIR=""
BERTH_PID=""
PEER_PID=""
stop_registries() {
  # `wait` returns the killed process's status (143): not a failure of the run.
  for pid in $BERTH_PID $PEER_PID; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in $BERTH_PID $PEER_PID; do
    wait "$pid" 2>/dev/null || true
  done
  BERTH_PID=""
  PEER_PID=""
}
cleanup() {
  set +e
  stop_registries
  [ -n "$MNT" ] && umount "$MNT"
  rm -rf "$WORK"
  [ -n "$SHM_DIR" ] && rm -rf "$SHM_DIR"
  [ -n "$DISK_DIR" ] && rm -rf "$DISK_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# tmpfs: the disk out of the comparison. Sets DATA and STORAGE_NOTE.
prepare_tmpfs() {
  if mkdir -p "$WORK/tmpfs" &&
    mount -t tmpfs -o "size=${BENCH_TMPFS_SIZE:-8g},mode=0700" berth-bench "$WORK/tmpfs" 2>"$WORK/mount.err"; then
    MNT="$WORK/tmpfs"
    DATA="$MNT"
    STORAGE_NOTE="tmpfs mounted at $MNT (size ${BENCH_TMPFS_SIZE:-8g})"
  else
    log "mount -t tmpfs failed ($(cat "$WORK/mount.err")); falling back to /dev/shm"
    [ -d /dev/shm ] || die "no /dev/shm either; cannot keep the data in memory"
    SHM_DIR=$(mktemp -d /dev/shm/berth-bench.XXXXXX)
    DATA="$SHM_DIR"
    STORAGE_NOTE="/dev/shm (tmpfs mount failed, fell back to the shared tmpfs)"
  fi
}

# The machine's real disk, as registries are run. Both fsync an upload's data before
# they answer (distribution's filesystem driver syncs its file writer on Close/Commit).
prepare_disk() {
  DISK_DIR=$(mktemp -d "${BENCH_DISK_DIR:-/var/tmp}/berth-bench.XXXXXX")
  DATA="$DISK_DIR"
  local fs dev
  fs=$(df --output=fstype "$DISK_DIR" | tail -1 | tr -d ' ')
  dev=$(df --output=source "$DISK_DIR" | tail -1 | tr -d ' ')
  STORAGE_NOTE="real disk: $DISK_DIR ($fs on $dev); both fsync an upload's data before answering"
}

# A free loopback port (the kernel picks one; it stays free for the moment we need it).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_http() { # URL NAME
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "$1/v2/" 2>/dev/null && return 0
    sleep 0.1
  done
  die "$2 did not answer at $1/v2/"
}

start_registries() {
  # berth: the release binary, as deployed.
  RUST_LOG="${RUST_LOG:-warn}" "$BERTH_BINARY" serve --listen 127.0.0.1:0 \
    --data-dir "$DATA/berth" >"$WORK/berth.out" 2>"$WORK/berth.log" &
  BERTH_PID=$!
  for _ in $(seq 1 100); do
    grep -q 'listening on http://' "$WORK/berth.out" 2>/dev/null && break
    kill -0 "$BERTH_PID" 2>/dev/null || { cat "$WORK/berth.log" >&2; die "berth exited"; }
    sleep 0.1
  done
  BERTH_URL=$(sed -n 's|.*listening on \(http://[^ ]*\).*|\1|p' "$WORK/berth.out" | head -1)
  [ -n "$BERTH_URL" ] || die "berth did not print its address"
  wait_http "$BERTH_URL" berth

  # distribution: the storage settings of Debian's shipped config (in-memory blob
  # descriptor cache), with per-request logging off as berth has none.
  PEER_PORT=$(free_port)
  cat >"$WORK/registry.yml" <<YML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: $DATA/distribution
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$PEER_PORT
YML
  "$DOCKER_REGISTRY" serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
  PEER_PID=$!
  PEER_URL="http://127.0.0.1:$PEER_PORT"
  wait_http "$PEER_URL" distribution
}

wait_quiet() {
  [ -n "${BENCH_MAX_LOAD:-}" ] || return 0
  local deadline load
  deadline=$(($(date +%s) + ${BENCH_WAIT_SECS:-600}))
  while :; do
    load=$(cut -d' ' -f1 /proc/loadavg)
    awk -v l="$load" -v m="$BENCH_MAX_LOAD" 'BEGIN { exit !(l < m) }' && break
    [ "$(date +%s)" -ge "$deadline" ] && { log "load still $load; measuring anyway"; break; }
    sleep 5
  done
}

PEER_VERSION=$("$DOCKER_REGISTRY" --version 2>&1 | head -1)
for storage in "${STORAGES[@]}"; do
  "prepare_$storage"
  log "registry data on: $STORAGE_NOTE"
  start_registries
  wait_quiet
  log "berth $BERTH_URL (pid $BERTH_PID), distribution $PEER_URL (pid $PEER_PID)"
  echo "=== storage: $storage ==="
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ); uptime:$(uptime)"
  echo "distribution: $PEER_VERSION"
  echo "berth: $BERTH_VERSION"
  bench \
    --berth "$BERTH_URL" --berth-pid "$BERTH_PID" \
    --peer "$PEER_URL" --peer-pid "$PEER_PID" --peer-name distribution \
    --storage-note "$STORAGE_NOTE" --data-dir "$DATA" "$@"
  stop_registries
  echo
done
