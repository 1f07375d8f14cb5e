"""scripts/run_background.sh: a run started with main.py's arguments resumes
from its workdir alone, with the same arguments (spaces kept)."""

import os
import subprocess

from conftest import ROOT

SCRIPT = str(ROOT / "scripts" / "run_background.sh")


def _run(*args):
  return subprocess.run(["bash", SCRIPT, *args], capture_output=True,
                        text=True, timeout=300, check=False)


def test_the_workdir_alone_resumes_with_the_first_arguments(tmp_path):
  workdir = tmp_path / "run a"
  # A missing args file is a one-line error, exit status 2.
  missing = _run(str(workdir))
  assert missing.returncode == 2
  assert missing.stderr == (
      f"error: {workdir}/run_background.args does not exist: give main.py's "
      "arguments after the workdir the first time\n")
  data = tmp_path / "mnist files"  # a space to keep
  data.mkdir()
  args = ["--config=configs/mnist.py:smoke", "--mode=summary",
          f"--config.idx_dir={data}"]
  assert _run(str(workdir), *args).returncode == 0
  assert (workdir / "run_background.args").read_bytes() == (
      "\0".join(args) + "\0").encode()
  assert _run(str(workdir)).returncode == 0
  log = (workdir / "train.log").read_text()
  starts = [l for l in log.splitlines() if l.startswith("[run_background]")]
  assert len(starts) == 2
  for line in starts:  # both times the same main.py arguments
    assert line.endswith(f"main.py --workdir={workdir} " + " ".join(args))
  # main.py ran both times: the smoke model's summary (its parameter
  # count) after each start.
  runs = log.split("[run_background]")[1:]
  assert [r.count('"total_params": 234896') for r in runs] == [1, 1]
