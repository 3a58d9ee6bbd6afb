#!/usr/bin/env bash
# Builds the Kubernetes control plane that berth's tests run against, from Go
# modules: kube-apiserver, kube-controller-manager, kube-scheduler, etcd, kwok
# and kwok-stages (prints kwok's default stages).
#
# Versions are pinned by the wrapper modules under scripts/control-plane/
# (go.mod + go.sum). Binaries are cached by version in
#   ${BERTH_CACHE:-$HOME/.cache/berth}/bin/.versions/NAME-VERSION
# with a symlink bin/NAME; a cached binary is not built again. The Go module
# and build caches live in ${BERTH_CACHE}/go.
#
# Usage: scripts/build-control-plane.sh        (prints the bin folder last)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
wrappers=$here/control-plane
cache=${BERTH_CACHE:-$HOME/.cache/berth}
bin=$cache/bin
versions=$bin/.versions
mkdir -p "$versions" "$cache/go"

export GOMODCACHE=$cache/go/mod
export GOCACHE=$cache/go/build
export CGO_ENABLED=0
# The wrappers ask for the Go they need; a newer toolchain comes from the proxy.
export GOTOOLCHAIN=auto

command -v go >/dev/null || { echo "build-control-plane: go is not installed" >&2; exit 1; }

# module_version DIR MODULE: the version DIR/go.mod requires of MODULE.
module_version() {
  local v
  v=$(awk -v m="$2" '($1 == m && $2 ~ /^v/) { print $2 } ($1 == "require" && $2 == m) { print $3 }' "$1/go.mod" | head -n1)
  [[ -n $v ]] || { echo "build-control-plane: $1/go.mod does not require $2" >&2; exit 1; }
  echo "$v"
}

# build NAME VERSION MODULE_DIR PACKAGE [LDFLAGS]
build() {
  local name=$1 version=$2 dir=$3 pkg=$4 ldflags=${5:-}
  local out=$versions/$name-$version
  if [[ ! -x $out ]]; then
    echo "build-control-plane: building $name $version ..."
    local start=$SECONDS
    (cd "$dir" && go build -trimpath -buildvcs=false -ldflags "-s -w $ldflags" -o "$out.tmp" "$pkg")
    mv -f "$out.tmp" "$out"
    echo "build-control-plane: built $name $version in $((SECONDS - start))s"
  else
    echo "build-control-plane: $name $version cached"
  fi
  ln -sfn ".versions/$name-$version" "$bin/$name"
}

# Sequential on purpose: each Kubernetes link alone fills two cores and ~3 GiB.
kube_dir=$wrappers/k8s-wrapper
kube_version=$(module_version "$kube_dir" k8s.io/kubernetes)
kube_minor=${kube_version#v1.}
kube_minor=${kube_minor%%.*}
kube_ldflags=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=" -X $p.gitVersion=$kube_version -X $p.gitMajor=1 -X $p.gitMinor=$kube_minor -X $p.gitTreeState=clean"
done
for c in kube-apiserver kube-controller-manager kube-scheduler; do
  build "$c" "$kube_version" "$kube_dir" "k8s.io/kubernetes/cmd/$c" "$kube_ldflags"
done

etcd_dir=$wrappers/etcd-wrapper
build etcd "$(module_version "$etcd_dir" go.etcd.io/etcd/server/v3)" "$etcd_dir" go.etcd.io/etcd/server/v3

kwok_dir=$wrappers/kwok-stages
kwok_version=$(module_version "$kwok_dir" sigs.k8s.io/kwok)
build kwok "$kwok_version" "$kwok_dir" sigs.k8s.io/kwok/cmd/kwok
build kwok-stages "$kwok_version" "$kwok_dir" .

echo "$bin"
