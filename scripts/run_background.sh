#!/usr/bin/env bash
# Starts or resumes a long training run at the lowest CPU priority (NICE=19;
# set NICE to change it), its log
# in WORKDIR/train.log; rerun the same line to resume after a stop:
#
#   nohup scripts/run_background.sh runs/mnist_paper --config=configs/mnist.py \
#       --config.idx_dir=../shared/data/mnist > /dev/null 2>&1 &
#
# Arguments after the workdir go to main.py unchanged. Copy the run's
# config.json, eval_history.jsonl and results.json into docs/results/ to
# publish it (never its checkpoints).
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR=${1:?usage: scripts/run_background.sh WORKDIR MAIN_PY_ARGS...}
shift
mkdir -p "$WORKDIR"
echo "[run_background] $(date -u +%FT%TZ) main.py --workdir=$WORKDIR $*" >> "$WORKDIR/train.log"
exec nice -n "${NICE:-19}" .venv/bin/python main.py --workdir="$WORKDIR" "$@" \
    >> "$WORKDIR/train.log" 2>&1
