#!/usr/bin/env bash
# build-peers.sh [TOOL...] — build the Go-based peers berth's tests run against.
#
# Binaries go to $BERTH_BIN (default ~/.cache/berth/bin, see lib.sh) as
# symlinks into $BERTH_BIN/.versions/NAME-VERSION; a versioned file that
# already exists is reused, so a rerun is a no-op.  Tools are built one after
# the other (the machines have 2 cores).  Versions are pinned below and can be
# overridden from the environment (e.g. CRANE_VERSION=v0.21.8).
#
# Default set: oci-conformance crane oras regctl minio helm distribution gitops-check argocd
#   (argocd: Argo CD v3.1.0, one multi-call binary linked as argocd,
#   argocd-application-controller and argocd-repo-server, for tests/k8s/argocd_e2e.rs;
#   built from the wrapper module scripts/argocd-wrapper/, about 200 MB and the
#   slowest build here: several minutes on 2 cores)
#   (distribution: CNCF distribution v3 `registry`, as `distribution-registry`, the
#   registry without a referrers API that tests/sync pushes to and pulls from)
#
# helm is in the default set because the chart tests (helm lint, helm template,
# helm install against the test control plane) need it.  Offline, `helm
# template` and `helm lint` assume the Kubernetes version compiled into helm
# (1.20 unless set with -X), so it is built with HELM_K8S_VERSION (default
# 1.33, the version scripts/build-control-plane.sh builds) in both chartutil
# and lint/rules, the way helm's own Makefile does.
#
# -----------------------------------------------------------------------------
# The OCI conformance suite (`oci-conformance.test`)
#
# The v1.1.1 suite (module github.com/opencontainers/distribution-spec/conformance
# at v0.0.0-20250123160558-a139cc423184, the Ginkgo-based one) is NOT served by
# the Go module proxy these machines use: it answers "403 This module version
# is not available" for that and for every other pseudo-version whose
# conformance/ tree equals v1.1.1 (checked all 11, 2024-12-20 .. 2025-02-20).
# The only Ginkgo-era version it serves is 2023-05-16 (before the referrers
# tests).  So we pin the newest version it serves, the redesigned suite
# (v0.0.0-20260831232431-97274622c111), which still keeps a `go test` entry
# point (legacy_test.go: TestLegacy) and still honours the v1.1.1 variable
# names.  Set OCI_CONFORMANCE_VERSION to build another version where the
# proxy has it (the build recipe — download, copy, `go test -c` — is the same).
#
# What the binary reads (config.go of that version), highest precedence first:
#   1. OCI_* variables mapped from the config struct:
#        OCI_REGISTRY (host:port, default localhost:5000)
#        OCI_TLS (enabled | insecure | disabled=plain http; default enabled)
#        OCI_REPO1, OCI_REPO2 (default conformance/repo1, conformance/repo2)
#        OCI_USERNAME, OCI_PASSWORD, OCI_CACHE_AUTH, OCI_LOG (debug|info|warn|error)
#        OCI_FILTER_TEST (name prefix, e.g. "OCI Conformance Test/sha256 blobs")
#        OCI_RESULTS_DIR (default ./results)
#        OCI_VERSION (1.0 | 1.1 = stable, default | dev) — picks the defaults below
#        OCI_API_{PING,PULL,PUSH,REFERRER}, OCI_API_BLOBS_{ATOMIC,DELETE,
#          DIGEST_HEADER,MOUNT_ANONYMOUS,UPLOAD_CANCEL}, OCI_API_MANIFESTS_{ATOMIC,
#          DELETE,DIGEST_HEADER,TAG_PARAM}, OCI_API_TAGS_{ATOMIC,DELETE,LIST}
#        OCI_DATA_{IMAGE,INDEX,INDEX_LIST,SPARSE,ARTIFACT,SUBJECT,SUBJECT_MISSING,
#          ARTIFACT_LIST,SUBJECT_LIST,DATA_FIELD,NONDISTRIBUTABLE,CUSTOM_FIELDS,
#          NO_LAYERS,EMPTY_BLOB,SHA512}
#        OCI_RO_DATA_{TAGS,MANIFESTS,BLOBS,REFERRERS} (space separated)
#   2. the YAML file named by OCI_CONFIGURATION (else ./oci-conformance.yaml if present)
#   3. the v1.1.1 ("legacy") names, each printing a deprecation WARNING:
#        OCI_ROOT_URL (http://127.0.0.1:PORT => OCI_TLS=disabled + OCI_REGISTRY),
#        OCI_NAMESPACE (=> REPO1), OCI_CROSSMOUNT_NAMESPACE (=> REPO2),
#        OCI_TEST_PULL, OCI_TEST_PUSH, OCI_TEST_CONTENT_DISCOVERY (=> tags list +
#        referrers), OCI_TEST_CONTENT_MANAGEMENT (=> tag/manifest/blob delete),
#        OCI_DEBUG (=> OCI_LOG=debug), OCI_TAG_NAME, OCI_MANIFEST_DIGEST, OCI_BLOB_DIGEST.
#      NOT honoured any more: OCI_REPORT_DIR (use OCI_RESULTS_DIR),
#      OCI_HIDE_SKIPPED_WORKFLOWS, OCI_DELETE_MANIFEST_BEFORE_BLOBS,
#      OCI_SKIP_EMPTY_LAYER_PUSH_TEST, OCI_AUTOMATIC_CROSSMOUNT, OCI_AUTH_SCOPE.
#
# Where it writes: $OCI_RESULTS_DIR (default ./results, relative to the cwd):
#   results.yaml (the config used, then `apis:` and `data:` maps of name ->
#   Pass|FAIL|Error|Skip|Disabled; no overall field), junit.xml and
#   report.html.  On stdout: the test tree ("OCI Conformance Test: FAIL",
#   one line per test) and the summary "OCI Conformance Result: Pass|FAIL|Error"
#   followed by per-status counts (Disabled, Skip, Pass, FAIL, Error, Total).
#   Deprecation WARNINGs and per-failure log lines go to stderr.
#
# How to tell pass from fail:
#   * a conformance failure: exit status 1, "*** Conformance test detected a
#     failure. ***" on stderr, no go-test FAIL line (the suite calls os.Exit(1)
#     from inside TestLegacy).
#   * BUT a bad config (e.g. OCI_VERSION=9) only prints "failed to load
#     config: ..." and the binary exits 0 with "PASS", writing no report
#     (checked).  So never trust the exit code alone.  Pass means all of:
#     exit status 0; stdout has "OCI Conformance Result: Pass"; a fresh
#     $OCI_RESULTS_DIR/junit.xml whose root <testsuites> has failures="0" and
#     no (or 0) errors= attribute (skipped=/disabled= are counted apart; each
#     <testcase> has status="passed|skipped|failure|error").
#   * Debian's docker-registry 2.8.2 gets "Result: FAIL" (703 Pass, 99 FAIL,
#     44 Skip of 848): no referrers API, no sha512, no 416 for out-of-order
#     chunks, broken range requests.  OCI_DATA_SHA512=false drops the sha512
#     data set for a registry that only does sha256.
# Example (plain-HTTP registry on 127.0.0.1:5000):
#   OCI_ROOT_URL=http://127.0.0.1:5000 OCI_NAMESPACE=conformance/a \
#   OCI_CROSSMOUNT_NAMESPACE=conformance/b OCI_RESULTS_DIR=/tmp/oci \
#     oci-conformance.test -test.v
# -----------------------------------------------------------------------------
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Pinned versions.  The Go module proxy here does not serve every version
# (it answers 403 for some): the comments say what was checked.
: "${OCI_CONFORMANCE_VERSION:=v0.0.0-20260831232431-97274622c111}" # newest suite served; v1.1.1 (a139cc423184) is 403
: "${CRANE_VERSION:=v0.21.9}"
: "${ORAS_VERSION:=v1.3.3}"
: "${REGCTL_VERSION:=v0.11.5}"
: "${MINIO_VERSION:=v0.0.0-20260212201848-7aac2a2c5b7c}" # master 2026-02-12; RELEASE.2025-10-15T17-29-55Z (9e49d5e7a648) is 403
: "${DISTRIBUTION_VERSION:=v3.1.1}"
: "${HELM_VERSION:=v3.21.4}"
: "${ARGOCD_VERSION:=v3.1.0}" # the Application CRD for the Trigger write-back tests
: "${HELM_K8S_VERSION:=1.33}" # what offline `helm template`/`helm lint` take as the cluster version

DEFAULT_TOOLS=(oci-conformance crane oras regctl minio helm distribution gitops-check argocd argocd-crd)
ALL_TOOLS=("${DEFAULT_TOOLS[@]}")

VERSIONS_DIR="$BERTH_BIN/.versions"
mkdir -p "$VERSIONS_DIR"

# One build at a time, also across concurrent invocations of this script.
exec 9>"$BERTH_CACHE/.build-peers.lock"
flock 9

TMP_ROOT="$(mktemp -d "${TMPDIR:-/tmp}/berth-build.XXXXXX")"
trap 'rm -rf "$TMP_ROOT"' EXIT

SUMMARY=()

# provide LINK_NAME VERSIONED_NAME BUILD_FUNCTION [ARGS...]
# Runs BUILD_FUNCTION OUT ARGS... unless $VERSIONS_DIR/VERSIONED_NAME exists,
# then points $BERTH_BIN/LINK_NAME at it.
provide() {
  local link="$1" versioned="$2"; shift 2
  local target="$VERSIONS_DIR/$versioned"
  if [[ -x "$target" ]]; then
    log "$link: cached ($versioned)"
    SUMMARY+=("$(printf '%-22s cached  %s' "$link" "$versioned")")
  else
    log "$link: building $versioned"
    local start=$SECONDS tmp="$VERSIONS_DIR/.tmp.$versioned.$$"
    rm -f "$tmp"
    if ! "$@" "$tmp"; then
      rm -f "$tmp"
      die "$link: build of $versioned failed"
    fi
    mv -f "$tmp" "$target"
    local took=$((SECONDS - start))
    log "$link: built $versioned in ${took}s"
    SUMMARY+=("$(printf '%-22s %5ss  %s' "$link" "$took" "$versioned")")
  fi
  ln -sfn ".versions/$versioned" "$BERTH_BIN/$link"
}

# go_install_to PKG@VERSION LDFLAGS OUT — `go install` into a scratch GOBIN,
# then move the single binary to OUT.
go_install_to() {
  local pkgver="$1" ldflags="$2" out="$3"
  local gobin; gobin="$(mktemp -d "$TMP_ROOT/gobin.XXXXXX")"
  GOBIN="$gobin" go install -ldflags="$ldflags" "$pkgver"
  local bins=("$gobin"/*)
  [[ ${#bins[@]} -eq 1 && -x "${bins[0]}" ]] || { log "unexpected go install output: ${bins[*]}"; return 1; }
  mv -f "${bins[0]}" "$out"
}

# module_dir MODULE@VERSION — download a module and print its directory in the module cache.
module_dir() {
  local json dir
  json="$(go mod download -json "$1")" || { printf '%s\n' "$json" >&2; return 1; }
  dir="$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
  [[ -n "$dir" && -d "$dir" ]] || { printf '%s\n' "$json" >&2; return 1; }
  printf '%s\n' "$dir"
}

build_oci_conformance() {
  local out="$1" mod=github.com/opencontainers/distribution-spec/conformance src
  src="$(module_dir "$mod@$OCI_CONFORMANCE_VERSION")" || return 1
  # The module cache is read-only and `go test -c` wants a main module: copy it.
  cp -R "$src" "$TMP_ROOT/conformance"
  chmod -R u+w "$TMP_ROOT/conformance"
  # main.Version is what the report shows as the commit when there is no VCS info.
  (cd "$TMP_ROOT/conformance" && go test -c -ldflags="-s -w -X main.Version=${OCI_CONFORMANCE_VERSION##*-}" -o "$out" .)
}

build_crane()  { go_install_to "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION" "-s -w" "$1"; }
build_oras()   { go_install_to "oras.land/oras/cmd/oras@$ORAS_VERSION" "-s -w" "$1"; }
build_regctl() { go_install_to "github.com/regclient/regclient/cmd/regctl@$REGCTL_VERSION" "-s -w" "$1"; }
build_minio() {
  local short="${MINIO_VERSION##*-}"
  go_install_to "github.com/minio/minio@$MINIO_VERSION" \
    "-s -w -X github.com/minio/minio/cmd.CommitID=$short -X github.com/minio/minio/cmd.ShortCommitID=$short -X github.com/minio/minio/cmd.CopyrightYear=${MINIO_VERSION:7:4}" "$1"
}
build_distribution() {
  go_install_to "github.com/distribution/distribution/v3/cmd/registry@$DISTRIBUTION_VERSION" \
    "-s -w -X github.com/distribution/distribution/v3/version.version=$DISTRIBUTION_VERSION" "$1"
}
build_helm() {
  local major="${HELM_K8S_VERSION%%.*}" minor="${HELM_K8S_VERSION#*.}" p=helm.sh/helm/v3
  go_install_to "$p/cmd/helm@$HELM_VERSION" \
    "-s -w -X $p/internal/version.version=$HELM_VERSION -X $p/internal/version.gitTreeState=clean \
 -X $p/pkg/chartutil.k8sVersionMajor=$major -X $p/pkg/chartutil.k8sVersionMinor=$minor \
 -X $p/pkg/lint/rules.k8sVersionMajor=$major -X $p/pkg/lint/rules.k8sVersionMinor=$minor" "$1"
}

# berth-gitops-check (scripts/gitops-check/): kstatus from sigs.k8s.io/cli-utils
# v0.37.2 and Argo CD's Lua interpreter (gopher-lua v1.1.1), for the GitOps tests.
# Versioned by a hash of its source, so an edit rebuilds it.
build_gitops_check() {
  (cd "$SCRIPTS_DIR/gitops-check" && go build -ldflags="-s -w" -o "$1" .)
}

# Argo CD (scripts/argocd-wrapper/): github.com/argoproj/argo-cd/v3 replaces ~37
# modules in its go.mod, so `go install` refuses it; the wrapper requires it and
# carries the same replace block (checked here against the downloaded go.mod, so
# a version bump that forgets the block fails loudly instead of building a
# binary against other dependency versions).  One binary; its role comes from
# argv[0], so the links below are the whole "install".
ARGOCD_WRAPPER="$SCRIPTS_DIR/argocd-wrapper"
argocd_version() { awk '$1 == "github.com/argoproj/argo-cd/v3" { print $2 }' "$ARGOCD_WRAPPER/go.mod" | head -n1; }
build_argocd() {
  local out="$1" version; version="$(argocd_version)"
  local src; src="$(module_dir "github.com/argoproj/argo-cd/v3@$version")" || return 1
  if ! diff <(sed -n '/^replace (/,/^)/p' "$src/go.mod") <(sed -n '/^replace (/,/^)/p' "$ARGOCD_WRAPPER/go.mod") >&2; then
    log "argocd: the replace block of $ARGOCD_WRAPPER/go.mod differs from argo-cd $version's go.mod (diff above)"
    return 1
  fi
  local p=github.com/argoproj/argo-cd/v3/common
  (cd "$ARGOCD_WRAPPER" && go build -ldflags="-s -w -X $p.version=${version#v} -X $p.gitTag=$version -X $p.gitTreeState=clean" \
    -o "$out" github.com/argoproj/argo-cd/v3/cmd)
}
provide_argocd() {
  local version; version="$(argocd_version)"
  [[ -n "$version" ]] || die "argocd: $ARGOCD_WRAPPER/go.mod does not require github.com/argoproj/argo-cd/v3"
  # Keyed by what the build reads (comments in go.mod change nothing).
  local key; key="$( (grep -v '^//' "$ARGOCD_WRAPPER/go.mod"; cat "$ARGOCD_WRAPPER/go.sum") | sha256sum | cut -c1-12)"
  provide argocd "argocd-$version-$key" build_argocd
  # The tests also read the module's source (manifests/crds/, manifests/base/config/)
  # from the module cache: make sure it is there when the binary came from the cache.
  module_dir "github.com/argoproj/argo-cd/v3@$version" >/dev/null || die "argocd: cannot download the module"
  local role
  for role in argocd-application-controller argocd-repo-server; do
    ln -sfn argocd "$BERTH_BIN/$role"
  done
}

# Argo CD's Application CRD, from the github.com/argoproj/argo-cd/v3 module (a YAML
# file, not a binary: provided like one so it is cached and versioned the same way).
build_argocd_crd() {
  local src
  src="$(module_dir "github.com/argoproj/argo-cd/v3@$ARGOCD_VERSION")" || return 1
  cp "$src/manifests/crds/application-crd.yaml" "$1"
  chmod 0755 "$1"
}

build_tool() {
  case "$1" in
    oci-conformance) provide oci-conformance.test "oci-conformance-$OCI_CONFORMANCE_VERSION.test" build_oci_conformance ;;
    crane)           provide crane "crane-$CRANE_VERSION" build_crane ;;
    oras)            provide oras "oras-$ORAS_VERSION" build_oras ;;
    regctl)          provide regctl "regctl-$REGCTL_VERSION" build_regctl ;;
    minio)           provide minio "minio-$MINIO_VERSION" build_minio ;;
    distribution)    provide distribution-registry "distribution-registry-$DISTRIBUTION_VERSION" build_distribution ;;
    helm)            provide helm "helm-$HELM_VERSION-k8s$HELM_K8S_VERSION" build_helm ;;
    argocd)          provide_argocd ;;
    gitops-check)    provide berth-gitops-check "berth-gitops-check-$(cat "$SCRIPTS_DIR"/gitops-check/{go.mod,go.sum,main.go} | sha256sum | cut -c1-12)" build_gitops_check ;;
    argocd-crd)      provide argocd-application-crd.yaml "argocd-application-crd-$ARGOCD_VERSION.yaml" build_argocd_crd ;;
    *) die "unknown tool '$1' (known: ${ALL_TOOLS[*]})" ;;
  esac
}

main() {
  local tools=("$@")
  [[ ${#tools[@]} -gt 0 ]] || tools=("${DEFAULT_TOOLS[@]}")
  command -v go >/dev/null || die "go is not installed"
  log "go $(go env GOVERSION), cache $BERTH_CACHE, tools: ${tools[*]}"
  local start=$SECONDS t
  for t in "${tools[@]}"; do
    build_tool "$t"
  done
  log "done in $((SECONDS - start))s; binaries in $BERTH_BIN"
  printf '%s\n' "${SUMMARY[@]}" >&2
}

main "$@"
