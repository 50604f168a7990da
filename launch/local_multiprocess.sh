#!/usr/bin/env bash
# Runs N processes of jaxsynth.main on this machine, wired together by JAX's coordinator on
# 127.0.0.1. Waits for all; if one fails, stops the others and exits with its status.
#
#   launch/local_multiprocess.sh N -- --config configs/default.py:classifier --workdir DIR [--config.k=v ...]
#
# Environment (all optional):
#   PORT                 coordinator port on 127.0.0.1 (default: a free one)
#   PYTHON               interpreter (default: python)
#   JAX_PLATFORMS        default cpu (N processes sharing one machine's accelerators would clash)
#   DEVICES_PER_PROCESS  simulated CPU devices per process (appends
#                        --xla_force_host_platform_device_count to XLA_FLAGS; default: 1 device)
#   LOG_DIR              write process i's output to LOG_DIR/process_i.log instead of the terminal
#   GRACE_S              seconds the others get after SIGTERM before SIGKILL (default 10)
set -euo pipefail

usage() {
  echo "usage: $0 N -- --config configs/<name>.py --workdir DIR [--config.key=value ...]" >&2
  exit 2
}

[[ $# -ge 2 ]] || usage
NUM="$1"; shift
[[ "$NUM" =~ ^[1-9][0-9]*$ ]] || { echo "$0: N must be a positive integer, got '$NUM'" >&2; usage; }
[[ "$1" == "--" ]] || usage
shift

PYTHON="${PYTHON:-python}"
if [[ -z "${PORT:-}" ]]; then
  PORT="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')"
fi
GRACE_S="${GRACE_S:-10}"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
if [[ -n "${DEVICES_PER_PROCESS:-}" ]]; then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${DEVICES_PER_PROCESS}"
fi
if [[ -n "${LOG_DIR:-}" ]]; then mkdir -p "$LOG_DIR"; fi

pids=()
cleanup() {
  # SIGTERM first (a healthy process checkpoints and stops), SIGKILL what is left after
  # GRACE_S (a process blocked in a collective with a dead peer never returns by itself).
  local pid deadline=$((SECONDS + GRACE_S))
  for pid in $(jobs -rp); do kill -TERM "$pid" 2>/dev/null || true; done
  while [[ -n "$(jobs -rp)" ]] && ((SECONDS < deadline)); do sleep 0.2; done
  for pid in $(jobs -rp); do kill -KILL "$pid" 2>/dev/null || true; done
}
trap 'cleanup; exit 130' INT TERM

for ((i = 0; i < NUM; i++)); do
  cmd=("$PYTHON" -m jaxsynth.main "$@" --coordinator_address="127.0.0.1:${PORT}"
       --num_processes="$NUM" --process_id="$i")
  if [[ -n "${LOG_DIR:-}" ]]; then
    "${cmd[@]}" >"$LOG_DIR/process_$i.log" 2>&1 &
  else
    "${cmd[@]}" &
  fi
  pids+=("$!")
done
echo "$0: started $NUM processes (coordinator 127.0.0.1:${PORT}): ${pids[*]}" >&2

status=0
for ((n = 0; n < NUM; n++)); do
  finished="" rc=0
  wait -n -p finished || rc=$?  # bash >= 5.1: -p names the process that ended
  if ((rc != 0)); then
    status=$rc
    echo "$0: process ${finished:-?} exited with status $rc; stopping the others" >&2
    cleanup
    wait 2>/dev/null || true
    break
  fi
done
exit "$status"
