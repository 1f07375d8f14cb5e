"""train_and_evaluate end to end through tfds (mock data) for every dataset and
setup, and the ensemble evaluation."""

import importlib
import json
import os

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from capsnet_jax import datasets
from capsnet_jax import ensemble
from capsnet_jax import input_pipeline
from capsnet_jax import train
from configs import default


@pytest.mark.parametrize("config_name,image_shape", [
    ("mnist", (28, 28, 1)),
    ("smallnorb", (32, 32, 1)),
    ("smallnorb_paper", (32, 32, 2)),
    ("cifar10", (32, 32, 3)),
    ("cifar10_paper", (24, 24, 3)),
])
def test_train_and_evaluate_through_tfds(config_name, image_shape, tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
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


# --------------------------------------------------------------------------
# The registry.


@pytest.mark.parametrize("dataset,setup,stored,model_input,classes", [
    ("mnist", "reference", (28, 28, 1), (28, 28, 1), 10),
    ("mnist", "paper", (28, 28, 1), (28, 28, 1), 10),
    ("smallnorb", "reference", (48, 48, 1), (32, 32, 1), 5),
    ("smallnorb", "paper", (48, 48, 2), (32, 32, 2), 5),
    ("cifar10", "reference", (32, 32, 3), (32, 32, 3), 10),
    ("cifar10", "paper", (32, 32, 3), (24, 24, 3), 10),
])
def test_every_spec_shapes_and_scaling(dataset, setup, stored, model_input,
                                       classes):
  spec = datasets.get(dataset, setup)
  assert spec.info.stored_shape == stored
  assert spec.info.image_shape == model_input
  assert spec.info.num_classes == len(spec.info.class_names) == classes
  raw = np.random.default_rng(0).integers(0, 256, (4, *stored)).astype(np.uint8)
  for x in (spec.train_fn(jnp.asarray(raw), jax.random.key(0)),
            spec.eval_fn(jnp.asarray(raw))):
    assert x.shape == (4, *model_input) and x.dtype == jnp.float32
    t = spec.target(x)
    assert float(t.min()) >= 0 and float(t.max()) <= 1


def test_reference_normalisation_constants():
  """The reference's torchvision Normalize: MNIST (0.1307, 0.3081),
  smallNORB (0, 0.3081), CIFAR10 (0, 0.5)."""
  ones = jnp.full((1, 48, 48, 1), 255, jnp.uint8)
  zeros = jnp.zeros((1, 28, 28, 1), jnp.uint8)
  mnist = datasets.get("mnist", "reference").eval_fn
  np.testing.assert_allclose(mnist(zeros), -0.1307 / 0.3081, rtol=1e-6)
  np.testing.assert_allclose(mnist(zeros + 255), 0.8693 / 0.3081, rtol=1e-6)
  np.testing.assert_allclose(datasets.get("smallnorb", "reference").eval_fn(ones),
                             1 / 0.3081, rtol=1e-6)
  np.testing.assert_allclose(datasets.get("cifar10", "reference").eval_fn(
      jnp.full((1, 32, 32, 3), 51, jnp.uint8)), 0.4, rtol=1e-6)
  # The paper's MNIST input is the [0, 1] image.
  np.testing.assert_allclose(datasets.get("mnist", "paper").eval_fn(
      jnp.full((1, 28, 28, 1), 51, jnp.uint8)), 0.2, rtol=1e-6)


def test_batch_minmax_target_is_the_image_for_mnist_and_ignores_padding():
  raw = np.zeros((3, 28, 28, 1), np.uint8)
  raw[0, 5, 5] = 255
  raw[1, 6, 6] = 102
  spec = datasets.get("mnist", "reference")
  x = spec.eval_fn(jnp.asarray(raw))
  np.testing.assert_allclose(spec.target(x), raw / 255.0, atol=1e-6)
  # Over the real examples only: with the bright image masked out, the
  # 102-pixel becomes the maximum.
  t = spec.target(x, jnp.array([0.0, 1.0, 1.0]))
  assert float(t[1, 6, 6, 0]) == pytest.approx(1.0)
  assert float(t[2].max()) == 0.0


def test_setup_defaults_and_overrides():
  config = default.get_config()
  config.dataset, config.data_setup = "mnist", "reference"
  assert datasets.resolve(config, "lr_schedule") == "constant"
  assert datasets.resolve(config, "validation_fraction") == 0.1
  config.data_setup = "paper"
  assert datasets.resolve(config, "lr_schedule") == "exponential"
  assert datasets.resolve(config, "validation_fraction") == 0.0
  config.lr_schedule, config.validation_fraction = "staircase", 0.2
  assert datasets.resolve(config, "lr_schedule") == "staircase"
  assert datasets.resolve(config, "validation_fraction") == 0.2
  with pytest.raises(ValueError, match="valid: mnist, smallnorb, cifar10"):
    datasets.get("mnits")


def test_holdout_is_fixed_disjoint_and_complete():
  images = np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1)
  split = input_pipeline.Split(images, np.arange(100, dtype=np.int32))
  train_a, val_a = input_pipeline.holdout(split, 0.1)
  train_b, val_b = input_pipeline.holdout(split, 0.1)
  assert len(val_a) == 10 and len(train_a) == 90
  np.testing.assert_array_equal(val_a.labels, val_b.labels)  # same every run
  assert sorted(np.concatenate([train_a.labels, val_a.labels])) == list(range(100))
  np.testing.assert_array_equal(val_a.images[:, 0, 0, 0], val_a.labels)
  assert input_pipeline.holdout(split, 0.0) == (split, None)


def test_reference_holds_out_a_tenth_of_mnist(idx_dir):
  config = default.get_config()
  config.idx_dir = str(idx_dir)  # 256 synthetic training images
  config.data_setup = "reference"
  splits = input_pipeline.load_splits(config, 0, 1)
  assert splits.info.num_validation == 25 and splits.info.num_train == 231
  assert len(splits.train) == 231 and len(splits.validation) == 25
  config.data_setup = "paper"
  splits = input_pipeline.load_splits(config, 0, 1)
  assert splits.validation is None and splits.info.num_train == 256
