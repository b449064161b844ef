#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: create it (or reuse it), install this
# checkout on every worker, run the same command on all workers at once.
#
# Usage:
#   launch/tpu_pod.sh NAME ZONE ACCELERATOR_TYPE -- MAIN_ARGS...
# e.g.
#   GCS_BUCKET=my-bucket launch/tpu_pod.sh sc-v5e-16 us-west4-a v5litepod-16 -- \
#     --config=configs/paper.py --mode=train --workdir=/gcs/my-bucket/runs/paper
#
# MAIN_ARGS go to `python -m sparse_circuits.main --distributed` on every
# worker; jax.distributed.initialize() finds the slice by itself. The
# workdir must be one path that every worker sees (Orbax writes one
# checkpoint from all hosts, process 0 writes the metrics): with GCS_BUCKET
# set, the bucket is mounted with gcsfuse at /gcs/$GCS_BUCKET on each worker.
#
# Environment (all optional):
#   PROJECT      gcloud project (default: gcloud's configured one)
#   RUNTIME      TPU software version (default: v2-alpha-tpuv5-lite, for v5e)
#   SPOT=1       create the slice on spot capacity
#   GCS_BUCKET   bucket to mount at /gcs/$GCS_BUCKET on every worker
#   SKIP_INSTALL=1  reuse the environment a previous call installed
#
# Ships the working tree's tracked files (uncommitted edits included,
# untracked files not). Runs in the foreground: start it inside tmux/screen
# for long runs; Ctrl-C stops the local ssh sessions, not necessarily the
# remote processes (see BUILD.md to stop them).
set -euo pipefail

if [[ $# -lt 4 || "$4" != "--" ]]; then
  sed -n '2,27p' "$0" >&2
  exit 2
fi
NAME=$1 ZONE=$2 ACCEL=$3
shift 4
RUNTIME=${RUNTIME:-v2-alpha-tpuv5-lite}
gc=(gcloud compute tpus tpu-vm)
flags=(--zone="$ZONE")
[[ -n "${PROJECT:-}" ]] && flags+=(--project="$PROJECT")

if ! "${gc[@]}" describe "$NAME" "${flags[@]}" >/dev/null 2>&1; then
  echo "creating TPU slice $NAME ($ACCEL, $RUNTIME) in $ZONE"
  create=("${gc[@]}" create "$NAME" "${flags[@]}"
          --accelerator-type="$ACCEL" --version="$RUNTIME")
  [[ "${SPOT:-0}" == 1 ]] && create+=(--spot)
  "${create[@]}"
else
  echo "reusing TPU slice $NAME"
fi

on_all() {  # run a shell command on every worker of the slice
  "${gc[@]}" ssh "$NAME" "${flags[@]}" --worker=all --command="$1"
}

if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
  repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
  pkg=$(mktemp -d)/sparse_circuits.tgz
  (cd "$repo" && git ls-files -z | tar --null -czf "$pkg" -T -)
  "${gc[@]}" scp "$pkg" "$NAME":sparse_circuits.tgz "${flags[@]}" --worker=all
  # TPU VM images ship Python 3.10; uv fetches the 3.11 this package needs.
  on_all 'set -e
    rm -rf ~/sparse_circuits && mkdir -p ~/sparse_circuits
    tar -xzf ~/sparse_circuits.tgz -C ~/sparse_circuits
    command -v ~/.local/bin/uv >/dev/null ||
      curl -LsSf https://astral.sh/uv/install.sh | sh
    ~/.local/bin/uv venv --python 3.11 --allow-existing ~/venv
    ~/.local/bin/uv pip install --python ~/venv/bin/python \
      -e ~/sparse_circuits "jax[tpu]"'
  if [[ -n "${GCS_BUCKET:-}" ]]; then
    on_all "set -e
      if ! command -v gcsfuse >/dev/null; then
        echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -c -s) main\" |
          sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
        curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg |
          sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
        sudo apt-get update -q && sudo apt-get install -y -q gcsfuse
      fi
      sudo mkdir -p /gcs/$GCS_BUCKET && sudo chown \$USER /gcs/$GCS_BUCKET
      mountpoint -q /gcs/$GCS_BUCKET ||
        gcsfuse --implicit-dirs $GCS_BUCKET /gcs/$GCS_BUCKET"
  fi
fi

args=$(printf '%q ' "$@")
on_all "cd ~/sparse_circuits && ~/venv/bin/python -m sparse_circuits.main \
  --distributed $args"
