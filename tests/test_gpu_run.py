"""scripts/gpu_run.py on CPU with the tiny model: chained runs, chunks that
stop at a deadline and resume, and the collected results."""

import json
import pathlib
import sys
import tarfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_run  # pylint: disable=g-import-not-at-top,wrong-import-position
from conftest import subprocess_env  # pylint: disable=g-import-not-at-top,wrong-import-position

TINY = ["--override=--config.model=tiny", "--override=--config.primary_types=4",
        "--override=--config.num_summary_images=2",
        "--override=--config.log_every_steps=4",
        "--batch_size=32", "--num_train=256", "--poll_seconds=0.5"]


@pytest.fixture(autouse=True)
def _compilation_cache(monkeypatch):
  """gpu_run starts main.py with this process's environment: give it the
  subprocesses' compilation cache (this process's JAX is already set up)."""
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR",
                     subprocess_env()["JAX_COMPILATION_CACHE_DIR"])


def _history(workdir):
  return [json.loads(l) for l in
          (workdir / "eval_history.jsonl").read_text().splitlines()]


def test_experiment_table():
  args = gpu_run.main.__globals__["argparse"].Namespace(
      num_train=60000, batch_size=128, paper_epochs=50, long_epochs=120,
      decoder_epochs=25, ref_long_epochs=113, only="")
  exps = {e.name: e for e in gpu_run.experiments(args)}
  assert sorted(exps) == ["dec_deconv", "dec_deconv_bn", "dec_fc", "dec_fc_bn",
                          "mnist_paper", "mnist_paper_long", "ref_fc_long"]
  assert exps["mnist_paper"].total_steps == 50 * 468
  assert exps["mnist_paper_long"].total_steps == 120 * 468
  assert exps["dec_deconv_bn"].total_steps == 25 * 421  # 54,000 // 128
  assert exps["dec_deconv_bn"].overrides == ("--config.decoder=deconv",
                                             "--config.batch_norm=True")
  assert exps["ref_fc_long"].after == "dec_fc"
  assert exps["dec_fc"].config == "configs/mnist.py:reference"


def test_chained_runs_and_collected_results(idx_dir, tmp_path):
  runs, out = tmp_path / "runs", tmp_path / "out"
  rc = gpu_run.main([f"--idx_dir={idx_dir}", f"--runs={runs}", f"--out={out}",
                     "--only=mnist_paper,mnist_paper_long", "--paper_epochs=2",
                     "--long_epochs=3", *TINY])
  assert rc == 0
  paper, long = _history(runs / "mnist_paper"), _history(runs / "mnist_paper_long")
  assert [r["step"] for r in paper] == [8, 16]
  assert [r["step"] for r in long] == [8, 16, 24]
  assert long[:2] == paper  # continued from a copy of the finished run
  assert json.loads((runs / "mnist_paper_long" / "results.json").read_text())[
      "step"] == 24
  status = (out / "status.txt").read_text()
  assert "mnist_paper | finished | 16 | 16" in status
  assert "mnist_paper_long | finished | 24 | 24" in status
  with tarfile.open(out / "gpu_runs.tar.gz") as tar:
    names = set(tar.getnames())
  for name in ("gpu_runs/mnist_paper_long/eval_history.jsonl",
               "gpu_runs/mnist_paper/results.json", "gpu_runs/report.md",
               "gpu_runs/curves.png", "gpu_runs/mnist_paper/train.log"):
    assert name in names, (name, sorted(names))
  assert "| mnist_paper_long | 3 |" in (out / "gpu_runs" / "report.md").read_text()


@pytest.mark.parametrize("keep_running", [False, True])
def test_a_chunk_stops_at_its_deadline_and_the_next_resumes(idx_dir, tmp_path,
                                                            keep_running):
  runs, out = tmp_path / "runs", tmp_path / "out"
  common = [f"--idx_dir={idx_dir}", f"--runs={runs}", f"--out={out}",
            "--only=dec_fc", "--decoder_epochs=6", *TINY]
  first = common + ["--deadline_seconds=3"] + (["--keep_running"] if keep_running else [])
  assert gpu_run.main(first) == 0
  workdir = runs / "dec_fc"
  if not keep_running:  # SIGTERMed at the deadline: nothing left running
    assert gpu_run.running_pid(workdir) is None
  assert gpu_run.main(common + ["--deadline_seconds=600"]) == 0
  steps = [r["step"] for r in _history(workdir)]
  assert steps == [7, 14, 21, 28, 35, 42]  # (256 - 25) // 32 = 7 per epoch
  starts = (workdir / "train.log").read_text().count("main.py --config=")
  # A detached run is found by the next call, not started twice.
  assert starts == (1 if keep_running else 2)
