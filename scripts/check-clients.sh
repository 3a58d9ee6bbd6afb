#!/usr/bin/env bash
# check-clients.sh [HOST:PORT] — push and pull a tiny image with every client
# documented in CLIENTS.md (skopeo, crane, oras, regctl, podman, ctr) against a
# plain-HTTP registry, using only private temp config.  Exits non-zero at the
# first command that fails.
#
# Without an argument it starts Debian's docker-registry (distribution 2.8) on
# a free loopback port, which is how CLIENTS.md was verified.  With HOST:PORT
# it uses that registry (e.g. a running berth) instead.
# CHECK_REFERRERS_API=1 also requires the OCI 1.1 referrers API (oras with
# --distribution-spec v1.1-referrers-api); distribution 2.8 lacks it.
#
# Needs: install-system-packages.sh and build-peers.sh (crane oras regctl).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

for tool in skopeo podman ctr containerd umoci crane oras regctl curl; do
  command -v "$tool" >/dev/null || die "$tool not found (run install-system-packages.sh / build-peers.sh)"
done

T="$(mktemp -d "${TMPDIR:-/tmp}/berth-clients.XXXXXX")"
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  [[ -n "${KEEP_TMP:-}" ]] || rm -rf "$T"
}
trap cleanup EXIT

step() { log "== $*"; }

wait_for() { # wait_for DESCRIPTION COMMAND... — up to 10 s
  local what="$1" i; shift
  for i in $(seq 100); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "$what did not come up"
}

if [[ $# -ge 1 ]]; then
  R="$1"
else
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  R="127.0.0.1:$port"
  cat >"$T/reg.yml" <<EOF
version: 0.1
storage:
  filesystem:
    rootdirectory: $T/regdata
  delete:
    enabled: true
http:
  addr: $R
EOF
  docker-registry serve "$T/reg.yml" >"$T/reg.log" 2>&1 &
  PIDS+=($!)
fi
wait_for "registry at $R" curl -sf "http://$R/v2/"
step "registry http://$R"

step "test image (umoci)"
cd "$T"
umoci init --layout oci
umoci new --image oci:t
mkdir -p add/etc && echo hello-berth >add/etc/hello
umoci insert --image oci:t add/etc/hello /etc/hello >/dev/null
umoci config --image oci:t --config.cmd /bin/true --architecture amd64 --os linux
umoci gc --layout oci
tar -C oci -cf img-oci.tar .
SRC_DIGEST="sha256:$(sed -n 's/.*"digest":"sha256:\([0-9a-f]*\)".*/\1/p' oci/index.json)"

step skopeo
skopeo copy -q --dest-tls-verify=false "oci:$T/oci:t" "docker://$R/test/skopeo:v1"
skopeo copy -q --src-tls-verify=false "docker://$R/test/skopeo:v1" "oci:$T/out:v1"
skopeo copy -q --format v2s2 --dest-tls-verify=false "oci:$T/oci:t" "docker://$R/test/skopeo:v2s2"
skopeo inspect --tls-verify=false "docker://$R/test/skopeo:v1" >/dev/null

step crane
crane push --insecure "$T/oci" "$R/test/crane:v1" >/dev/null 2>&1
crane pull --insecure --format oci "$R/test/crane:v1" "$T/crane-out"
crane manifest --insecure "$R/test/crane:v1" >/dev/null
crane ls --insecure "$R/test/crane" | grep -qx v1

step oras
echo hello >hello.txt && echo sig >sig.txt
oras_spec=()
[[ -z "${CHECK_REFERRERS_API:-}" ]] || oras_spec=(--distribution-spec v1.1-referrers-api)
oras push --plain-http "$R/test/oras:v1" --artifact-type application/vnd.berth.test.v1 hello.txt:text/plain >/dev/null
oras attach --plain-http "${oras_spec[@]}" --artifact-type application/vnd.berth.sig.v1 "$R/test/oras:v1" sig.txt:text/plain >/dev/null
oras discover --plain-http "${oras_spec[@]}" --format json "$R/test/oras:v1" | grep -q application/vnd.berth.sig.v1
oras pull --plain-http -o "$T/pulled" "$R/test/oras:v1" >/dev/null
cmp hello.txt "$T/pulled/hello.txt"

step regctl
H=(--host "reg=$R,tls=disabled")
regctl "${H[@]}" image copy "ocidir://$T/oci:t" "$R/test/regctl:v1" >/dev/null
regctl "${H[@]}" tag ls "$R/test/regctl" | grep -qx v1
regctl "${H[@]}" artifact list "$R/test/oras:v1" --format '{{jsonPretty .}}' | grep -q application/vnd.berth.sig.v1

step podman
mkdir -p "$T/pm"
cat >"$T/pm/storage.conf" <<EOF
[storage]
driver = "vfs"
graphroot = "$T/pm/root"
runroot = "$T/pm/runroot"
EOF
cat >"$T/pm/containers.conf" <<EOF
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$T/pm/events.log"
tmp_dir = "$T/pm/tmp"
EOF
cat >"$T/pm/registries.conf" <<EOF
unqualified-search-registries = []
[[registry]]
location = "$R"
insecure = true
EOF
(
  export CONTAINERS_STORAGE_CONF="$T/pm/storage.conf" CONTAINERS_CONF="$T/pm/containers.conf" \
    CONTAINERS_REGISTRIES_CONF="$T/pm/registries.conf"
  podman load -q -i "$T/img-oci.tar" >/dev/null
  podman tag localhost/t:latest "$R/test/podman:v1"
  podman push -q "$R/test/podman:v1"
  podman pull -q "$R/test/skopeo:v1" >/dev/null
  podman rmi -af >/dev/null
)

step "containerd + ctr"
mkdir -p "$T/ctd"
cat >"$T/ctd/config.toml" <<EOF
version = 2
root = "$T/ctd/root"
state = "$T/ctd/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]
[grpc]
  address = "$T/ctd/containerd.sock"
[ttrpc]
  address = "$T/ctd/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$T/ctd/opt"
EOF
containerd --config "$T/ctd/config.toml" >"$T/ctd/containerd.log" 2>&1 &
PIDS+=($!)
S="$T/ctd/containerd.sock"
wait_for containerd ctr -a "$S" version
ctr -a "$S" -n berth images pull --plain-http --snapshotter native "$R/test/crane:v1" >/dev/null
ctr -a "$S" -n berth images tag "$R/test/crane:v1" "$R/test/ctr:v1" >/dev/null
ctr -a "$S" -n berth images push --plain-http "$R/test/ctr:v1" >/dev/null
ctr -a "$S" -n berth images import --base-name "$R/test/ctrimp" "$T/img-oci.tar" >/dev/null
ctr -a "$S" -n berth images push --plain-http "$R/test/ctrimp:t" >/dev/null
ctr -a "$S" -n berth content fetch --plain-http "$R/test/oras:v1" >/dev/null 2>&1

step "digests (all but podman's must equal the source $SRC_DIGEST)"
bad=0
for ref in skopeo:v1 crane:v1 regctl:v1 ctr:v1 ctrimp:t podman:v1; do
  d="$(crane digest --insecure "$R/test/$ref")"
  printf '  %-10s %s\n' "$ref" "$d" >&2
  [[ "$ref" == podman:* || "$d" == "$SRC_DIGEST" ]] || bad=1
done
[[ $bad -eq 0 ]] || die "a client changed the manifest digest"
log "all clients OK against $R"
