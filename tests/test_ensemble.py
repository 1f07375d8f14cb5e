"""Ensemble evaluation: the average of lengths, and --mode=ensemble from the
command line against an independent computation, with its errors.

The members: the session's tiny run (conftest.tiny_run, 100% of the 100
synthetic test digits) and a copy of it whose class capsules are rolled by
one class (its capsule j+1 is the run's capsule j: it predicts label + 1,
0%). Their average is right where the run's capsule y-1 is shorter than its
capsule y+1, so it agrees with neither member everywhere."""

import json

import jax
import numpy as np
import pytest

from capsnet_jax import errors
from capsnet_jax import experiment
from capsnet_jax.data import idx
from capsnet_jax.inference import ensemble
from capsnet_jax.inference import trained
from capsnet_jax.training import mesh as mesh_lib
from capsnet_jax.training import state as state_lib
from capsnet_jax.workdir import checkpoints
from configs import mnist
from conftest import run_main


def test_ensemble_predictions_average_lengths():
  a = np.array([[0.9, 0.1], [0.4, 0.5]])
  b = np.array([[0.2, 0.3], [0.8, 0.1]])
  mean, predictions = ensemble.ensemble_predictions([a, b])
  np.testing.assert_allclose(mean, [[0.55, 0.2], [0.6, 0.3]])
  np.testing.assert_array_equal(predictions, [0, 0])


def test_accuracy_one_and_two_labels():
  lengths = np.array([[0.9, 0.8, 0.1], [0.2, 0.3, 0.9], [0.5, 0.1, 0.6]])
  assert ensemble.accuracy(lengths, np.array([0, 2, 0])) == pytest.approx(2 / 3)
  # Two labels: the two longest capsules, in any order.
  assert ensemble.accuracy(lengths, np.array([[1, 0], [2, 0], [2, 0]])) == (
      pytest.approx(2 / 3))


@pytest.fixture(name="members", scope="module")
def fixture_members(tiny_run, tmp_path_factory):
  """[the tiny run, its copy with a step-9 checkpoint of rolled classes]."""
  rolled = tiny_run.copy(tmp_path_factory.mktemp("rolled") / "run")
  state = trained.load(str(rolled)).state
  params = jax.tree.map(np.asarray, state.params)
  caps = params["class_caps"]
  params["class_caps"] = dict(W=np.roll(caps["W"], 1, axis=1),
                              bias=np.roll(caps["bias"], 1, axis=0))
  ckpt = checkpoints.Checkpointer(str(rolled))
  ckpt.save(9, state.replace(step=jax.numpy.asarray(9, state.step.dtype),
                             params=params), {"test_accuracy": 0.0})
  ckpt.close()
  return [str(tiny_run.workdir), str(rolled)]


def _lengths_by_hand(workdir, config, images):
  """Class-capsule lengths [N, 10] of the latest checkpoint: restored with
  workdir.checkpoints and the flax module applied, without the ensemble,
  trained or the training loop's evaluation."""
  exp = experiment.resolve(config, "eval")
  ckpt = checkpoints.Checkpointer(workdir, create=False)
  state = ckpt.restore(state_lib.abstract(exp, mesh_lib.make_mesh()))
  ckpt.close()
  # The reference setup's MNIST input: torchvision's Normalize(0.1307, 0.3081).
  x = (images.astype(np.float32) / 255.0 - 0.1307) / 0.3081
  return np.asarray(exp.model.apply({"params": state.params}, x,
                                    train=False)["lengths"])


def test_ensemble_from_the_command_line(tiny_run, members, tmp_path):
  out = tmp_path / "ensemble"
  idx_dir = tiny_run.config.idx_dir
  result = run_main("--config=configs/mnist.py", f"--workdir={out}",
                    "--mode=ensemble", f"--config.idx_dir={idx_dir}",
                    f"--config.ensemble_workdirs={','.join(members)}",
                    devices=1)
  with open(out / "ensemble_results.json") as f:
    saved = json.load(f)
  assert json.loads(result.stdout.strip().splitlines()[-1]) == saved
  images, labels = idx.load_mnist_idx(str(idx_dir), "test")  # 100 images
  lengths = [_lengths_by_hand(w, tiny_run.config, images) for w in members]
  np.testing.assert_allclose(lengths[1], np.roll(lengths[0], 1, axis=1),
                             atol=1e-6)
  members_right = [np.argmax(l, -1) == labels for l in lengths]
  assert np.mean(members_right[0]) == 1.0 and np.mean(members_right[1]) == 0.0
  mean_predictions = np.argmax((lengths[0] + lengths[1]) / 2, -1)
  # The average decides differently from each member somewhere, so an
  # ensemble that used one member alone would not match.
  for l in lengths:
    assert np.any(mean_predictions != np.argmax(l, -1))
  mean_right = mean_predictions == labels
  assert saved["num_models"] == 2 and saved["num_test"] == 100
  assert saved["ensemble_workdirs"] == members
  assert saved["test_accuracy"] == pytest.approx(np.mean(mean_right))
  assert saved["member_test_accuracies"] == [1.0, 0.0]


def test_errors(tiny_run, members, tmp_path):
  """One-line errors (main.py prints "error: ..." and exits 2 for any
  UserError: test_errors.py), and no results file written."""
  out = tmp_path / "ensemble"
  empty = tmp_path / "empty"  # no config.json
  empty.mkdir()
  untrained = tmp_path / "untrained"  # config.json but no checkpoint
  untrained.mkdir()
  (untrained / "config.json").write_text(
      (tiny_run.workdir / "config.json").read_text())

  def config(workdirs):
    c = mnist.get_config()
    c.idx_dir, c.ensemble_workdirs = tiny_run.config.idx_dir, workdirs
    return c

  with pytest.raises(errors.ConfigError,
                     match="^--mode=ensemble needs --config.ensemble_workdirs="):
    ensemble.evaluate_ensemble(config(""), str(out))
  with pytest.raises(errors.WorkdirError,
                     match=f"^ensemble member '{empty}' has no config.json; is "
                           "it a trained workdir\\?$"):
    ensemble.evaluate_ensemble(config(f"{members[0]},{empty}"), str(out))
  with pytest.raises(errors.WorkdirError,
                     match=f"^ensemble member '{untrained}': no checkpoint in "
                           f"'{untrained}'"):
    ensemble.evaluate_ensemble(config(f"{untrained},{members[0]}"), str(out))
  assert not out.exists()
