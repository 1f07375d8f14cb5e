"""What the terminal shows (capsnet_jax.training.progress, issue 41): the
quiet default, the progress display with and without a terminal, one line
per evaluation and the summary at the end.

In-process with an injected clock for the displays; three main.py runs for
what the command itself prints: a tiny training with standard error in a
pipe, one on a pseudo-terminal, and --mode=predict with --verbosity=1.
"""

import io
import json
import logging
import os
import re

from PIL import Image
import pytest

import conftest
from capsnet_jax import cli
from capsnet_jax.training import loop
from capsnet_jax.training import progress

PACKAGE = os.path.join(str(conftest.ROOT), "capsnet_jax")
# The limit for the smoke run's default output.
MAX_DEFAULT_LINES = 25


class FakeClock:

  def __init__(self):
    self.t = 0.0

  def __call__(self) -> float:
    return self.t


class FakeTerminal(io.StringIO):

  def isatty(self) -> bool:
    return True


def _record(path: str, level: int = logging.INFO, func: str = "f"
            ) -> logging.LogRecord:
  return logging.LogRecord("absl", level, path, 1, "message", None, None,
                           func=func)


# --------------------------------------------------------------------------
# The quiet default (a filter of its own, not the process's).


ORBAX = "/venv/site-packages/orbax/checkpoint/checkpoint_manager.py"
JAX_PROBE = "/venv/site-packages/jax/_src/xla_bridge.py"
OURS = os.path.join(PACKAGE, "training", "loop.py")
WRITER = os.path.join(PACKAGE, "workdir", "metric_logging.py")


def test_quiet_hides_the_libraries_info_and_keeps_ours_and_warnings():
  terminal = progress._TerminalFilter()  # pylint: disable=protected-access
  terminal.quiet = True
  assert not terminal.shown(_record(ORBAX))
  assert not terminal.shown(_record(JAX_PROBE))
  assert terminal.shown(_record(ORBAX, logging.WARNING))
  assert terminal.shown(_record(JAX_PROBE, logging.ERROR))
  assert terminal.shown(_record(OURS))
  # The writer's echo of the TensorBoard scalars and hyperparameters is
  # detail; its other lines are not.
  assert not terminal.shown(_record(WRITER, func="write_hparams"))
  assert not terminal.shown(_record(WRITER, func="write_scalars"))
  assert terminal.shown(_record(WRITER, func="create_writer"))


def test_only_process_0_shows_info_and_every_process_its_warnings():
  terminal = progress._TerminalFilter()  # pylint: disable=protected-access
  terminal.quiet, terminal.lead = True, False
  assert not terminal.shown(_record(OURS))
  assert terminal.shown(_record(OURS, logging.WARNING))


def test_verbosity_1_shows_everything():
  terminal = progress._TerminalFilter()  # pylint: disable=protected-access
  terminal.quiet = False
  assert terminal.shown(_record(ORBAX))
  assert terminal.shown(_record(WRITER, func="write_hparams"))


# --------------------------------------------------------------------------
# Numbers and words.


@pytest.mark.parametrize("seconds,text", [
    (None, "?"), (4.24, "4.2s"), (42, "42s"), (65, "1m05s"),
    (3725, "1h02m05s"), (90061, "1d01h01m")])
def test_duration(seconds, text):
  assert progress.duration(seconds) == text


def test_evaluations_left_and_the_eta_of_the_whole_run():
  # Evaluations every 50 steps of 120: at 50, 100 and the end.
  assert progress.evaluations_left(0, 120, 50) == 3
  assert progress.evaluations_left(100, 120, 50) == 1
  assert progress.evaluations_left(100, 100, 50) == 0
  assert progress.evaluations_left(60, 100, 50) == 1
  # 70 steps at 2 steps/s and 2 evaluations of 10 s.
  assert progress.eta_seconds(30, 100, 2.0, 50, 10.0) == 35.0 + 20.0
  assert progress.eta_seconds(30, 100, None, 50, 10.0) is None
  assert progress.eta_seconds(100, 100, 2.0, 50, 10.0) == 0.0


def test_the_line_of_an_evaluation():
  record = dict(step=200, epoch=2.0, test_accuracy=0.9912,
                test_margin_loss=0.012345, test_reconstruction_loss=23.4567,
                validation_accuracy=0.99)
  assert loop.evaluation_line(record, 0.9931, 100, 12.5) == (
      "step 200 (epoch 2.00): test accuracy 99.12% (best so far 99.31% at "
      "step 100), margin loss 0.01235, reconstruction loss 23.457, "
      "validation accuracy 99.00%; evaluated in 12s")
  assert "(the best so far)" in loop.evaluation_line(record, 0.9912, 200, 1)


def test_the_summary_names_results_figures_and_tensorboard():
  argv = ["main.py", "--config=configs/mnist.py:smoke", "--workdir=/tmp/s",
          "--config.idx_dir=../data", "--mode=train", "--config", "x.py"]
  results = dict(step=30, epoch=0.016, test_accuracy=0.7248,
                 best_test_accuracy=0.7248, best_step=30)
  assert cli.summary("train", "/tmp/s", results, 31.0, argv).splitlines() == [
      "Trained in 31s: step 30 (epoch 0.02), test accuracy 72.48% (best "
      "72.48% at step 30).",
      "  results:     /tmp/s/results.json",
      "  figures:     python main.py --config=configs/mnist.py:smoke "
      "--config.idx_dir=../data --config x.py --workdir=/tmp/s "
      "--mode=visualize",
      "  TensorBoard: tensorboard --logdir=/tmp/s"]
  assert cli.summary("train", "/tmp/s", {"step": 3, "preempted": True},
                     1.0, argv) is None
  assert cli.summary("eval", "w", results, 4.0, argv).startswith(
      "Evaluated in 4.0s: step 30")
  assert cli.command("eval", "w", ["/usr/bin/capsnet-jax", "--config=mnist"]
                     ) == "capsnet-jax --config=mnist --workdir=w --mode=eval"


# --------------------------------------------------------------------------
# The training display, with an injected clock.


def _metrics(step: int) -> dict[str, float]:
  return {"loss": step / 100, "accuracy": 0.5}


def test_plain_lines_every_interval_with_the_numbers_in_words():
  clock, lines = FakeClock(), []
  display = progress.TrainProgress(
      100, 0, 10, 32, 50, enabled=True, stream=io.StringIO(), now=clock,
      every_s=30, log=lambda fmt, *a: lines.append(fmt % a))
  assert not display.interactive
  for step in range(1, 31):  # one step a second
    clock.t = float(step)
    display.step(step, _metrics(step))
  # The first step's time is compilation's; the loss is that of the step
  # before the last one dispatched (the last finished one).
  assert lines == [
      "step 30/100 (30.0%), epoch 3.00, 32 images/s, train loss 0.29, "
      "train accuracy 50.0%; ETA 1m10s for the whole run"]
  # A long evaluation says how far it is every 30 s too.
  with display.evaluating("test", 4) as done:
    clock.t += 35.0
    done(2)
    clock.t += 1.0
    done(4)
  display.evaluation_done(36.0)
  assert lines[1:] == ["evaluating step 30 (test): 2/4 batches (50%), "
                       "17.5 s/batch"]
  for step in range(31, 61):
    clock.t += 1.0
    display.step(step, _metrics(step))
  # Still 1 step/s (the evaluation is not training time); 40 steps and the
  # evaluation at step 100 (36 s) to go.
  assert display.steps_per_second() == 1.0
  assert display.eta() == 40.0 + 36.0
  assert len(lines) == 3 and lines[2].startswith("step 31/100 (31.0%)")
  display.close()
  assert len(lines) == 3


def test_other_processes_show_nothing():
  clock, lines = FakeClock(), []
  display = progress.TrainProgress(
      100, 0, 10, 32, 50, enabled=False, stream=FakeTerminal(), now=clock,
      every_s=30, log=lambda fmt, *a: lines.append(fmt % a))
  for step in range(1, 101):
    clock.t = float(step)
    display.step(step, _metrics(step))
  display.close()
  assert lines == [] and display._stream.getvalue() == ""  # pylint: disable=protected-access


def test_a_terminal_gets_a_bar_redrawn_in_place():
  clock, stream = FakeClock(), FakeTerminal()
  display = progress.TrainProgress(8, 0, 4, 32, 4, enabled=True,
                                   stream=stream, now=clock)
  assert display.interactive
  for step in range(1, 9):
    clock.t = float(step)
    display.step(step, _metrics(step))
  display.close()
  frames = stream.getvalue().split("\r")
  shown = [f for f in frames if f.startswith("train:")]
  assert re.search(r"\| 0/8\b", shown[0]), shown[0]
  assert re.search(r"100%\|[█#]+\| 8/8, epoch 2\.00, 32 img/s, loss 0\.07, "
                   r"acc 50\.0%, ETA 0\.0s", shown[-1]), shown[-1]
  assert len(shown) >= 8  # redrawn at each step (REFRESH_S < 1 s)


# --------------------------------------------------------------------------
# main.py itself: the default output, a terminal, --verbosity=1.


@pytest.fixture(name="default_run", scope="module")
def fixture_default_run(idx_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("terminal") / "run"
  proc = conftest.run_main(*conftest.tiny_args(idx_dir, workdir))
  return workdir, proc


def test_default_output_is_short_and_ends_with_the_result(default_run):
  workdir, proc = default_run
  lines = proc.stderr.splitlines()
  assert proc.stdout == ""
  # Measured: 9 lines (2-core Intel Xeon).
  assert len(lines) <= MAX_DEFAULT_LINES, proc.stderr
  # One line per evaluation (at the end of epoch 1, step 7, and at step 8);
  # 100% on the synthetic digits (2-core Intel Xeon).
  evaluations = [l for l in lines if re.search(r"\] step \d+ \(epoch", l)]
  assert len(evaluations) == 2, proc.stderr
  assert re.search(r"step 8 \(epoch 1\.14\): test accuracy 100\.00% \(best "
                   r"so far 100\.00% at step 7\), margin loss [0-9.]+, "
                   r"reconstruction loss [0-9.]+, validation accuracy "
                   r"[0-9.]+%; evaluated in ", evaluations[1])
  assert lines[-4].endswith("test accuracy 100.00% (best 100.00% at step 7).")
  results, figures, tensorboard = lines[-3:]
  assert results == f"  results:     {workdir}/results.json"
  assert figures.startswith("  figures:     python ")
  assert figures.endswith(f"--config.learning_rate=0.003 --workdir={workdir} "
                          "--mode=visualize"), figures
  assert tensorboard == f"  TensorBoard: tensorboard --logdir={workdir}"
  for chatter in ("orbax", "checkpoint_manager", "Hyperparameters",
                  "Unable to initialize backend", "oneDNN", "train/loss"):
    assert chatter not in proc.stderr, chatter
  # The hyperparameters are in config.json and TensorBoard's HParams.
  with open(workdir / "config.json") as f:
    assert json.load(f)["learning_rate"] == 0.003
  events = b"".join(p.read_bytes() for p in workdir.glob("events.out.*"))
  assert b"_hparams_/session_start_info" in events
  assert b"routing_iterations" in events  # a field, not a scalar tag


def test_a_terminal_shows_a_progress_bar_that_updates(idx_dir, tmp_path):
  workdir = tmp_path / "run"
  proc = conftest.run_main(*conftest.tiny_args(idx_dir, workdir), tty=True)
  text = proc.stderr.replace("\r\n", "\n")
  frames = [f for line in text.split("\n") for f in line.split("\r")
            if f.startswith("train:")]
  counts = [re.search(r"\| (\d)/8", f).group(1) for f in frames]
  # Drawn at the start, redrawn as it goes, and left at 8/8.
  assert counts[0] == "0" and counts[-1] == "8", frames
  assert len(set(counts)) >= 2 and "█" in frames[-1], frames
  assert "ETA" in frames[-1] and "img/s" in frames[-1], frames[-1]
  assert any(l.startswith("evaluating step 8 (test):")
             for line in text.split("\n") for l in line.split("\r"))
  assert "orbax" not in text and "checkpoint_manager" not in text
  assert "test accuracy 100.00%" in text


def test_predict_with_verbosity_1_keeps_stdout_json(default_run, tmp_path):
  workdir, _ = default_run
  images, _ = conftest.synthetic_digits(2, seed=3)
  for i, image in enumerate(images):
    Image.fromarray(image).save(tmp_path / f"digit{i}.png")
  proc = conftest.run_main(
      *conftest.tiny_args(conftest.ROOT, workdir)[:2], "--mode=predict",
      f"--images={tmp_path}", "--verbosity=1", tty=True)
  lines = proc.stdout.splitlines()
  assert [json.loads(l)["image"] for l in lines] == [
      str(tmp_path / "digit0.png"), str(tmp_path / "digit1.png")]
  # --verbosity=1: the libraries' INFO lines are back (orbax restoring).
  assert "checkpoint_manager.py" in proc.stderr
  # The files' bar on the terminal, not on standard output.
  assert re.search(r"predict: 100%\|█+\| 2/2", proc.stderr), proc.stderr
