#!/usr/bin/env bash
# Starts a Kubernetes control plane on 127.0.0.1 for berth's tests: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler and kwok (a fake
# kubelet), plus one fake Node that kwok keeps Ready.
#
# Usage: scripts/control-plane/start.sh DIR
#
# DIR holds certificates, etcd's data, logs (DIR/*.log), PIDs (DIR/*.pid),
# ports (DIR/control-plane.env) and the admin kubeconfig, whose path is the one
# line printed on stdout once /readyz is ok, the Node is Ready and the default
# ServiceAccount exists. Stop with scripts/control-plane/stop.sh DIR. Starting
# again on a stopped DIR reuses its certificates, data and ports.
#
# Binaries come from BERTH_CONTROL_PLANE_BIN, else
# ${BERTH_CACHE:-$HOME/.cache/berth}/bin (scripts/build-control-plane.sh).
# Ports are chosen free at start unless given: BERTH_ETCD_PORT,
# BERTH_ETCD_PEER_PORT, BERTH_APISERVER_PORT. Extra kwok stage files can be
# listed (colon-separated) in BERTH_KWOK_STAGES; stages/*.yaml are always used.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[[ $# -eq 1 ]] || { echo "usage: $0 DIR" >&2; exit 2; }
mkdir -p "$1"
dir=$(cd "$1" && pwd)
bin=${BERTH_CONTROL_PLANE_BIN:-${BERTH_CACHE:-$HOME/.cache/berth}/bin}
node_name=${BERTH_NODE_NAME:-kwok-node-0}
timeout_s=${BERTH_CONTROL_PLANE_TIMEOUT:-120}
started_at=$SECONDS

log() { echo "control-plane: $*" >&2; }
die() { log "$*"; exit 1; }

for tool in etcd kube-apiserver kube-controller-manager kube-scheduler kwok kwok-stages; do
  [[ -x $bin/$tool ]] || die "$bin/$tool is missing: run scripts/build-control-plane.sh"
done
for tool in openssl kubectl curl; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done

# Refuse to start twice on one DIR.
for pidfile in "$dir"/*.pid; do
  [[ -e $pidfile ]] || continue
  if kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    die "$pidfile: already running; stop it with $here/stop.sh $dir"
  fi
  rm -f "$pidfile"
done

# On failure, show why and stop what was started.
on_exit() {
  local rc=$?
  if [[ $rc -ne 0 ]]; then
    for f in "$dir"/*.log; do
      [[ -s $f ]] || continue
      log "--- last lines of $f"
      tail -n 15 "$f" >&2
    done
    "$here/stop.sh" "$dir" >&2 || true
  fi
}
trap on_exit EXIT

# --- ports -------------------------------------------------------------------

# A restart keeps the ports of the first start, so old kubeconfigs stay valid.
if [[ -f $dir/control-plane.env ]]; then
  # shellcheck disable=SC1091
  source "$dir/control-plane.env"
fi

taken=" "
port_is_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# pick_port VAR: keep $VAR if set, else a free port below the ephemeral range.
pick_port() {
  local var=$1 p
  if [[ -n ${!var:-} ]]; then
    taken+="${!var} "
    return
  fi
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 12000))
    if [[ $taken != *" $p "* ]] && port_is_free "$p"; then
      taken+="$p "
      printf -v "$var" %s "$p"
      return
    fi
  done
  die "no free port found for $var"
}
pick_port BERTH_ETCD_PORT
pick_port BERTH_ETCD_PEER_PORT
pick_port BERTH_APISERVER_PORT
for p in $BERTH_ETCD_PORT $BERTH_ETCD_PEER_PORT $BERTH_APISERVER_PORT; do
  port_is_free "$p" || die "port $p is in use"
done
server=https://127.0.0.1:$BERTH_APISERVER_PORT
cat >"$dir/control-plane.env" <<EOF
BERTH_ETCD_PORT=$BERTH_ETCD_PORT
BERTH_ETCD_PEER_PORT=$BERTH_ETCD_PEER_PORT
BERTH_APISERVER_PORT=$BERTH_APISERVER_PORT
EOF

# --- certificates ------------------------------------------------------------

pki=$dir/pki
mkdir -p "$pki"

# cert NAME SUBJECT EXTENSIONS: a P-256 key and a certificate signed by the CA.
cert() {
  local name=$1 subject=$2 ext=$3
  [[ -s $pki/$name.crt ]] && return
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$pki/$name.key" -out "$pki/$name.csr" -subj "$subject" 2>/dev/null
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 3650 -sha256 \
    -extfile <(printf '%s\n' "$ext") -out "$pki/$name.crt" 2>/dev/null
  rm -f "$pki/$name.csr"
}

if [[ ! -s $pki/ca.crt ]]; then
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" -days 3650 -sha256 -subj "/CN=berth-test-ca" \
    -config <(printf '%s\n' '[req]' 'distinguished_name=dn' 'x509_extensions=ca' '[dn]' '[ca]' \
      'basicConstraints=critical,CA:TRUE' 'keyUsage=critical,keyCertSign,cRLSign,digitalSignature' \
      'subjectKeyIdentifier=hash') 2>/dev/null
fi
leaf='basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
authorityKeyIdentifier=keyid'
cert apiserver "/CN=kube-apiserver" "$leaf
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
cert admin "/O=system:masters/CN=berth-admin" "$leaf
extendedKeyUsage=clientAuth"
cert kube-controller-manager "/CN=system:kube-controller-manager" "$leaf
extendedKeyUsage=clientAuth"
cert kube-scheduler "/CN=system:kube-scheduler" "$leaf
extendedKeyUsage=clientAuth"
if [[ ! -s $pki/sa.key ]]; then
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/sa.key" 2>/dev/null
  openssl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub"
fi

# kubeconfig FILE CERT_NAME: credentials embedded, so the file can be copied.
kubeconfig() {
  local b64="base64 -w0"
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: berth
  cluster:
    server: $server
    certificate-authority-data: $($b64 <"$pki/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $($b64 <"$pki/$2.crt")
    client-key-data: $($b64 <"$pki/$2.key")
contexts:
- name: berth
  context:
    cluster: berth
    user: $2
current-context: berth
EOF
  chmod 600 "$1"
}
kubeconfig "$dir/kubeconfig" admin
kubeconfig "$dir/kube-controller-manager.kubeconfig" kube-controller-manager
kubeconfig "$dir/kube-scheduler.kubeconfig" kube-scheduler

# --- processes ---------------------------------------------------------------

# kubectl as admin, with its discovery cache kept in DIR rather than ~/.kube.
kube() { kubectl --kubeconfig="$dir/kubeconfig" --cache-dir="$dir/kubectl-cache" "$@"; }

# launch NAME CMD...: run in the background, log to DIR/NAME.log, PID in DIR/NAME.pid.
launch() {
  local name=$1
  shift
  "$@" </dev/null >>"$dir/$name.log" 2>&1 &
  echo $! >"$dir/$name.pid"
}

# wait_until WHAT PROCESS CMD...: poll CMD until it succeeds, while PROCESS lives.
wait_until() {
  local what=$1 process=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    kill -0 "$(cat "$dir/$process.pid")" 2>/dev/null || die "$process exited while waiting for $what"
    ((SECONDS - started_at < timeout_s)) || die "timed out after ${timeout_s}s waiting for $what"
    sleep 0.2
  done
}

launch etcd "$bin/etcd" \
  --name=berth \
  --data-dir="$dir/etcd" \
  --listen-client-urls="http://127.0.0.1:$BERTH_ETCD_PORT" \
  --advertise-client-urls="http://127.0.0.1:$BERTH_ETCD_PORT" \
  --listen-peer-urls="http://127.0.0.1:$BERTH_ETCD_PEER_PORT" \
  --initial-advertise-peer-urls="http://127.0.0.1:$BERTH_ETCD_PEER_PORT" \
  --initial-cluster="berth=http://127.0.0.1:$BERTH_ETCD_PEER_PORT" \
  --listen-metrics-urls="" \
  --unsafe-no-fsync \
  --log-level=warn
wait_until "etcd" etcd curl -sf "http://127.0.0.1:$BERTH_ETCD_PORT/health"

launch kube-apiserver "$bin/kube-apiserver" \
  --etcd-servers="http://127.0.0.1:$BERTH_ETCD_PORT" \
  --bind-address=127.0.0.1 \
  --advertise-address=127.0.0.1 \
  --secure-port="$BERTH_APISERVER_PORT" \
  --tls-cert-file="$pki/apiserver.crt" \
  --tls-private-key-file="$pki/apiserver.key" \
  --client-ca-file="$pki/ca.crt" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$pki/sa.pub" \
  --service-account-signing-key-file="$pki/sa.key" \
  --service-cluster-ip-range=10.96.0.0/16 \
  --authorization-mode=RBAC \
  --endpoint-reconciler-type=none \
  --profiling=false
wait_until "kube-apiserver /readyz" kube-apiserver \
  kube get --raw /readyz

launch kube-controller-manager "$bin/kube-controller-manager" \
  --kubeconfig="$dir/kube-controller-manager.kubeconfig" \
  --leader-elect=false \
  --secure-port=0 \
  --use-service-account-credentials \
  --service-account-private-key-file="$pki/sa.key" \
  --root-ca-file="$pki/ca.crt" \
  --cluster-signing-cert-file="$pki/ca.crt" \
  --cluster-signing-key-file="$pki/ca.key" \
  --flex-volume-plugin-dir="$dir/flexvolume" \
  --profiling=false

cat >"$dir/kube-scheduler.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: $dir/kube-scheduler.kubeconfig
leaderElection:
  leaderElect: false
EOF
launch kube-scheduler "$bin/kube-scheduler" \
  --config="$dir/kube-scheduler.yaml" \
  --secure-port=0

# kwok's default stages (it has no built-in ones), then ours.
{
  "$bin/kwok-stages"
  for f in "$here"/stages/*.yaml ${BERTH_KWOK_STAGES:+${BERTH_KWOK_STAGES//:/ }}; do
    echo "---"
    cat "$f"
  done
} >"$dir/kwok.yaml"
launch kwok "$bin/kwok" \
  --kubeconfig="$dir/kubeconfig" \
  --config="$dir/kwok.yaml" \
  --manage-all-nodes=false \
  --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
  --cidr=10.244.0.0/16 \
  --node-ip=127.0.0.1

kube apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $node_name
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/arch: amd64
    kubernetes.io/os: linux
    kubernetes.io/hostname: $node_name
    node-role.kubernetes.io/agent: ""
    type: kwok
status:
  capacity:
    cpu: "32"
    memory: 256Gi
    pods: "110"
  allocatable:
    cpu: "32"
    memory: 256Gi
    pods: "110"
EOF

node_ready() {
  [[ $(kube get node "$node_name" \
    -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}') == True ]]
}
wait_until "node $node_name Ready" kwok node_ready
# Pods of a new namespace need its default ServiceAccount (controller-manager).
wait_until "the default ServiceAccount" kube-controller-manager \
  kube -n default get serviceaccount default
for name in kube-scheduler kube-controller-manager kwok; do
  kill -0 "$(cat "$dir/$name.pid")" 2>/dev/null || die "$name exited"
done

log "ready in $((SECONDS - started_at))s: $server"
echo "$dir/kubeconfig"
