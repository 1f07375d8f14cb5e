"""Reliability through the command line: SIGKILL and resume, preemption,
the non-finite guard, half-written checkpoints, and a clear error (exit
status, message, no traceback, nothing written) for every bad input."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from capsnet_jax.workdir import checkpoints
from capsnet_jax.workdir import park
from capsnet_jax.training import train
from conftest import make_idx_dir, subprocess_env, write_idx
from configs import default

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _env(devices: int = 1) -> dict[str, str]:
  return subprocess_env(devices=devices)


def _args(idx_dir, workdir, *extra):
  return [sys.executable, str(ROOT / "main.py"), "--config=configs/mnist.py",
          f"--workdir={workdir}", "--config.model=tiny",
          f"--config.idx_dir={idx_dir}", "--config.batch_size=16",
          "--config.num_summary_images=2", *extra]


def _run(args, devices: int = 1, timeout: int = 600):
  return subprocess.run(args, env=_env(devices), cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout)


def _snapshot(path) -> dict[str, tuple[int, int]] | None:
  """{relative path: (size, mtime_ns)} of every file under path; None if absent."""
  path = pathlib.Path(path)
  if not path.exists():
    return None
  return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
          for p in path.rglob("*")}


def _params(workdir):
  config = default.get_config()
  config.model = "tiny"
  from capsnet_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  info = input_pipeline.dataset_info("mnist")
  _, state = train.setup_model_and_state(config, info, train.make_mesh())
  ckpt = checkpoints.Checkpointer(str(workdir), create=False)
  state = ckpt.restore(state)
  ckpt.close()
  return state


def _steps(workdir) -> list[int]:
  d = pathlib.Path(checkpoints.checkpoint_dir(str(workdir)))
  if not d.is_dir():
    return []
  return sorted(int(p.name) for p in d.iterdir()
                if p.name.isdigit() and (p / "_CHECKPOINT_METADATA").exists())


def _start_and_wait(args, workdir, min_step: int, timeout: float = 300):
  """Starts main.py and returns it once a checkpoint >= min_step exists."""
  proc = subprocess.Popen(args, env=_env(), cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + timeout
  while time.time() < deadline:
    if any(s >= min_step for s in _steps(workdir)):
      return proc
    if proc.poll() is not None:
      raise AssertionError("finished before the signal:\n" + proc.stderr.read()[-3000:])
    time.sleep(0.2)
  proc.kill()
  raise AssertionError("no checkpoint in time")


LONG = ("--config.num_train_steps=120", "--config.checkpoint_every_steps=5",
        "--config.log_every_steps=5", "--config.eval_every_steps=60")


def test_sigkill_then_resume_equals_uninterrupted_run(idx_dir, tmp_path):
  killed, straight = tmp_path / "killed", tmp_path / "straight"
  proc = _start_and_wait(_args(idx_dir, killed, *LONG), killed, min_step=10)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert proc.returncode == -signal.SIGKILL
  at_kill = max(_steps(killed))
  assert at_kill < 120
  # The same run parked and brought back in another workdir (as on another
  # machine) resumes to the same parameters too.
  moved = tmp_path / "moved"
  assert park.save(str(killed), str(tmp_path / "parked"))["step"] == at_kill
  park.restore(str(tmp_path / "parked"), str(moved))
  resumed = _run(_args(idx_dir, moved, *LONG))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"Resumed from the checkpoint at step {at_kill}" in resumed.stderr
  resumed = _run(_args(idx_dir, killed, *LONG))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Resumed from the checkpoint at step" in resumed.stderr
  full = _run(_args(idx_dir, straight, *LONG))
  assert full.returncode == 0, full.stderr[-3000:]
  b = _params(straight)
  for a in (_params(killed), _params(moved)):
    assert int(a.step) == int(b.step) == 120
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5,
                                 atol=1e-6)
  with open(killed / "results.json") as f:
    assert json.load(f)["step"] == 120


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_preemption_saves_and_exits_cleanly(idx_dir, tmp_path, sig):
  workdir = tmp_path / "w"
  args = _args(idx_dir, workdir, "--config.num_train_steps=100000",
               "--config.checkpoint_every_steps=5", "--config.log_every_steps=5",
               "--config.eval_every_steps=100000")
  proc = _start_and_wait(args, workdir, min_step=5)
  proc.send_signal(sig)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 0, stderr[-3000:]
  assert "Traceback" not in stderr
  assert f"Received {sig.name}: saved a checkpoint at step" in stderr
  step = int(stderr.split("saved a checkpoint at step ")[1].split(";")[0])
  assert max(_steps(workdir)) == step >= 5
  assert int(_params(workdir).step) == step


def test_non_finite_loss_stops_with_last_good_checkpoint(idx_dir, tmp_path):
  workdir = tmp_path / "w"
  out = _run(_args(idx_dir, workdir, "--config.num_train_steps=30",
                   "--config.inject_nan_at_step=7",
                   "--config.checkpoint_every_steps=2",
                   "--config.log_every_steps=4"))
  assert out.returncode == 1
  assert "error: non-finite loss (nan) at step 7" in out.stderr
  assert "Traceback" not in out.stderr
  assert _steps(workdir) == [2, 4, 6]  # keep_checkpoints=3, none after step 7
  state = _params(workdir)
  assert int(state.step) == 6
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))
  assert not (workdir / "results.json").exists()


def test_half_written_checkpoint_is_ignored(idx_dir, tmp_path):
  workdir = tmp_path / "w"
  out = _run(_args(idx_dir, workdir, "--config.num_train_steps=4",
                   "--config.checkpoint_every_steps=2"))
  assert out.returncode == 0, out.stderr[-3000:]
  ckpt_dir = pathlib.Path(checkpoints.checkpoint_dir(str(workdir)))
  # What a save killed midway leaves: orbax writes into a temporary
  # directory and renames it only when complete.
  partial = ckpt_dir / "6.orbax-checkpoint-tmp-1234567890"
  (partial / "default").mkdir(parents=True)
  (partial / "default" / "garbage").write_bytes(b"\0" * 100)
  manager = checkpoints.Checkpointer(str(workdir), create=False)
  assert manager.latest_step() == 4
  manager.close()
  assert int(_params(workdir).step) == 4
  resumed = _run(_args(idx_dir, workdir, "--config.num_train_steps=6",
                       "--config.checkpoint_every_steps=2"))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Resumed from the checkpoint at step 4" in resumed.stderr


def test_workdir_of_another_config_is_refused(idx_dir, tmp_path):
  workdir = tmp_path / "w"
  out = _run(_args(idx_dir, workdir, "--config.num_train_steps=2"))
  assert out.returncode == 0, out.stderr[-3000:]
  before = _snapshot(workdir)
  out = _run(_args(idx_dir, workdir, "--config.num_train_steps=4",
                   "--config.decoder=deconv"))
  assert out.returncode == 1
  assert "holds a run of a different configuration" in out.stderr
  assert "decoder: 'fc' there, 'deconv' now" in out.stderr
  assert "delete this one to start fresh" in out.stderr
  assert "Traceback" not in out.stderr
  assert _snapshot(workdir) == before


def _damaged_idx(tmp_path, damage):
  d = make_idx_dir(tmp_path / "idx", n_train=16, n_test=8)
  if damage == "missing_file":
    (d / "train-labels-idx1-ubyte.gz").unlink()
  elif damage == "magic":
    (d / "train-images-idx3-ubyte.gz").unlink()
    write_idx(d / "train-images-idx3-ubyte", np.zeros((16, 28, 28)), compress=False)
    data = bytearray((d / "train-images-idx3-ubyte").read_bytes())
    data[3] = 0x02
    (d / "train-images-idx3-ubyte").write_bytes(bytes(data))
  elif damage == "truncated":
    (d / "t10k-images-idx3-ubyte.gz").unlink()
    write_idx(d / "t10k-images-idx3-ubyte", np.zeros((8, 28, 28)), compress=False)
    data = (d / "t10k-images-idx3-ubyte").read_bytes()
    (d / "t10k-images-idx3-ubyte").write_bytes(data[:-100])
  elif damage == "count":
    write_idx(d / "train-labels-idx1-ubyte", np.zeros(15))
  elif damage == "size":
    write_idx(d / "t10k-images-idx3-ubyte", np.zeros((8, 32, 32)))
  return d


# (config overrides, expected message, idx damage, devices). Each rule of
# validate_config and its message is tested in process by test_validation;
# "dataset" and "devices" show such an error through the command line.
BAD_INPUTS = {
    "dataset": (["--config.dataset=mnits"], "Unknown dataset 'mnits'; valid: mnist, smallnorb, cifar10", None, 1),
    "mode": (["--mode=trian"], "error: flag --mode=trian: value should be one of", None, 1),
    "unknown_field": (["--config.FOO=1"], "error: unknown config field FOO", None, 1),
    "field_type": (["--config.batch_size=abc"], "error: flag --config.batch_size=abc: invalid literal", None, 1),
    "variant": (["--config=configs/mnist.py:bogus"], "Unknown configs/mnist.py variant 'bogus'; valid: paper", None, 1),
    "batch_too_large": (["--config.batch_size=512"], "batch_size=512 is larger than the 256 training examples", None, 1),
    "devices": (["--config.batch_size=3"], "batch_size=3 is not divisible by the 2 devices", None, 2),
    "missing_file": ([], "has no train-labels-idx1-ubyte or train-labels-idx1-ubyte.gz", "missing_file", 1),
    "magic": ([], "has magic number 0x00000802; expected 0x00000803", "magic", 1),
    "truncated": ([], "truncated or corrupt", "truncated", 1),
    "count": ([], "holds 16 images but", "count", 1),
    "size": ([], "holds 32x32 images; MNIST needs 28x28", "size", 1),
    "eval_no_checkpoint": (["--mode=eval"], "no checkpoint in", None, 1),
    "visualize_no_checkpoint": (["--mode=visualize"], "no checkpoint in", None, 1),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_a_clear_error_that_writes_nothing(idx_dir, tmp_path, case):
  overrides, message, damage, devices = BAD_INPUTS[case]
  data = _damaged_idx(tmp_path, damage) if damage else idx_dir
  workdir = tmp_path / "w"
  if case.endswith("no_checkpoint"):
    workdir.mkdir()  # an existing workdir without a run
  before = _snapshot(workdir)
  out = _run(_args(data, workdir, "--config.num_train_steps=2", *overrides),
             devices=devices)
  assert out.returncode != 0
  assert message in out.stderr, out.stderr[-2000:]
  assert "Traceback" not in out.stderr
  assert _snapshot(workdir) == before


def test_unwritable_workdir(idx_dir, tmp_path):
  if os.geteuid() == 0:  # root writes anywhere: make the path impossible instead
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    workdir = blocker / "w"
  else:
    parent = tmp_path / "ro"
    parent.mkdir(mode=0o500)
    workdir = parent / "w"
  out = _run(_args(idx_dir, workdir, "--config.num_train_steps=2"))
  assert out.returncode == 1
  assert f"workdir {str(workdir)!r} is not writable" in out.stderr
  assert "Traceback" not in out.stderr
  assert not workdir.exists()
