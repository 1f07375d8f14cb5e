"""--mode=visualize on a tiny trained workdir: the figures exist and the
arrays behind them are what they claim."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from capsnet_jax import input_pipeline
from capsnet_jax import train
from capsnet_jax import trained
from capsnet_jax import visualize
from test_train import tiny_config

FIGURES = ("reconstructions", "rotation", "perturbation", "primary_caps",
           "confusion_matrix")


def _config(idx_dir):
  return tiny_config(idx_dir, visualize_rotation_step=90,
                     visualize_primary_steps=5, visualize_primary_examples=64,
                     visualize_num_images=4)


@pytest.fixture(name="visualized", scope="module")
def fixture_visualized(idx_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("vis"))
  config = _config(idx_dir)
  results = train.train_and_evaluate(config, workdir)
  summary = visualize.visualize(config, workdir)
  return workdir, config, results, summary


def test_figures_are_images(visualized):
  workdir = visualized[0]
  for name in FIGURES:
    with Image.open(os.path.join(workdir, "figures", f"{name}.png")) as im:
      assert im.format == "PNG" and min(im.size) > 100, (name, im.size)
  with Image.open(os.path.join(workdir, "figures", "rotation.gif")) as im:
    assert im.n_frames == 13  # -180 ... 180 in steps of 30


def test_rotation_at_zero_is_plain_test_accuracy(visualized):
  workdir, _, results, summary = visualized
  assert summary["rotation_angles"] == [-180, -90, 0, 90, 180]
  assert summary["rotation_accuracy"][2] == pytest.approx(results["test_accuracy"])
  assert summary["test_accuracy"] == pytest.approx(results["test_accuracy"])
  with open(os.path.join(workdir, "figures", "summary.json")) as f:
    assert json.load(f)["checkpoint_step"] == 8


def test_confusion_matrix_counts_every_test_image(visualized):
  workdir, _, results, summary = visualized
  with open(os.path.join(workdir, "figures", "confusion_matrix.json")) as f:
    matrix = np.array(json.load(f)["rows_true_columns_predicted"])
  assert matrix.shape == (10, 10) and matrix.sum() == summary["num_test"] == 100
  assert np.trace(matrix) / matrix.sum() == pytest.approx(results["test_accuracy"])


def test_rotate_is_exact_at_multiples_of_90_degrees():
  image = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1)
  np.testing.assert_array_equal(visualize.rotate(image, 0), image)
  np.testing.assert_array_equal(visualize.rotate(image, 90)[0, ..., 0],
                                np.rot90(image[0, ..., 0]))
  np.testing.assert_array_equal(visualize.rotate(image, -180)[0, ..., 0],
                                np.rot90(image[0, ..., 0], 2))


def test_arrays_behind_perturbation_and_primary_caps(visualized):
  workdir, config, _, summary = visualized
  _, test, _ = input_pipeline.load_datasets(config, 0, 1)
  model = trained.load(workdir, config=config, batch_size=8)
  out = model.predict_stored(test.images[:2])
  grid = visualize.perturbation_grid(model, out["class_caps"][0],
                                     int(out["predictions"][0]))
  assert grid.shape == (16, 11, 28, 28, 1)
  zero = list(visualize.PERTURBATION_OFFSETS).index(0.0)
  for d in range(16):  # offset 0 is the plain reconstruction
    np.testing.assert_allclose(grid[d, zero], out["reconstructions"][0], atol=1e-5)
  assert not np.allclose(grid[0, 0], grid[0, -1])
  # The primary decoder was cached by the first call and is reused.
  assert summary["primary_decoder_trained_now"]
  params, _ = visualize.train_primary_decoder(model, test.images[:16], 2, 8)
  coefficients = np.linspace(0, 1, 4)
  rows = visualize.primary_capsule_rows(model, params, test.images[0], 3,
                                        coefficients)
  assert rows["images"].shape == (3, 4, 28, 28, 1)
  # Recomputed from the model's outputs: the rows are the 3 capsules with the
  # longest coupling-weighted vectors towards the prediction, longest first,
  # and row r, column k decodes capsule r alone, scaled by coefficient k.
  one = model.predict_stored(test.images[:1], visualize.PRIMARY_KEYS)
  pred = int(one["predictions"][0])
  caps = one["primary_caps"][0]  # [144, 8]
  weighted = caps * one["coupling"][0, :, pred, None]
  norms = np.linalg.norm(weighted, axis=-1)
  assert rows["prediction"] == pred
  np.testing.assert_array_equal(rows["capsules"], np.argsort(-norms)[:3])
  assert np.all(np.diff(norms[rows["capsules"]]) <= 0)
  module = visualize.PrimaryDecoder((28, 28, 1))
  inputs = np.zeros((3, 4, *caps.shape), np.float32)
  for r, i in enumerate(rows["capsules"]):
    inputs[r, :, i] = coefficients[:, None] * caps[i]
  expected = np.asarray(module.apply({"params": params},
                                     inputs.reshape(12, *caps.shape)))
  np.testing.assert_allclose(rows["images"].reshape(12, 28, 28, 1), expected,
                             atol=1e-5)
  # Different capsules draw different images.
  assert not np.allclose(rows["images"][0, -1], rows["images"][1, -1],
                         atol=1e-3)
  np.testing.assert_allclose(rows["full"], np.asarray(module.apply(
      {"params": params}, weighted[None]))[0], atol=1e-5)
  again = visualize.visualize(config, workdir)
  assert not again["primary_decoder_trained_now"]
  assert again["rotation_accuracy"] == summary["rotation_accuracy"]
