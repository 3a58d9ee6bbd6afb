#!/usr/bin/env bash
# install-system-packages.sh — install the Debian packages berth's tests use
# (the container clients, containerd, Debian's docker-registry 2.8 as a
# reference peer, and what they need to push/pull as root without systemd).
#
# Idempotent and quick: when every package is already installed it only runs
# dpkg-query.  `apt-get update` runs only when something must be installed.
# Must run as root (or with sudo available).  Starts no service; if Debian's
# docker-registry package started its service (it listens on :5000, which the
# tests may want), it is stopped and disabled again.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PACKAGES=(
  # clients and runtimes exercised by the tests
  skopeo podman buildah containerd umoci
  # reference registry (CNCF distribution 2.8.x)
  docker-registry
  # podman/buildah/containerd runtime bits (podman's Recommends that matter,
  # listed explicitly because we install with --no-install-recommends)
  crun runc uidmap fuse-overlayfs conmon golang-github-containers-common
  # networking tools for test hosts / namespaces
  iproute2
  # the web UI's browser tests (headless, driven with --dump-dom and --screenshot)
  chromium
  # the web UI's upload tests: docker save (dockerd is started by the test itself)
  docker.io
  # the Argo CD end-to-end tests: its cache (redis-server, started by the test on
  # loopback; the Debian service is stopped like docker-registry's)
  redis-server
  # the Go module proxy and HTTPS in general; flock for locking; curl for probes
  ca-certificates util-linux curl openssl
  # the Git server of the Trigger write-back and Argo CD tests (git daemon,
  # git http-backend) and their checks
  git
  # the SSH Git server of the write-back tests (sshd -D started by the test on
  # loopback, as the current user; ssh-keygen makes its keys). Its service is not
  # started (policy-rc.d below; no systemd in a container).
  openssh-server openssh-client
  # berth's allocator: tikv-jemalloc-sys builds jemalloc from source with make and cc
  make gcc
)

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || die "must run as root (or have sudo)"
  SUDO=(sudo)
fi

missing_packages() {
  # One dpkg-query for all (unknown names are simply absent from its output).
  local -A installed=()
  local p status
  while read -r p status; do
    [[ "$status" == installed ]] && installed[${p%%:*}]=1
  done < <(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${PACKAGES[@]}" 2>/dev/null || true)
  for p in "${PACKAGES[@]}"; do
    [[ -n "${installed[$p]:-}" ]] || printf '%s\n' "$p"
  done
}

# Debian's redis-server postinst starts a service on 127.0.0.1:6379; the tests
# start their own redis on a free port, so keep the packaged one stopped.
stop_redis_service() {
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
    "${SUDO[@]}" systemctl disable --now redis-server.service >/dev/null 2>&1 || true
  fi
  if [[ -x /etc/init.d/redis-server ]]; then
    "${SUDO[@]}" update-rc.d redis-server disable >/dev/null 2>&1 || true
  fi
}

# Debian's openssh-server enables a system sshd on :22 at boot; the tests start their
# own on a free port. Only right after installing it here (a machine that already had
# it may be reached through it), keep the packaged one from starting at boot.
disable_new_ssh_service() {
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
    "${SUDO[@]}" systemctl disable ssh.service ssh.socket >/dev/null 2>&1 || true
  fi
  if [[ -x /etc/init.d/ssh ]]; then
    "${SUDO[@]}" update-rc.d ssh disable >/dev/null 2>&1 || true
  fi
}

# Debian's docker-registry postinst starts the service through invoke-rc.d
# (sysvinit) or enables the systemd unit.  Keep both from leaving a registry
# listening on :5000.
stop_docker_registry_service() {
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
    "${SUDO[@]}" systemctl disable --now docker-registry.service >/dev/null 2>&1 || true
  fi
  if [[ -x /etc/init.d/docker-registry ]]; then
    if [[ -s /var/run/docker-registry.pid ]] && kill -0 "$(cat /var/run/docker-registry.pid)" 2>/dev/null; then
      log "stopping the docker-registry service Debian started"
      "${SUDO[@]}" /etc/init.d/docker-registry stop >/dev/null 2>&1 || true
    fi
    # No start at boot (sysvinit machines).
    "${SUDO[@]}" update-rc.d docker-registry disable >/dev/null 2>&1 || true
  fi
}

main() {
  local missing
  mapfile -t missing < <(missing_packages)
  if [[ ${#missing[@]} -eq 0 ]]; then
    log "all ${#PACKAGES[@]} packages already installed"
    stop_docker_registry_service
    stop_redis_service
    return 0
  fi
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive

  # Forbid service starts during the install (the usual policy-rc.d trick);
  # restore whatever policy was there before.
  local policy=/usr/sbin/policy-rc.d had_policy=0
  if [[ -e $policy ]]; then
    had_policy=1
  else
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
    "${SUDO[@]}" chmod 0755 "$policy"
    trap '"${SUDO[@]}" rm -f '"$policy" EXIT
  fi

  local start=$SECONDS
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${missing[@]}" >/dev/null
  if [[ $had_policy -eq 0 ]]; then
    "${SUDO[@]}" rm -f "$policy"
    trap - EXIT
  fi
  stop_docker_registry_service
  stop_redis_service
  if [[ " ${missing[*]} " == *" openssh-server "* ]]; then
    disable_new_ssh_service
  fi

  mapfile -t missing < <(missing_packages)
  [[ ${#missing[@]} -eq 0 ]] || die "still missing after apt-get install: ${missing[*]}"
  log "installed in $((SECONDS - start))s"
}

main "$@"
