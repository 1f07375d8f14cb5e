"""train_and_evaluate end to end through tfds (mock data) for every dataset and
setup, and the dataset registry."""

import importlib
import json
import os

import conftest
import numpy as np
import pytest

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from capsnet_jax import experiment
from capsnet_jax.workdir import checkpoints
from capsnet_jax.data import datasets
from capsnet_jax.data import input_pipeline
from capsnet_jax.training import loop
from configs import default


def _checkpoint_shapes(workdir, step):
  """{path: shape} of the parameters saved at ``step``, read from the
  checkpoint's metadata (no model is built)."""
  path = os.path.join(checkpoints.checkpoint_dir(workdir), str(step), "default")
  tree = ocp.StandardCheckpointer().metadata(path).item_metadata["params"]
  return {"/".join(str(getattr(k, "key", k)) for k in keys): tuple(leaf.shape)
          for keys, leaf in jax.tree_util.tree_leaves_with_path(tree)}


_CONFIGS = [
    # Primary capsules of the tiny model (4 types unless the config sets
    # 64): VALID 9x9 conv1, then 9x9 stride 2: 28 -> 20 -> 6 (6x6x4 = 144),
    # 32 -> 24 -> 8 (8x8x4 = 256); SAME: 24 -> 24 -> 12 (12x12x64 = 9,216).
    ("mnist", (28, 28, 1), 144, 10),
    ("smallnorb", (32, 32, 1), 256, 5),
    ("smallnorb_paper", (32, 32, 2), 256, 5),
    ("cifar10", (32, 32, 3), 256, 10),
    ("cifar10_paper", (24, 24, 3), 9216, 10),
]


def _tiny(config_name):
  config = importlib.import_module(f"configs.{config_name}").get_config()
  config.model = "tiny"
  config.batch_size = 8
  config.num_train_steps = 3
  config.log_every_steps = 3
  config.num_summary_images = 2
  return config


@pytest.mark.parametrize("config_name,image_shape,num_primary,classes",
                         _CONFIGS)
def test_each_config_builds_its_model_for_its_data(config_name, image_shape,
                                                   num_primary, classes):
  """Each dataset's config, under tfds mock data: the model built for it
  reads the image's channels, its primary capsules follow from the height
  and width, and the decoder draws every pixel (shapes only, no training)."""
  tfds = conftest.require("tensorflow_datasets")
  exp = experiment.resolve(_tiny(config_name))
  with tfds.testing.mock_data(num_examples=20):
    splits = exp.load_splits(0, 1)
  assert splits.info.image_shape == image_shape
  assert splits.info.num_classes == classes
  assert exp.spec.preprocess(False)(splits.test.images[:2]).shape == (
      2, *image_shape)
  h, w, c = image_shape
  params = jax.eval_shape(
      lambda: exp.model.init(jax.random.key(0),
                             jnp.zeros((1, *image_shape)), train=False))["params"]
  shapes = {"/".join(str(getattr(k, "key", k)) for k in keys): tuple(leaf.shape)
            for keys, leaf in jax.tree_util.tree_leaves_with_path(params)}
  assert shapes["stem/conv/kernel"] == (9, 9, c, 8)
  assert shapes["class_caps/W"] == (num_primary, classes, 16, 8)
  assert shapes["decoder/out/kernel"] == (32, h * w * c)


def test_train_and_evaluate_through_tfds(tmp_path):
  """One whole run on data read by tfds (smallNORB: two cameras, resized,
  cropped), its checkpoint holding the model for its data."""
  tfds = conftest.require("tensorflow_datasets")
  config = _tiny("smallnorb")
  with tfds.testing.mock_data(num_examples=20):
    results = loop.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / "results.json") as f:
    saved = json.load(f)
  assert saved["step"] == 3 and saved["dataset"] == "smallnorb"
  # Mock data are random pixels and labels: the accuracy is a count over
  # every one of the 40 test examples (two cameras), nothing more.
  assert saved["test_accuracy"] * 40 == pytest.approx(
      round(saved["test_accuracy"] * 40))
  assert np.isfinite(results["test_reconstruction_loss"])
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["data_setup"] == config.data_setup
  shapes = _checkpoint_shapes(str(tmp_path), 3)
  assert shapes["stem/conv/kernel"] == (9, 9, 1, 8)
  assert shapes["class_caps/W"] == (256, 5, 16, 8)
  assert shapes["decoder/out/kernel"] == (32, 32 * 32)


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
  # The hold-out one process has used from the start (runs resume on it).
  assert val_a.labels.tolist() == [0, 14, 17, 33, 37, 40, 66, 69, 91, 98]


@pytest.mark.parametrize("copies", [1, 2])
def test_the_holdout_is_the_same_on_any_number_of_processes(copies):
  """Each process holds out its part of one fixed set of records, so a run
  resumed on another number of processes never trains on what it validated
  on; with copies (smallNORB's two cameras) both images of a record fall on
  the same side."""
  n = 1000
  records = np.arange(n, dtype=np.int32)

  def part(i, p):  # this process's records, each copy in a block
    mine = input_pipeline._shard(records, i, p)
    labels = np.concatenate([mine + c * n for c in range(copies)])
    return input_pipeline.Split(np.zeros((len(labels), 1, 1, 1), np.uint8),
                                labels)

  def held_out(p):
    train, val = [], []
    for i in range(p):
      t, v = input_pipeline.holdout(
          part(i, p), 0.1, input_pipeline.shard_offset(n, i, p), n, copies)
      train.append(t.labels)
      val.append(v.labels)
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))

  train_1, val_1 = held_out(1)
  assert len(val_1) == 100 * copies and len(train_1) == 900 * copies
  assert set(val_1 % n) == set(val_1[val_1 < n])  # the copies go together
  for p in (2, 3, 8):
    train_p, val_p = held_out(p)
    np.testing.assert_array_equal(val_p, val_1)
    np.testing.assert_array_equal(train_p, train_1)


def test_reference_holds_out_a_tenth_of_mnist(idx_dir):
  config = default.get_config()
  config.idx_dir = str(idx_dir)  # 256 synthetic training images
  config.data_setup = "reference"
  splits = experiment.resolve(config).load_splits(0, 1)
  assert splits.info.num_validation == 25 and splits.info.num_train == 231
  assert len(splits.train) == 231 and len(splits.validation) == 25
  config.data_setup = "paper"
  splits = experiment.resolve(config).load_splits(0, 1)
  assert splits.validation is None and splits.info.num_train == 256
