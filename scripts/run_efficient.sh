#!/usr/bin/env bash
# The Efficient-CapsNet MNIST reproduction run (README, "Efficient-CapsNet").
# Brings back the run parked in the repository when the workdir is behind it
# (a new machine), then resumes from the workdir's latest checkpoint. Start
# it in the background with
#   nohup scripts/run_efficient.sh > /dev/null 2>&1 &
# and park it before leaving the machine, right after an epoch's evaluation:
#   scripts/park_efficient.sh
# WORKDIR, IDX_DIR and PARKED can be overridden from the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR=${WORKDIR:-runs/mnist_efficient}
IDX_DIR=${IDX_DIR:-../shared/data/mnist}
PARKED=${PARKED:-docs/results/cpu/mnist_efficient_run3/parked}
mkdir -p "$WORKDIR"
if [ -e "$PARKED/park.json" ]; then
  .venv/bin/python -m capsnet_jax.workdir.park restore --from="$PARKED" \
      --workdir="$WORKDIR" --only_if_newer 2>&1 | tee -a "$WORKDIR/train.log"
fi
exec nice -n 19 .venv/bin/python main.py --config=configs/mnist_efficient.py \
    --workdir="$WORKDIR" --config.idx_dir="$IDX_DIR" \
    --config.checkpoint_every_steps=750 >> "$WORKDIR/train.log" 2>&1
