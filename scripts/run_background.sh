#!/usr/bin/env bash
# Starts or resumes a long training run at the lowest CPU priority (NICE=19;
# set NICE to change it), its log in WORKDIR/train.log:
#
#   nohup scripts/run_background.sh runs/mnist_paper --config=configs/mnist.py \
#       --config.idx_dir=../shared/data/mnist > /dev/null 2>&1 &
#
# Arguments after the workdir go to main.py unchanged and are kept in
# WORKDIR/run_background.args, so that after a stop the workdir alone
# resumes the run with them:
#
#   nohup scripts/run_background.sh runs/mnist_paper > /dev/null 2>&1 &
#
# Copy the run's config.json, eval_history.jsonl and results.json into
# docs/results/ to publish it (never its checkpoints).
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR=${1:?usage: scripts/run_background.sh WORKDIR [MAIN_PY_ARGS...]}
shift
ARGS_FILE="$WORKDIR/run_background.args"
if [ $# -eq 0 ]; then
  if [ ! -f "$ARGS_FILE" ]; then
    echo "error: $ARGS_FILE does not exist: give main.py's arguments" \
         "after the workdir the first time" >&2
    exit 2
  fi
  mapfile -d '' -t ARGS < "$ARGS_FILE"
  set -- "${ARGS[@]}"
else
  mkdir -p "$WORKDIR"
  printf '%s\0' "$@" > "$ARGS_FILE.tmp"
  mv "$ARGS_FILE.tmp" "$ARGS_FILE"
fi
echo "[run_background] $(date -u +%FT%TZ) main.py --workdir=$WORKDIR $*" >> "$WORKDIR/train.log"
exec nice -n "${NICE:-19}" .venv/bin/python main.py --workdir="$WORKDIR" "$@" \
    >> "$WORKDIR/train.log" 2>&1
