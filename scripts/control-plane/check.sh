#!/usr/bin/env bash
# End-to-end check of the test control plane: starts it in a temporary DIR,
# then checks that a Deployment becomes Available and rolls out a new image,
# that an image named *never-ready* ends in ProgressDeadlineExceeded, that a
# CRD and server-side apply work, and that stop.sh leaves no process behind.
#
# Usage: scripts/control-plane/check.sh   (after scripts/build-control-plane.sh)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dir=$(mktemp -d "${TMPDIR:-/tmp}/berth-control-plane.XXXXXX")
passed=0
failed=0

cleanup() {
  "$here/stop.sh" "$dir"
  rm -rf "$dir"
}
trap cleanup EXIT

check() {
  local what=$1
  shift
  if "$@"; then
    passed=$((passed + 1))
    echo "ok: $what"
  else
    failed=$((failed + 1))
    echo "FAILED: $what"
  fi
}

start=$SECONDS
kubeconfig=$("$here/start.sh" "$dir")
echo "control plane ready in $((SECONDS - start))s"
k() { kubectl --kubeconfig="$kubeconfig" --cache-dir="$dir/kubectl-cache" "$@"; }

deployment_available() {
  k create deployment web --image=example.local/web:v1 --replicas=2 >/dev/null &&
    k wait --for=condition=Available deployment/web --timeout=60s >/dev/null &&
    [[ $(k get deployment web -o 'jsonpath={.status.readyReplicas}') == 2 ]]
}
check "Deployment with 2 ready Pods becomes Available" deployment_available

rollout() {
  k set image deployment/web web=example.local/web:v2 >/dev/null &&
    k rollout status deployment/web --timeout=60s >/dev/null &&
    [[ $(k get pods -l app=web -o 'jsonpath={.items[*].spec.containers[0].image}') == "example.local/web:v2 example.local/web:v2" ]]
}
check "set image rolls out" rollout

never_ready() {
  k apply -f - >/dev/null <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata:
  name: stuck
spec:
  replicas: 1
  progressDeadlineSeconds: 10
  selector:
    matchLabels: {app: stuck}
  template:
    metadata:
      labels: {app: stuck}
    spec:
      containers:
      - name: app
        image: example.local/app:never-ready
EOF
  k wait deployment/stuck --timeout=60s \
    --for=jsonpath='{.status.conditions[?(@.type=="Progressing")].reason}'=ProgressDeadlineExceeded >/dev/null &&
    [[ $(k get pods -l app=stuck -o 'jsonpath={.items[0].status.phase} {.items[0].status.containerStatuses[0].ready}') == "Running false" ]]
}
check "a never-ready image ends in ProgressDeadlineExceeded" never_ready

crd_and_server_side_apply() {
  k apply --server-side -f - >/dev/null <<'EOF'
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.check.berth.dev
spec:
  group: check.berth.dev
  names: {kind: Widget, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
EOF
  k wait --for=condition=Established crd/widgets.check.berth.dev --timeout=30s >/dev/null &&
    printf 'apiVersion: check.berth.dev/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 3}\n' |
    k apply --server-side --field-manager=berth-check -f - >/dev/null &&
    [[ $(k get widget w1 -o 'jsonpath={.spec.size} {.metadata.managedFields[0].manager}') == "3 berth-check" ]]
}
check "a CRD and server-side apply work" crd_and_server_side_apply

pids=$(cat "$dir"/*.pid)
"$here/stop.sh" "$dir"
none_left() {
  local pid
  for pid in $pids; do
    ! kill -0 "$pid" 2>/dev/null || return 1
  done
}
check "stop.sh leaves no process" none_left

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
