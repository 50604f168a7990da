#!/usr/bin/env bash
# Runs jaxsynth on every worker of a Cloud TPU VM slice at once (one process per worker host);
# JAX finds the coordinator and the process ids itself (--distributed_auto).
#
#   launch/tpu_vm.sh TPU_NAME ZONE -- --config configs/default.py:classifier --workdir /mnt/shared/runs/x
#
# Every worker needs the repository and its Python environment at REPO_DIR (default: jaxsynth,
# relative to the remote home directory), and --workdir on a file system all workers share
# (e.g. a Filestore NFS mount): all processes write the checkpoints, process 0 the logs.
# Environment (optional): REPO_DIR, PYTHON (remote interpreter, default python3),
# PROJECT (gcloud --project).
set -euo pipefail

if [[ $# -lt 3 || "$3" != "--" ]]; then
  echo "usage: $0 TPU_NAME ZONE -- --config configs/<name>.py --workdir SHARED_DIR [...]" >&2
  exit 2
fi
NAME="$1"
ZONE="$2"
shift 3

REPO_DIR="${REPO_DIR:-jaxsynth}"
PYTHON="${PYTHON:-python3}"
# printf %q quotes every argument for the remote shell.
remote="cd ${REPO_DIR} && ${PYTHON} -m jaxsynth.main $(printf '%q ' "$@")--distributed_auto"

gcloud_args=(compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" --worker=all)
if [[ -n "${PROJECT:-}" ]]; then
  gcloud_args+=(--project "$PROJECT")
fi
exec gcloud "${gcloud_args[@]}" --command "$remote"
