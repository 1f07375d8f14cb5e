"""--mode=visualize on a copy of the session's tiny run (conftest.tiny_run):
the figures exist, --config.checkpoint chooses the checkpoint, the summary
agrees with training's evaluation, the primary decoder is cached. The
arrays' own tests: test_analysis.py; the drawing's: test_plots.py."""

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from capsnet_jax import experiment
from capsnet_jax.analysis import visualize
from capsnet_jax.data import input_pipeline
from capsnet_jax.inference import export
from capsnet_jax.inference import trained
from capsnet_jax.workdir import checkpoints
from conftest import tiny_config

FIGURES = ("reconstructions", "rotation", "perturbation", "primary_caps",
           "confusion_matrix", "misclassified")


@pytest.fixture(name="visualized", scope="module")
def fixture_visualized(tiny_run, tmp_path_factory):
  """make_figures of step 8, the trained one, chosen by --config.checkpoint
  in a copy of the tiny run whose latest checkpoint (step 12) has every
  parameter zero."""
  workdir = str(tiny_run.copy(tmp_path_factory.mktemp("vis") / "run"))
  state = trained.load(workdir).state
  ckpt = checkpoints.Checkpointer(workdir)
  ckpt.save(12, state.replace(step=jax.numpy.asarray(12, state.step.dtype),
                              params=jax.tree.map(jax.numpy.zeros_like,
                                                  state.params)),
            {"test_accuracy": -1.0})
  ckpt.close()
  config = tiny_config(tiny_run.config.idx_dir, checkpoint="8",
                       visualize_rotation_step=90, visualize_primary_steps=5,
                       visualize_primary_examples=64, visualize_num_images=4)
  summary, arrays = visualize.make_figures(config, workdir)
  return workdir, config, summary, arrays


def test_an_example_past_the_test_set_is_refused_first(tiny_run):
  """Before the rotation sweep (minutes on a real test set), not an
  IndexError after it."""
  from capsnet_jax import errors  # pylint: disable=g-import-not-at-top
  config = tiny_config(tiny_run.config.idx_dir, visualize_example=100)
  with pytest.raises(errors.ConfigError, match=r"^visualize_example=100 is "
                     r"not a test image: the test set has 100 \(0 to 99\)$"):
    visualize.make_figures(config, str(tiny_run.workdir))


def test_figures_are_images(visualized):
  workdir = visualized[0]
  for name in FIGURES:
    with Image.open(os.path.join(workdir, "figures", f"{name}.png")) as im:
      assert im.format == "PNG" and min(im.size) > 100, (name, im.size)
  with Image.open(os.path.join(workdir, "figures", "rotation.gif")) as im:
    assert im.n_frames == 13  # -180 ... 180 in steps of 30


def test_the_configured_checkpoint(visualized, tiny_run):
  """--config.checkpoint=8: the trained step, not the latest (12)."""
  workdir, _, summary, _ = visualized
  assert trained.load(workdir).step == 12
  assert summary["checkpoint_step"] == 8
  with open(os.path.join(workdir, "figures", "summary.json")) as f:
    assert json.load(f)["checkpoint_step"] == 8
  # Step 8 classified every test digit right (step 12 would get 10% or so).
  assert tiny_run.results["test_accuracy"] == 1.0
  assert summary["test_accuracy"] == 1.0


def test_rotation_at_zero_is_plain_test_accuracy(visualized, tiny_run):
  _, _, summary, arrays = visualized
  assert summary["rotation_angles"] == [-180, -90, 0, 90, 180]
  assert summary["rotation_accuracy"][2] == tiny_run.results["test_accuracy"]
  assert summary["rotation_examples"] == 100
  np.testing.assert_array_equal(arrays["rotation"]["sweep"]["accuracy"],
                                summary["rotation_accuracy"])


def test_confusion_matrix_counts_every_test_image(visualized):
  workdir, _, summary, _ = visualized
  with open(os.path.join(workdir, "figures", "confusion_matrix.json")) as f:
    matrix = np.array(json.load(f)["rows_true_columns_predicted"])
  assert matrix.shape == (10, 10) and matrix.sum() == summary["num_test"] == 100
  assert np.trace(matrix) == summary["confusion_trace"] == 100


def test_misclassified_lists_every_error(visualized, tmp_path):
  workdir, config, summary, _ = visualized
  with open(os.path.join(workdir, "figures", "misclassified.json")) as f:
    listed = json.load(f)
  assert listed["num_test"] == summary["num_test"] == 100
  assert listed["errors"] == [] and summary["num_misclassified"] == 0
  # Every test digit is right: with every third label moved on by one,
  # those 34 are the misclassified ones.
  exp = experiment.resolve(config, "visualize")
  model = trained.load(workdir, which=8, config=exp)
  splits = exp.load_splits(0, 1)
  test = splits.test
  predictions = model.predict(test.images, ("predictions",)).predictions
  np.testing.assert_array_equal(predictions, test.labels)
  labels = test.labels.copy()
  labels[::3] = (labels[::3] + 1) % 10
  wrong = set(range(0, 100, 3))
  ctx = visualize.Context(config=exp.config, model=model, train=splits.train,
                          test=input_pipeline.Split(test.images, labels),
                          out_dir=str(tmp_path))
  arrays = visualize.misclassified_figure(ctx, str(tmp_path / "m.png"))
  with open(tmp_path / "misclassified.json") as f:
    errors = json.load(f)["errors"]
  assert {e["index"] for e in errors} == wrong and len(errors) == 34
  for e in errors:
    assert (e["label"], e["prediction"]) == (labels[e["index"]],
                                              predictions[e["index"]])
  margins = [e["predicted_length"] - e["true_length"] for e in errors]
  assert min(margins) > 0 and margins == sorted(margins, reverse=True)
  shown = arrays["shown"]
  assert len(shown["index"]) == min(34, visualize.MISCLASSIFIED_SHOWN)
  assert shown["predicted_recons"].shape == (len(shown["index"]), 28, 28, 1)
  with Image.open(tmp_path / "m.png") as im:
    assert im.size[0] > 800 and im.size[1] > 3 * 28 * (34 // 10)


def test_primary_decoder_is_cached(visualized):
  workdir, config, summary, arrays = visualized
  assert summary["primary_decoder_trained_now"]
  assert arrays["primary_caps"]["trained_now"]
  out_dir = os.path.join(workdir, "figures")
  assert os.path.getsize(os.path.join(
      out_dir, visualize.PRIMARY_DECODER_FILE)) > 1000
  # The figure again, from the cache: the same decoder draws the same rows.
  exp = experiment.resolve(config, "visualize")
  splits = exp.load_splits(0, 1)
  ctx = visualize.Context(config=exp.config,
                          model=trained.load(workdir, which=8, config=exp),
                          train=splits.train, test=splits.test,
                          out_dir=out_dir)
  again = visualize.primary_caps_figure(ctx, None)
  assert not again["trained_now"]
  np.testing.assert_array_equal(again["images"],
                                arrays["primary_caps"]["images"])
  # The arrays behind the figures: 8 rows of 8 coefficients, 16 x 11
  # decodings for each of the first 3 test images.
  assert arrays["primary_caps"]["images"].shape == (8, 8, 28, 28, 1)
  assert arrays["perturbation"]["grids"].shape == (3, 16, 11, 28, 28, 1)
  np.testing.assert_array_equal(arrays["perturbation"]["capsules"],
                                arrays["reconstructions"]["predictions"][:3])


def test_weights_without_a_decoder_skip_two_figures(tiny_run, tmp_path):
  """A bundle exported without the decoder (decoder_dtype="none"): visualize,
  into --out, skips reconstructions.png and perturbation.png and says why;
  the rotation strip shows the inputs alone."""
  export.export(str(tiny_run.workdir), "tiny", "best", str(tmp_path),
                decoder_dtype="none")
  config = tiny_config(tiny_run.config.idx_dir, visualize_rotation_step=180,
                       visualize_primary_steps=1, visualize_primary_examples=8,
                       visualize_num_images=2)
  out = tmp_path / "figures"
  summary, arrays = visualize.make_figures(config, str(tmp_path / "tiny"),
                                           out=str(out))
  assert summary["skipped"] == {
      "reconstructions.png": visualize.NO_DECODER_SKIPPED["reconstructions"],
      "perturbation.png": visualize.NO_DECODER_SKIPPED["perturbation"]}
  assert sorted(p for p in os.listdir(out) if p.endswith(".png")) == [
      "confusion_matrix.png", "misclassified.png", "primary_caps.png",
      "rotation.png"]
  assert "reconstructions" not in arrays["rotation"]["strip"]
  assert summary["confusion_trace"] == 100  # the tiny run's 100%
  with Image.open(out / "rotation.gif") as im:  # the input alone, 4x
    assert im.size == (4 * 28, 4 * 28)
