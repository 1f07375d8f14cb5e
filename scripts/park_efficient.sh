#!/usr/bin/env bash
# Parks the Efficient-CapsNet MNIST reproduction run (scripts/run_efficient.sh)
# in the repository before leaving the machine, right after an epoch's
# evaluation:
#   1. capsnet_jax.workdir.park saves the workdir's latest checkpoint, config, history
#      and event files into PARKED (replacing the earlier park);
#   2. the history and config are copied beside it, where README's generated
#      tables read them;
#   3. the bundled weights become the workdir's best checkpoint if it is
#      better than the bundle (--only_if_better: a run restored from a park
#      has lost its older best checkpoint, never the bundle's);
#   4. README's generated tables and curves are regenerated and checked.
# Then review the prose (README "Against the paper", the bundle paragraph),
# run tests/test_bundled.py if the bundle changed, and commit.
# WORKDIR, PARKED and BUNDLE can be overridden from the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR=${WORKDIR:-runs/mnist_efficient}
PARKED=${PARKED:-docs/results/cpu/mnist_efficient_run3/parked}
BUNDLE=${BUNDLE:-mnist_efficient}
.venv/bin/python -m capsnet_jax.workdir.park save --workdir="$WORKDIR" --to="$PARKED"
cp "$PARKED/eval_history.jsonl" "$PARKED/config.json" "$(dirname "$PARKED")/"
.venv/bin/python -m capsnet_jax.inference.bundled --workdir="$WORKDIR" --name="$BUNDLE" \
    --which=best --only_if_better 2>&1 | grep -v '^[IW][0-9]'
.venv/bin/python -m capsnet_jax.analysis.report --update=README.md
.venv/bin/python -m capsnet_jax.analysis.report --check=README.md
git status --short -- docs capsnet_jax/weights README.md
