#!/usr/bin/env bash
# One command for a GPU machine with jax (CUDA), flax, optax, orbax and
# tensorboard but no package index: installs the small wheels carried in
# .whl/ (made here by scripts/fetch_wheels.sh), then runs every full-length
# experiment in resumable chunks: the authors' recipe x 3 seeds to 120
# epochs, the reference's decoder study (4 x 25 epochs), the reference
# recipe to 113 epochs and MultiMNIST last (scripts/gpu_run.py --help).
#
#   bash scripts/gpu_run.sh --idx_dir=.data/mnist --out=$OUT --smoke --keep_running
set -euo pipefail
cd "$(dirname "$0")/.."
site=/tmp/capsnet_site
if compgen -G ".whl/*.whl" > /dev/null && [ ! -e "$site/.installed" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target "$site" .whl/*.whl
  touch "$site/.installed"
fi
[ -d "$site" ] && export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import jax, flax, optax, orbax.checkpoint, ml_collections; print('[gpu_run.sh] jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
exec python3 scripts/gpu_run.py "$@"
