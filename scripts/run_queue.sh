#!/usr/bin/env bash
# Runs background runs one after another, each resumed from its
# WORKDIR/run_background.args (scripts/run_background.sh): a queue that
# keeps the CPU busy across sessions. A run that stops with an error is
# logged and the queue goes on to the next; a finished run is a quick no-op.
#
#   nohup scripts/run_queue.sh runs/dec_deconv_bn runs/dec_deconv > /dev/null 2>&1 &
#
# Make a workdir's args file without starting it with
#   scripts/run_queue.sh --add WORKDIR MAIN_PY_ARGS...
# To stop: kill this script first, then send its run SIGINT (Ctrl-C: a
# checkpoint is saved after the current step); stopped the other way round,
# the queue starts the next run.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--add" ]; then
  WORKDIR=${2:?usage: scripts/run_queue.sh --add WORKDIR MAIN_PY_ARGS...}
  shift 2
  if [ $# -eq 0 ]; then
    echo "error: give main.py's arguments after the workdir" >&2
    exit 2
  fi
  mkdir -p "$WORKDIR"
  printf '%s\0' "$@" > "$WORKDIR/run_background.args.tmp"
  mv "$WORKDIR/run_background.args.tmp" "$WORKDIR/run_background.args"
  exit 0
fi
if [ $# -eq 0 ]; then
  echo "usage: scripts/run_queue.sh WORKDIR [WORKDIR...] | --add WORKDIR ARGS..." >&2
  exit 2
fi
for workdir in "$@"; do
  if [ ! -f "$workdir/run_background.args" ]; then
    echo "[run_queue] $(date -u +%FT%TZ) $workdir: no run_background.args, skipped" >&2
    continue
  fi
  scripts/run_background.sh "$workdir"
  status=$?
  echo "[run_queue] $(date -u +%FT%TZ) $workdir ended with status $status" \
      >> "$workdir/train.log"
done
