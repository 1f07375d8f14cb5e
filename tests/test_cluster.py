"""The cluster job scripts: SLURM's command forms one run over two local
processes through JAX's own cluster detection (no coordinator flags)."""

import json
import os
import random
import re
import socket
import subprocess

from conftest import ROOT, subprocess_env, tiny_args

SBATCH = ROOT / "scripts" / "cluster" / "slurm_train.sbatch"
TASK = ROOT / "scripts" / "cluster" / "task.sh"


def _slurm_job_id_with_free_port() -> int:
  """A SLURM_JOB_ID whose coordinator port (JAX: job id % 4096 + 61440) is
  free on this machine."""
  for _ in range(200):
    job = random.randrange(4096)
    with socket.socket() as s:
      try:
        s.bind(("127.0.0.1", job + 61440))
      except OSError:
        continue
    return job
  raise RuntimeError("no free port in 61440-65535")


def test_sbatch_runs_the_task_script_on_every_task():
  text = SBATCH.read_text()
  assert re.search(r"^exec srun .*scripts/cluster/task\.sh \"\$@\"$", text,
                   re.M)
  assert "#SBATCH --signal=TERM@" in text  # time to checkpoint
  assert os.access(SBATCH, os.X_OK) and os.access(TASK, os.X_OK)


def test_two_slurm_tasks_form_one_run(idx_dir, tmp_path):
  """Two processes started as srun would start them (SLURM_* set, no
  --coordinator_address): JAX's SLURM detection makes them one run of 2
  processes x 1 CPU device, which trains and writes one history."""
  workdir = tmp_path / "run"
  job = _slurm_job_id_with_free_port()
  procs = []
  for rank in range(2):
    env = subprocess_env(devices=1)
    env.update(SLURM_JOB_ID=str(job), SLURM_STEP_NODELIST="localhost",
               SLURM_NTASKS="2", SLURM_PROCID=str(rank),
               SLURM_LOCALID=str(rank), SLURM_STEP_NUM_NODES="1",
               PYTHON=str(ROOT / ".venv" / "bin" / "python")
               if (ROOT / ".venv").exists() else "python3")
    # Output to files, not pipes: a process blocked on a full pipe that
    # nobody reads yet would stall the other at its next collective.
    with open(tmp_path / f"out{rank}", "w") as out, open(
        tmp_path / f"err{rank}", "w") as err:
      procs.append(subprocess.Popen(
          [str(TASK), *tiny_args(idx_dir, workdir,
                                 "--config.num_train_steps=4")],
          env=env, cwd=tmp_path, stdout=out, stderr=err))
  for p in procs:
    p.wait(timeout=600)
  outputs = [((tmp_path / f"out{r}").read_text(),
              (tmp_path / f"err{r}").read_text()) for r in range(2)]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  # Process 0 reports the 2 processes; only it writes INFO lines.
  assert "JAX process 0 of 2; 1 local / 2 global devices" in outputs[0][1]
  assert "JAX process" not in outputs[1][1]
  results = json.loads((workdir / "results.json").read_text())
  assert (results["processes"], results["devices"], results["step"]) == (2, 2, 4)
  lines = (workdir / "eval_history.jsonl").read_text().splitlines()
  assert [json.loads(l)["step"] for l in lines] == [4]
