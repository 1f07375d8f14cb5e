"""The evaluation history and the best accuracy through stops and resumes."""

import json
import signal
import subprocess
import time

import pytest

from capsnet_jax.workdir import history
from capsnet_jax.training import train
from test_reliability import _args, _env, ROOT
from test_train import tiny_config


def _lines(workdir):
  return [json.loads(l) for l in (workdir / "eval_history.jsonl").read_text().splitlines()]


def test_append_read_truncate_and_partial_lines(tmp_path):
  for step, acc in ((10, 0.5), (20, 0.7), (30, 0.6)):
    history.append(str(tmp_path), {"step": step, "test_accuracy": acc})
  assert history.best(history.read(str(tmp_path))) == (0.7, 20)
  # A crash mid-write leaves a cut line: reading skips it, the next append
  # starts on a new line, truncation drops it.
  with open(tmp_path / "eval_history.jsonl", "a") as f:
    f.write('{"step": 40, "test_acc')
  assert [r["step"] for r in history.read(str(tmp_path))] == [10, 20, 30]
  history.append(str(tmp_path), {"step": 40, "test_accuracy": 0.9})
  assert [r["step"] for r in history.read(str(tmp_path))] == [10, 20, 30, 40]
  assert history.truncate_after(str(tmp_path), 20) == 2
  text = (tmp_path / "eval_history.jsonl").read_text()
  assert [json.loads(l)["step"] for l in text.splitlines()] == [10, 20]


def test_clock_continues_and_excludes_evaluation():
  """train._Clock with an injected clock: wall_seconds continues from the
  previous session's last record; train_seconds restarts after each
  evaluation."""
  now = [50.0]
  clock = train._Clock(120.0, start=40.0, now=lambda: now[0])  # pylint: disable=protected-access
  assert clock.wall_seconds() == 130.0  # 120 before + 10 since this start
  assert clock.train_seconds() == 10.0
  now[0] = 53.0  # an evaluation of 3 s, then training restarts
  clock.restart_training()
  now[0] = 60.0
  assert clock.train_seconds() == 7.0
  assert clock.wall_seconds() == 140.0


def test_records_carry_what_the_tables_need(idx_dir, tmp_path):
  config = tiny_config(idx_dir, num_train_steps=16, eval_every_steps=8,
                       validation_fraction=0.25)
  results = train.train_and_evaluate(config, str(tmp_path))
  records = _lines(tmp_path)
  assert [r["step"] for r in records] == [8, 16]
  # 256 synthetic images, 64 held out: 192 // 32 = 6 steps per epoch.
  assert [r["epoch"] for r in records] == [pytest.approx(8 / 6, abs=1e-4),
                                           pytest.approx(16 / 6, abs=1e-4)]
  assert results["num_train"] == 192 and results["num_validation"] == 64
  for r in records:
    for key in ("test_accuracy", "test_margin_loss", "test_reconstruction_loss",
                "validation_accuracy", "learning_rate", "alpha",
                "wall_seconds", "train_seconds", "time"):
      assert key in r, key
    assert r["source"] == "train"
    # Ordering only: the durations themselves are test_clock_*'s subject.
    assert 0 <= r["train_seconds"] <= r["wall_seconds"]
  assert records[1]["wall_seconds"] >= records[0]["wall_seconds"]
  assert results["test_accuracy"] == records[-1]["test_accuracy"]
  assert results["best_test_accuracy"] == max(r["test_accuracy"] for r in records)
  # --mode=eval appends its own record and keeps the best over all.
  evaluated = train.evaluate_checkpoint(config, str(tmp_path))
  records = _lines(tmp_path)
  assert [(r["step"], r["source"]) for r in records] == [
      (8, "train"), (16, "train"), (16, "eval")]
  assert records[2]["test_accuracy"] == pytest.approx(records[1]["test_accuracy"])
  assert evaluated["best_test_accuracy"] == max(r["test_accuracy"] for r in records)


def test_resume_drops_evaluations_whose_checkpoint_never_completed(idx_dir, tmp_path):
  """A kill between an evaluation's line and its checkpoint: the resumed run
  redoes that evaluation and the history holds it once."""
  config = tiny_config(idx_dir, num_train_steps=8, eval_every_steps=4)
  train.train_and_evaluate(config, str(tmp_path))
  history.append(str(tmp_path), {"step": 12, "test_accuracy": 1.0,
                                 "source": "train", "orphan": True})
  results = train.train_and_evaluate(tiny_config(
      idx_dir, num_train_steps=12, eval_every_steps=4),
      str(tmp_path))
  records = _lines(tmp_path)
  assert [r["step"] for r in records] == [4, 8, 12]
  assert not any(r.get("orphan") for r in records)
  assert results["best_test_accuracy"] == max(r["test_accuracy"] for r in records)
  # The wall clock continues from the last record of the earlier session
  # (test_clock_continues_and_excludes_evaluation shows how).
  assert records[2]["wall_seconds"] >= records[1]["wall_seconds"]


def test_sigterm_after_an_evaluation_then_resume(idx_dir, tmp_path):
  workdir = tmp_path / "w"
  args = _args(idx_dir, workdir, "--config.num_train_steps=60",
               "--config.eval_every_steps=10", "--config.log_every_steps=5",
               "--config.checkpoint_every_steps=10")
  proc = subprocess.Popen(args, env=_env(), cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  hist = workdir / "eval_history.jsonl"
  while not (hist.exists() and hist.read_text().count("\n") >= 1):
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    time.sleep(0.05)  # polling only; nothing asserts on time
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr[-3000:]
  assert "Received SIGTERM" in stderr
  stopped = _lines(workdir)
  assert stopped and stopped[-1]["step"] < 60
  assert not (workdir / "results.json").exists()
  resumed = subprocess.run(args, env=_env(), cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  records = _lines(workdir)
  assert [r["step"] for r in records] == [10, 20, 30, 40, 50, 60]
  assert records[:len(stopped)] == stopped  # the earlier lines untouched
  saved = json.loads((workdir / "results.json").read_text())
  assert saved["best_test_accuracy"] == max(r["test_accuracy"] for r in records)
  assert saved["best_step"] in [r["step"] for r in records
                                if r["test_accuracy"] == saved["best_test_accuracy"]]
  assert saved["step"] == 60 and saved["num_evaluations"] == 6
