#!/usr/bin/env bash
# sync-chart-crds.sh [--check] — keep charts/berth/crds/ identical to crds/.
#
# crds/ is generated from the Rust types (`cargo run -- crds --out-dir crds`);
# the Helm chart ships a copy in charts/berth/crds/ because Helm installs only
# CRDs inside the chart.  Run this after regenerating crds/:
#
#   cargo run -- crds --out-dir crds && scripts/sync-chart-crds.sh
#
# It copies every crds/*.yaml into the chart and removes chart CRDs that no
# longer exist in crds/.  With --check it changes nothing and exits 1 (listing
# the differences) when the two folders differ; tests and CI can call that.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

src=crds
dst=charts/berth/crds

check=false
case "${1:-}" in
  --check) check=true ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

shopt -s nullglob
sources=("$src"/*.yaml)
[[ ${#sources[@]} -gt 0 ]] || { echo "$0: no $src/*.yaml (generate them with: cargo run -- crds --out-dir crds)" >&2; exit 1; }

if $check; then
  if diff -r "$src" "$dst" >&2; then
    echo "$dst is in sync with $src (${#sources[@]} CRDs)"
  else
    echo "$0: $dst differs from $src; run scripts/sync-chart-crds.sh" >&2
    exit 1
  fi
  exit 0
fi

mkdir -p "$dst"
for f in "$dst"/*; do
  [[ -e "$src/${f##*/}" ]] || { rm -f -- "$f"; echo "removed $f"; }
done
for f in "${sources[@]}"; do
  if ! cmp -s "$f" "$dst/${f##*/}"; then
    cp -- "$f" "$dst/"
    echo "copied $f -> $dst/"
  fi
done
echo "$dst is in sync with $src (${#sources[@]} CRDs)"
