"""Ensemble evaluation: the average of lengths, and --mode=ensemble from the
command line against an independent computation, with its errors."""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from capsnet_jax.workdir import checkpoints
from capsnet_jax.inference import ensemble
from capsnet_jax.data import idx
from capsnet_jax.model import models
from capsnet_jax.training import train
from test_train import tiny_config
from conftest import subprocess_env

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_ensemble_predictions_average_lengths():
  a = np.array([[0.9, 0.1], [0.4, 0.5]])
  b = np.array([[0.2, 0.3], [0.8, 0.1]])
  mean, predictions = ensemble.ensemble_predictions([a, b])
  np.testing.assert_allclose(mean, [[0.55, 0.2], [0.6, 0.3]])
  np.testing.assert_array_equal(predictions, [0, 0])


@pytest.fixture(name="members", scope="module")
def fixture_members(idx_dir, tmp_path_factory):
  """Two tiny models (seeds 0 and 1), 4 steps each. XLA's convolutions:
  this module's tests took 45 s with them, 60 s with the CPU default (2-core
  AMD EPYC, the suite's optimisation level 0)."""
  members = []
  for seed in (0, 1):
    workdir = str(tmp_path_factory.mktemp(f"member{seed}"))
    config = tiny_config(idx_dir, seed=seed, num_train_steps=4,
                         conv_impl="xla")
    members.append((workdir, config, train.train_and_evaluate(config, workdir)))
  return members


def _lengths_by_hand(workdir, config, images):
  """Class-capsule lengths [N, 10]: the checkpoint restored with
  capsnet_jax.workdir.checkpoints and the flax module applied, without the
  ensemble, trained or train's evaluation code."""
  model = models.create_model(config, (28, 28, 1), 10)
  abstract = jax.eval_shape(lambda: train.create_train_state(
      config, model, jax.random.key(0)))
  ckpt = checkpoints.Checkpointer(workdir, create=False)
  state = ckpt.restore(abstract)
  ckpt.close()
  assert int(state.step) == 4
  # The reference setup's MNIST input: torchvision's Normalize(0.1307, 0.3081).
  x = (images.astype(np.float32) / 255.0 - 0.1307) / 0.3081
  return np.asarray(model.apply({"params": state.params}, x)["lengths"])


def _main(idx_dir, workdir, *extra):
  env = subprocess_env(devices=1)
  return subprocess.run(
      [sys.executable, str(ROOT / "main.py"), "--config=configs/mnist.py",
       f"--workdir={workdir}", "--mode=ensemble",
       f"--config.idx_dir={idx_dir}", *extra],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_ensemble_from_the_command_line(idx_dir, members, tmp_path):
  out = tmp_path / "ensemble"
  workdirs = ",".join(w for w, _, _ in members)
  result = _main(idx_dir, out, f"--config.ensemble_workdirs={workdirs}")
  assert result.returncode == 0, result.stderr[-3000:]
  with open(out / "ensemble_results.json") as f:
    saved = json.load(f)
  assert json.loads(result.stdout.strip().splitlines()[-1]) == saved
  images, labels = idx.load_mnist_idx(str(idx_dir), "test")  # 100 images
  lengths = [_lengths_by_hand(w, c, images) for w, c, _ in members]
  mean_predictions = np.argmax((lengths[0] + lengths[1]) / 2, -1)
  # The average decides differently from each member somewhere, so an
  # ensemble that used one member alone would not match.
  for l in lengths:
    assert np.any(mean_predictions != np.argmax(l, -1))
  members_right = [np.argmax(l, -1) == labels for l in lengths]
  mean_right = mean_predictions == labels
  assert saved["num_models"] == 2 and saved["num_test"] == 100
  assert saved["ensemble_workdirs"] == [w for w, _, _ in members]
  assert saved["test_accuracy"] == pytest.approx(np.mean(mean_right))
  for (_, _, results), right, acc in zip(members, members_right,
                                         saved["member_test_accuracies"]):
    assert acc == pytest.approx(np.mean(right))
    assert acc == pytest.approx(results["test_accuracy"])  # training's figure


def test_command_line_errors(idx_dir, members, tmp_path):
  out = tmp_path / "ensemble"
  empty = tmp_path / "empty"  # no config.json
  empty.mkdir()
  untrained = tmp_path / "untrained"  # config.json but no checkpoint
  untrained.mkdir()
  (untrained / "config.json").write_text(
      (pathlib.Path(members[0][0]) / "config.json").read_text())
  cases = [
      ([], "error: --mode=ensemble needs --config.ensemble_workdirs="),
      ([f"--config.ensemble_workdirs={members[0][0]},{empty}"],
       f"error: ensemble member {str(empty)!r} has no config.json; is it a "
       "trained workdir?"),
      ([f"--config.ensemble_workdirs={untrained},{members[0][0]}"],
       f"error: ensemble member {str(untrained)!r}: no checkpoint in "
       f"{str(untrained)!r}"),
  ]
  for extra, message in cases:
    result = _main(idx_dir, out, *extra)
    assert result.returncode == 1, result.stderr[-3000:]
    assert message in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not (out / "ensemble_results.json").exists()
