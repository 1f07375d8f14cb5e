"""train_and_evaluate end to end through tfds (mock data) for every dataset and
setup, and the ensemble evaluation."""

import importlib
import json
import os

import numpy as np
import pytest

from capsnet_jax import ensemble
from capsnet_jax import train

tfds = pytest.importorskip("tensorflow_datasets")


@pytest.mark.parametrize("config_name,image_shape", [
    ("mnist", (28, 28, 1)),
    ("smallnorb", (32, 32, 1)),
    ("smallnorb_paper", (32, 32, 2)),
    ("cifar10", (32, 32, 3)),
    ("cifar10_paper", (24, 24, 3)),
])
def test_train_and_evaluate_through_tfds(config_name, image_shape, tmp_path):
  config = importlib.import_module(f"configs.{config_name}").get_config()
  config.model = "tiny"
  config.batch_size = 8
  config.num_train_steps = 3
  config.log_every_steps = 3
  config.num_summary_images = 2
  with tfds.testing.mock_data(num_examples=20):
    results = train.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / "results.json") as f:
    saved = json.load(f)
  assert saved["step"] == 3 and saved["dataset"] == config.dataset
  num_test = 40 if config_name == "smallnorb" else 20  # two cameras
  assert 0.0 <= saved["test_accuracy"] <= 1.0
  assert saved["test_accuracy"] * num_test == pytest.approx(
      round(saved["test_accuracy"] * num_test))  # a count over every example
  assert np.isfinite(results["test_reconstruction_loss"])
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["data_setup"] == config.data_setup
  del image_shape


def test_ensemble_predictions_average_lengths():
  a = np.array([[0.9, 0.1], [0.4, 0.5]])
  b = np.array([[0.2, 0.3], [0.8, 0.1]])
  mean, predictions = ensemble.ensemble_predictions([a, b])
  np.testing.assert_allclose(mean, [[0.55, 0.2], [0.6, 0.3]])
  np.testing.assert_array_equal(predictions, [0, 0])


def test_ensemble_of_two_tiny_models(idx_dir, tmp_path):
  from test_train import tiny_config  # pylint: disable=g-import-not-at-top
  members = []
  for seed in (0, 1):
    workdir = str(tmp_path / f"m{seed}")
    train.train_and_evaluate(tiny_config(idx_dir, seed=seed, num_train_steps=4),
                             workdir)
    members.append(workdir)
  config = tiny_config(idx_dir, ensemble_workdirs=",".join(members))
  out = str(tmp_path / "ensemble")
  os.makedirs(out)
  results = ensemble.evaluate_ensemble(config, out)
  # Recompute from each member's lengths: the accuracy of the mean lengths.
  from capsnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  _, test, _ = input_pipeline.load_datasets(config, 0, 1)
  lengths = [ensemble.test_lengths(ensemble.member_config(w, config), w,
                                   test.images) for w in members]
  expected = np.mean(np.argmax((lengths[0] + lengths[1]) / 2, -1) == test.labels)
  assert results["test_accuracy"] == pytest.approx(expected)
  assert results["num_models"] == 2
  for member, acc in zip(lengths, results["member_test_accuracies"]):
    assert acc == pytest.approx(np.mean(np.argmax(member, -1) == test.labels))
  with open(os.path.join(out, "ensemble_results.json")) as f:
    assert json.load(f)["test_accuracy"] == pytest.approx(expected)
