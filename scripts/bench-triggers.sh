#!/usr/bin/env bash
# Benchmarks Triggers: how long after a tag is pushed berth patches the Deployment,
# and how long until its rollout completes. Builds berth in release, starts the
# test control plane (scripts/control-plane/start.sh: kube-apiserver,
# kube-controller-manager, kube-scheduler, etcd and kwok), installs the CRDs, starts
# `berth operator` against it with its data on /dev/shm, runs
# `cargo bench --bench triggers` and tears everything down. See benches/README.md.
#
#   scripts/bench-triggers.sh [bench options...]     e.g. scripts/bench-triggers.sh --tags 20
#
# Options after the script name go to the bench (`--help` lists them).
# Environment:
#   RUST_LOG   berth's log filter (default warn)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

for arg in "$@"; do
  case "$arg" in
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      echo
      exec cargo bench -q --bench triggers -- --help
      ;;
  esac
done

log "building berth (release) and the bench"
cargo build --release --bin berth
cargo bench --bench triggers --no-run

WORK=$(mktemp -d /tmp/berth-bench-triggers.XXXXXX)
DATA=$(mktemp -d /dev/shm/berth-bench-triggers.XXXXXX 2>/dev/null || mktemp -d)
BERTH_PID=""
cleanup() {
  set +e
  [ -n "$BERTH_PID" ] && kill "$BERTH_PID" 2>/dev/null && wait "$BERTH_PID" 2>/dev/null
  scripts/control-plane/stop.sh "$WORK/cluster" >/dev/null 2>&1
  rm -rf "$WORK" "$DATA"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "starting the control plane in $WORK/cluster"
KUBECONFIG=$(scripts/control-plane/start.sh "$WORK/cluster")
export KUBECONFIG
kubectl apply --server-side -f crds/ >/dev/null
kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null

# A berth user for the pushes (a Secret in the operator's namespace, where a
# berth that signs users in looks for them).
BENCH_USER=bench-admin
BENCH_PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
export BENCH_USER BENCH_PASSWORD
kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Secret
metadata:
  name: $BENCH_USER
  namespace: default
  labels: {berth.dev/user: "true"}
stringData:
  password: $BENCH_PASSWORD
  admin: "true"
EOF

# The operator as in a Pod of the default namespace (its Lease goes there).
RUST_LOG="${RUST_LOG:-warn}" POD_NAMESPACE=default POD_NAME=berth-bench \
  "${CARGO_TARGET_DIR:-target}/release/berth" operator --listen 127.0.0.1:0 --data-dir "$DATA" \
  >"$WORK/berth.out" 2>"$WORK/berth.log" &
BERTH_PID=$!
for _ in $(seq 1 100); do
  grep -q 'listening on http://' "$WORK/berth.out" 2>/dev/null && break
  kill -0 "$BERTH_PID" 2>/dev/null || { cat "$WORK/berth.log" >&2; die "berth exited"; }
  sleep 0.1
done
BERTH_URL=$(sed -n 's|.*listening on \(http://[^ ]*\).*|\1|p' "$WORK/berth.out" | head -1)
[ -n "$BERTH_URL" ] || die "berth did not print its address"
# Ready: its configuration (and users) loaded.
for _ in $(seq 1 300); do
  curl -fsS -o /dev/null "$BERTH_URL/readyz" 2>/dev/null && break
  sleep 0.1
done

log "berth $BERTH_URL (pid $BERTH_PID)"
echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ); uptime:$(uptime)"
echo "berth: $(git describe --always --dirty 2>/dev/null || echo unknown); $(nproc) CPUs"
status=0
cargo bench -q --bench triggers -- --berth "$BERTH_URL" --kubeconfig "$KUBECONFIG" "$@" || status=$?
if grep -qiE 'warn|error' "$WORK/berth.log"; then
  log "berth's log (warnings and errors):"
  grep -iE 'warn|error' "$WORK/berth.log" | tail -20 >&2
fi
exit $status
