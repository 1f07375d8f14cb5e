#!/usr/bin/env bash
# Downloads, here where pip reaches PyPI, the small pure-Python wheels that
# scripts/gpu_run.sh installs on a GPU machine without a package index (one
# that has jax with CUDA, tensorboard and their dependencies): the versions
# of requirements.txt. .whl/ is git-ignored.
set -euo pipefail
cd "$(dirname "$0")/.."
pin() { grep -i "^$1==" requirements.txt; }
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl \
    "$(pin flax)" "$(pin optax)" "$(pin orbax-checkpoint)" "$(pin ml_collections)"
ls -la .whl
