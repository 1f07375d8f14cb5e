#!/usr/bin/env bash
# Data-parallel training on a Cloud TPU VM (a v4/v5 pod slice): the same
# command on every worker; JAX reads the slice from the TPU metadata.
#
#   scripts/cluster/tpu_vm.sh NAME ZONE --config=configs/mnist.py \
#       --workdir=/mnt/shared/runs/mnist
#
# Needs the gcloud CLI, a TPU VM created with a TPU software version that
# has JAX (e.g. tpu-ubuntu2204-base), this repository cloned at ~/capsnet_jax
# on every worker (the first command below does it) and a workdir on a
# filesystem every worker sees (for example a Filestore NFS mount).
set -euo pipefail
NAME=${1:?usage: tpu_vm.sh NAME ZONE MAIN_PY_FLAGS...}
ZONE=${2:?usage: tpu_vm.sh NAME ZONE MAIN_PY_FLAGS...}
shift 2
REPO=${REPO:?set REPO to the URL this repository is cloned from}
gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command="
  set -e
  [ -d ~/capsnet_jax ] || git clone --depth 1 $REPO ~/capsnet_jax
  cd ~/capsnet_jax && python3 -m pip install -q -r requirements.txt 'jax[tpu]'"
gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all \
    --command="cd ~/capsnet_jax && PYTHON=python3 scripts/cluster/task.sh $*"
