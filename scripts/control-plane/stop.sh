#!/usr/bin/env bash
# Stops the control plane that scripts/control-plane/start.sh DIR started:
# every process with a PID file in DIR. DIR itself (data, logs) is kept.
#
# Usage: scripts/control-plane/stop.sh DIR
set -uo pipefail

[[ $# -eq 1 ]] || { echo "usage: $0 DIR" >&2; exit 2; }
dir=$1
[[ -d $dir ]] || exit 0

# PIDs still alive and still running the binary named by their file, so a
# reused PID is never killed.
pids=()
for name in kwok kube-scheduler kube-controller-manager kube-apiserver etcd; do
  pidfile=$dir/$name.pid
  [[ -f $pidfile ]] || continue
  pid=$(cat "$pidfile")
  if [[ $pid =~ ^[0-9]+$ && $(readlink "/proc/$pid/exe" 2>/dev/null) == */"$name"* ]]; then
    kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
  fi
  rm -f "$pidfile"
done

# Give them 10 s to exit, then kill what is left.
for _ in $(seq 50); do
  alive=()
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null && alive+=("$pid")
  done
  [[ ${#alive[@]} -eq 0 ]] && exit 0
  pids=("${alive[@]}")
  sleep 0.2
done
echo "control-plane: killing ${pids[*]} after 10s" >&2
kill -KILL "${pids[@]}" 2>/dev/null
exit 0
