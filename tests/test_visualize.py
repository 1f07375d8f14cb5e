"""--mode=visualize on a tiny trained workdir: the figures exist, the
summary agrees with training's evaluation, the primary decoder is cached.
The arrays' own tests: test_analysis.py; the drawing's: test_plots.py."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from capsnet_jax.data import input_pipeline
from capsnet_jax.training import train
from capsnet_jax.inference import trained
from capsnet_jax.analysis import visualize
from test_train import tiny_config

FIGURES = ("reconstructions", "rotation", "perturbation", "primary_caps",
           "confusion_matrix", "misclassified")


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


def test_misclassified_lists_every_error(visualized, tmp_path):
  workdir, config, _, summary = visualized
  with open(os.path.join(workdir, "figures", "misclassified.json")) as f:
    listed = json.load(f)
  assert listed["num_test"] == summary["num_test"] == 100
  assert len(listed["errors"]) == summary["num_misclassified"] == (
      100 - summary["confusion_trace"])
  # This tiny run classifies most of its test digits right: with every third
  # label moved on by one, those 34 are misclassified too, as predicted.
  model = trained.load(workdir, config=config)
  _, test, _ = input_pipeline.load_datasets(config, 0, 1)
  predictions = model.predict_stored(test.images, ("predictions",))["predictions"]
  labels = test.labels.copy()
  labels[::3] = (labels[::3] + 1) % 10
  wrong = set(np.flatnonzero(predictions != labels).tolist())
  assert wrong >= set(range(0, 100, 3))
  ctx = visualize.Context(config=config, model=model, train=test,
                          test=input_pipeline.Split(test.images, labels),
                          out_dir=str(tmp_path))
  arrays = visualize.misclassified_figure(ctx, str(tmp_path / "m.png"))
  with open(tmp_path / "misclassified.json") as f:
    errors = json.load(f)["errors"]
  assert {e["index"] for e in errors} == wrong and len(errors) == len(wrong)
  for e in errors:
    assert (e["label"], e["prediction"]) == (labels[e["index"]],
                                              predictions[e["index"]])
  margins = [e["predicted_length"] - e["true_length"] for e in errors]
  assert min(margins) > 0 and margins == sorted(margins, reverse=True)
  shown = arrays["shown"]
  assert len(shown["index"]) == min(len(wrong), visualize.MISCLASSIFIED_SHOWN)
  assert shown["predicted_recons"].shape == (len(shown["index"]), 28, 28, 1)
  with Image.open(tmp_path / "m.png") as im:
    assert im.size[0] > 800 and im.size[1] > 3 * 28 * (len(wrong) // 10)


def test_primary_decoder_is_cached(visualized):
  workdir, config, _, summary = visualized
  assert summary["primary_decoder_trained_now"]
  cache = os.path.join(workdir, "figures", visualize.PRIMARY_DECODER_FILE)
  assert os.path.getsize(cache) > 1000
  again, arrays = visualize.make_figures(config, workdir)
  assert not again["primary_decoder_trained_now"]
  assert not arrays["primary_caps"]["trained_now"]
  assert again["rotation_accuracy"] == summary["rotation_accuracy"]
  # The arrays behind the figures: the sweep of the summary, 8 rows of 8
  # coefficients, 16 x 11 decodings for each of the first 3 test images.
  np.testing.assert_array_equal(arrays["rotation"]["sweep"]["accuracy"],
                                summary["rotation_accuracy"])
  assert arrays["primary_caps"]["images"].shape == (8, 8, 28, 28, 1)
  assert arrays["perturbation"]["grids"].shape == (3, 16, 11, 28, 28, 1)
  np.testing.assert_array_equal(arrays["perturbation"]["capsules"],
                                arrays["reconstructions"]["predictions"][:3])
