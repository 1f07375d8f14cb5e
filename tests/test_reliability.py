"""Reliability: SIGKILL and resume, preemption (SIGTERM, SIGINT), the
non-finite guard, half-written checkpoints, and a clear error for each bad
input, which writes nothing.

The signals are sent by the training process itself at a chosen step (a
sitecustomize hook on the data iterator), not by a timer: the step each
test sees is the one it asks for. What the command line does (exit
statuses, the one-line "error: ..." of errors.UserError) goes through
main.py; the rest runs in this process on the tiny model's compiled steps.
The damaged IDX files of each kind: test_idx.py; every rule of
validate_config: test_validation.py.
"""

import logging
import os
import pathlib
import signal

import jax
import numpy as np
import pytest

from capsnet_jax import cli
from capsnet_jax import errors
from capsnet_jax.data import input_pipeline
from capsnet_jax.training import loop
from capsnet_jax.workdir import checkpoints
from capsnet_jax.workdir import history
import conftest

# Put first on a main.py subprocess's PYTHONPATH as sitecustomize.py (which
# Python imports at start-up): the process sends itself signal NAME when
# its training loop fetches the batch of step STEP (0-based: STEP steps
# are done), from CAPSNET_TEST_SIGNAL=NAME@STEP.
_SIGNAL_HOOK = """
import os, signal
from capsnet_jax.data import input_pipeline
_NAME, _STEP = os.environ["CAPSNET_TEST_SIGNAL"].split("@")
_train_batches = input_pipeline.train_batches

def train_batches(split, batch_size, seed, start_step=0, *args, **kwargs):
  batches = _train_batches(split, batch_size, seed, start_step, *args, **kwargs)
  for step, batch in enumerate(batches, start_step):
    if step == int(_STEP):
      os.kill(os.getpid(), getattr(signal, _NAME))
    yield batch

input_pipeline.train_batches = train_batches
"""


def _run_signalled(tmp_path, idx_dir, workdir, sig: signal.Signals, step: int,
                   expect: int, *extra: str):
  """main.py on the tiny model, sending itself ``sig`` at ``step``."""
  hook = tmp_path / "hook"
  hook.mkdir(exist_ok=True)
  (hook / "sitecustomize.py").write_text(_SIGNAL_HOOK)
  env = conftest.subprocess_env(devices=1,
                                pythonpath=f"{hook}{os.pathsep}{conftest.ROOT}")
  # No restart for huge pages (hostmem): start-up once, with the hook.
  env.update(CAPSNET_TEST_SIGNAL=f"{sig.name}@{step}",
             CAPSNET_JAX_HUGE_PAGES="0")
  return conftest.run_main(*conftest.tiny_args(idx_dir, workdir, *extra),
                           expect=expect, env=env)




def _assert_resumed_equals_tiny_run(workdir, tiny_run, results) -> None:
  """``workdir``'s run, resumed to step 8, ends where the uninterrupted
  tiny_run does: the same state, metrics and history."""
  conftest.assert_states_equal(
      conftest.restore_state(workdir, tiny_run.config),
      conftest.restore_state(tiny_run.workdir, tiny_run.config))
  for key in ("step", "test_accuracy", "test_margin_loss",
              "test_reconstruction_loss", "best_test_accuracy", "best_step",
              "num_evaluations"):
    assert results[key] == tiny_run.results[key], key
  ours, theirs = history.read(str(workdir)), history.read(str(tiny_run.workdir))
  assert [(r["step"], r["test_margin_loss"]) for r in ours] == [
      (r["step"], r["test_margin_loss"]) for r in theirs]


def _snapshot(path) -> dict[str, tuple[int, int]] | None:
  """{relative path: (size, mtime_ns)} of everything under path; None if
  it does not exist."""
  path = pathlib.Path(path)
  if not path.exists():
    return None
  return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
          for p in path.rglob("*")}


def _resumed_from(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records
          if r.getMessage().startswith("Resumed from the checkpoint")]


def test_sigkill_then_resume_equals_uninterrupted(idx_dir, tiny_run, tmp_path,
                                                  caplog):
  killed = tmp_path / "killed"
  # Killed while fetching step 5's batch, checkpoints every 2 steps: the
  # one of step 4 may still be on its way to the disk (orbax writes into a
  # temporary folder and renames it when complete), the one of step 2 is
  # complete.
  _run_signalled(tmp_path, idx_dir, killed, signal.SIGKILL, 5,
                 -signal.SIGKILL, "--config.checkpoint_every_steps=2")
  at_kill = checkpoints.latest_step(str(killed))
  assert at_kill in (2, 4)
  assert not (killed / "results.json").exists()
  # The same command again, here in this process: it resumes there and
  # ends as the uninterrupted run does.
  config = conftest.tiny_config(idx_dir, checkpoint_every_steps=2)
  with caplog.at_level(logging.INFO):
    results = loop.train_and_evaluate(config, str(killed))
  assert _resumed_from(caplog) == [
      f"Resumed from the checkpoint at step {at_kill}"]
  _assert_resumed_equals_tiny_run(killed, tiny_run, results)


def test_sigterm_saves_and_exits_cleanly_then_resumes(idx_dir, tiny_run,
                                                      tmp_path):
  workdir = tmp_path / "w"
  # SIGTERM while step 6's batch is fetched (no checkpoint is due then:
  # every 7 steps, at each evaluation): the step finishes, the loop saves
  # it and main.py exits with status 0.
  out = _run_signalled(tmp_path, idx_dir, workdir, signal.SIGTERM, 5, 0)
  assert ("Received SIGTERM: saved a checkpoint at step 6; rerun the same "
          "command to resume.") in out.stderr
  assert "Traceback" not in out.stderr
  assert checkpoints.latest_step(str(workdir)) == 6
  assert not (workdir / "results.json").exists()
  assert history.read(str(workdir)) == []  # the first evaluation is at 7
  results = loop.train_and_evaluate(tiny_run.config, str(workdir))
  _assert_resumed_equals_tiny_run(workdir, tiny_run, results)


def test_sigint_saves_and_returns(idx_dir, tmp_path, monkeypatch):
  """SIGINT (Ctrl-C) as SIGTERM, here in this process; the handler it
  found is put back (SIG_IGN where pytest runs in a background job)."""
  real = input_pipeline.train_batches
  before = signal.getsignal(signal.SIGINT)

  def batches(split, batch_size, seed, start_step, *args):
    for step, batch in enumerate(real(split, batch_size, seed, start_step,
                                      *args), start_step):
      if step == 2:
        # Never Ctrl-C pytest itself: only under the loop's handler.
        if signal.getsignal(signal.SIGINT) is before:
          raise AssertionError("the training loop has no SIGINT handler")
        signal.raise_signal(signal.SIGINT)
      yield batch

  monkeypatch.setattr(input_pipeline, "train_batches", batches)
  results = loop.train_and_evaluate(conftest.tiny_config(idx_dir),
                                    str(tmp_path))
  assert results == {"step": 3, "preempted": True}
  assert checkpoints.latest_step(str(tmp_path)) == 3
  assert signal.getsignal(signal.SIGINT) is before


def test_a_second_ctrl_c_stops_at_once(caplog):
  """The first SIGINT is a flag the loop polls (it saves, then exits); the
  second raises KeyboardInterrupt where the program is (main.py: exit 130).
  SIGTERM, a cluster's notice that may come again, stays a flag."""
  before = signal.getsignal(signal.SIGINT)
  with loop._Preemption() as preemption:  # pylint: disable=protected-access
    signal.raise_signal(signal.SIGTERM)
    signal.raise_signal(signal.SIGTERM)
    assert preemption.signal == "SIGTERM"
    preemption.signal = None
    signal.raise_signal(signal.SIGINT)
    assert preemption.signal == "SIGINT"
    assert "press Ctrl-C again to stop at once" in caplog.text
    with pytest.raises(KeyboardInterrupt):
      signal.raise_signal(signal.SIGINT)
  assert signal.getsignal(signal.SIGINT) is before


def test_non_finite_loss_stops_with_the_last_good_checkpoint(idx_dir,
                                                             tmp_path):
  # The loss is NaN at step 5 (the sixth); checkpoints every 2 steps.
  config = conftest.tiny_config(idx_dir, inject_nan_at_step=5,
                                checkpoint_every_steps=2)
  with pytest.raises(errors.NonFiniteLossError,
                     match=r"^non-finite loss or gradient \(loss nan\) at "
                     "step 5; training stopped and the last checkpoint was "
                     "left intact"):
    loop.train_and_evaluate(config, str(tmp_path))
  # The checkpoint due after the bad step (6) was never written.
  ckpt = checkpoints.Checkpointer(str(tmp_path), create=False)
  assert ckpt.all_steps() == [2, 4]
  ckpt.close()
  state = conftest.restore_state(tmp_path, config)
  assert int(state.step) == 4
  for leaf in jax.tree.leaves((state.params, state.opt_state)):
    assert np.all(np.isfinite(leaf))
  assert not (tmp_path / "results.json").exists()
  assert history.read(str(tmp_path)) == []


def test_half_written_checkpoint_is_ignored(idx_dir, tiny_run, tmp_path,
                                            caplog):
  workdir = tiny_run.copy(tmp_path / "w")  # checkpoints of steps 7 and 8
  # What a save killed midway leaves: orbax writes into a temporary folder
  # and renames it only when complete.
  partial = (workdir / "checkpoints" / "9.orbax-checkpoint-tmp-1234567890" /
             "default")
  partial.mkdir(parents=True)
  (partial / "garbage").write_bytes(b"\0" * 100)
  assert checkpoints.latest_step(str(workdir)) == 8
  with caplog.at_level(logging.INFO):
    results = loop.train_and_evaluate(
        conftest.tiny_config(idx_dir, num_train_steps=10), str(workdir))
  assert _resumed_from(caplog) == ["Resumed from the checkpoint at step 8"]
  assert results["step"] == 10
  assert [r["step"] for r in history.read(str(workdir))] == [7, 8, 10]


def test_workdir_of_another_config_is_refused(idx_dir, tiny_run, tmp_path):
  workdir = tiny_run.copy(tmp_path / "w")
  before = _snapshot(workdir)
  with pytest.raises(errors.WorkdirError) as e:
    loop.train_and_evaluate(conftest.tiny_config(idx_dir, decoder="deconv"),
                            str(workdir))
  assert str(e.value) == (
      f"workdir {str(workdir)!r} holds a run of a different configuration "
      "(decoder: 'fc' there, 'deconv' now). Use another --workdir, or "
      "delete this one to start fresh.")
  assert _snapshot(workdir) == before


# main.py's own errors: flags, config files and a UserError of the run
# (errors.EXIT_USER_ERROR, one line, nothing written). (extra flags, the
# message's start.)
CLI_ERRORS = {
    "mode": (["--mode=trian"], "error: flag --mode=trian: value should be "
             "one of <train|eval|summary|visualize|ensemble|predict"),
    "unknown_field": (["--config.FOO=1"], "error: unknown config field FOO"),
    "field_type": (["--config.batch_size=abc"],
                   "error: flag --config.batch_size=abc: invalid literal"),
    "variant": (["--config=configs/mnist.py:bogus"],
                "error: flag --config=configs/mnist.py:bogus: Error whilst "
                "parsing config file: ValueError: Unknown configs/mnist.py "
                "variant 'bogus'; valid: paper (the default), authors_full, "
                "reference, "
                "smoke"),
    "dataset": (["--config.dataset=mnits"],
                "error: Unknown dataset 'mnits'; valid: mnist, smallnorb, "
                "cifar10, multimnist"),
}


@pytest.mark.parametrize("case", sorted(CLI_ERRORS))
def test_main_reports_a_user_error_in_one_line(idx_dir, tmp_path, case):
  extra, message = CLI_ERRORS[case]
  workdir = tmp_path / "w"
  out = conftest.run_main(*conftest.tiny_args(idx_dir, workdir, *extra),
                          expect=errors.EXIT_USER_ERROR)
  lines = [l for l in out.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and lines[0].startswith(message), out.stderr[-2000:]
  assert "Traceback" not in out.stderr
  assert not workdir.exists()


def test_batch_larger_than_the_data_writes_nothing(idx_dir, tmp_path):
  workdir = tmp_path / "w"
  with pytest.raises(errors.ConfigError,
                     match="^batch_size=512 is larger than the 231 training "
                     "examples$"):
    loop.train_and_evaluate(conftest.tiny_config(idx_dir, batch_size=512),
                            str(workdir))
  assert not workdir.exists()


@pytest.mark.parametrize("mode", ["eval", "visualize"])
def test_a_workdir_without_a_checkpoint(idx_dir, tmp_path, mode):
  workdir = tmp_path / "w"
  workdir.mkdir()  # an existing workdir without a run
  with pytest.raises(errors.WorkdirError,
                     match=f"^no checkpoint in {str(workdir)!r}: train "
                     "first"):
    cli.run(mode, conftest.tiny_config(idx_dir), str(workdir))
  assert _snapshot(workdir) == {}


def test_unwritable_workdir(idx_dir, tmp_path):
  if os.geteuid() == 0:  # root writes anywhere: make the path impossible
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    workdir = blocker / "w"
  else:
    parent = tmp_path / "ro"
    parent.mkdir(mode=0o500)
    workdir = parent / "w"
  with pytest.raises(errors.WorkdirError,
                     match=f"^workdir {str(workdir)!r} cannot be created "):
    loop.train_and_evaluate(conftest.tiny_config(idx_dir), str(workdir))
  assert not workdir.exists()
