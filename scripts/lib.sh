# shellcheck shell=bash
# Shared settings for berth's helper scripts.  Source it, do not run it:
#
#   . "$(dirname "$0")/lib.sh"
#
# Everything the scripts download or build lives under $BERTH_CACHE, so a
# second run (or a CI cache restore of that one folder) reuses the Go module
# cache, the Go build cache and the built peer binaries.

BERTH_CACHE="${BERTH_CACHE:-$HOME/.cache/berth}"
BERTH_BIN="$BERTH_CACHE/bin"
export BERTH_CACHE BERTH_BIN

# Go: keep modules and build results next to the binaries they produce.
export GOPATH="$BERTH_CACHE/go/path"          # `go install` would write to $GOPATH/bin; we use GOBIN below
export GOMODCACHE="$BERTH_CACHE/go/mod"
export GOCACHE="$BERTH_CACHE/go/build"
# -trimpath: reproducible binaries without local paths.  -modcacherw: the
# module cache stays deletable with plain `rm -rf`.  -buildvcs=false: the temp
# build dirs are not git checkouts.  (Setting GOFLAGS here replaces any
# GOFLAGS from the Go installation's go.env, hence listing buildvcs again.)
export GOFLAGS="-trimpath -modcacherw -buildvcs=false"
export CGO_ENABLED=0
# Some tools ask for a newer Go than the one installed; let the go command
# fetch that toolchain (it is a module too, cached in GOMODCACHE).
export GOTOOLCHAIN=auto

# Binaries built by build-peers.sh come first on PATH.
case ":$PATH:" in
  *":$BERTH_BIN:"*) ;;
  *) export PATH="$BERTH_BIN:$PATH" ;;
esac

# log MESSAGE... — timestamped line on stderr.
log() {
  printf '%s [%s] %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "${0##*/}" "$*" >&2
}

# die MESSAGE... — log and exit 1.
die() {
  log "ERROR: $*"
  exit 1
}
