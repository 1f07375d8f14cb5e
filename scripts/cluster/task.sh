#!/usr/bin/env bash
# The command every task of a cluster job runs (slurm_train.sbatch's srun,
# tpu_vm.sh's --worker=all): main.py with the job's flags. JAX detects the
# cluster from the environment (SLURM_*, TPU metadata) and forms one run
# over every process's devices; PYTHON overrides the interpreter.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
exec "$PYTHON" main.py "$@"
