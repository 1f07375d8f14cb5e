"""MultiMNIST: pair generation, the two-label losses and accuracy rule, the
parameter count, and training end to end on the synthetic IDX fixture.

Every expected value is typed by hand (worked out in the comments), not
produced by the code under test.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from capsnet_jax import experiment
from capsnet_jax.data import datasets
from capsnet_jax.data import input_pipeline
from capsnet_jax.training import losses
from capsnet_jax.data import multimnist
from capsnet_jax import validation
from capsnet_jax.errors import ConfigError
from capsnet_jax.errors import DataError
from configs import multimnist as multimnist_config


# --------------------------------------------------------------------------
# Pair generation.


def test_place_pads_to_36_and_shifts():
  digit = np.zeros((2, 28, 28, 1), np.uint8)
  digit[:, 0, 0] = 7  # top-left pixel
  digit[:, 27, 27] = 9  # bottom-right pixel
  out = multimnist.place(digit, np.array([[-4, 3], [4, -4]]))
  assert out.shape == (2, 36, 36, 1) and out.dtype == np.uint8
  # Example 0: pad 4, shift up 4 and right 3: (0, 0) -> (0, 7), (27, 27) -> (27, 34).
  assert out[0, 0, 7, 0] == 7 and out[0, 27, 34, 0] == 9
  # Example 1: down 4, left 4: (0, 0) -> (8, 0), (27, 27) -> (35, 27).
  assert out[1, 8, 0, 0] == 7 and out[1, 35, 27, 0] == 9
  assert np.count_nonzero(out) == 4  # nothing else, nothing lost
  with pytest.raises(ValueError, match="within"):
    multimnist.place(digit[:1], np.array([[5, 0]]))


def test_overlay_adds_and_clips_without_wrapping():
  a = np.array([[200, 10, 255, 0]], np.uint8)
  b = np.array([[100, 20, 255, 0]], np.uint8)
  # 200 + 100 = 300 -> 255 (uint8 addition would wrap to 44); 10 + 20 = 30.
  np.testing.assert_array_equal(multimnist.overlay(a, b), [[255, 30, 255, 0]])


def test_partners_are_of_another_class_and_cover_them():
  labels = np.array([0, 0, 1, 2, 2, 2], np.int32)
  index = multimnist.ClassIndex(labels)
  rng = np.random.default_rng(0)
  for first_label, allowed in ((0, {2, 3, 4, 5}), (1, {0, 1, 3, 4, 5}),
                               (2, {0, 1, 2})):
    got = index.partners(np.full(600, first_label), rng)
    assert set(got.tolist()) == allowed  # all of them, none of the same class
    # Uniform over the allowed examples: each about 600 / |allowed|.
    counts = np.bincount(got, minlength=6)[sorted(allowed)]
    assert counts.min() > 0.6 * 600 / len(allowed)


def _digits(n=40):
  """n uint8 "digits" of class i % 10: a 4x4 block of 100 at rows and
  columns 10..13, and one pixel of value i + 1 of their own."""
  images = np.zeros((n, 28, 28, 1), np.uint8)
  for i in range(n):
    images[i, i % 28, (3 * i) % 28] = i + 1
    images[i, 10:14, 10:14] = 100
  return images, (np.arange(n) % 10).astype(np.int32)


def test_train_batches_pairs_shifts_and_clipping():
  images, labels = _digits()
  split = multimnist.PairSplit(images, labels)
  batches = multimnist.train_batches(split, 8, seed=3)
  for _ in range(5):
    batch = next(batches)
    assert batch["image"].shape == (8, 36, 36, 1)
    assert batch["targets"].shape == (8, 2, 36, 36, 1)
    assert batch["label"].shape == (8, 2) and batch["label"].dtype == np.int32
    assert np.all(batch["label"][:, 0] != batch["label"][:, 1])
    # The overlay is the clipped sum of the two placed digits: the 4x4 blocks
    # of value 100 overlap when the shifts are close (200, not clipped)...
    total = batch["targets"][:, 0].astype(int) + batch["targets"][:, 1]
    np.testing.assert_array_equal(batch["image"], np.minimum(total, 255))
    for t in range(2):
      # ... and each digit's block (rows/cols 10..13 of 28) lies at 4 + shift
      # + 10 .. 13: within rows/cols 10 .. 21 of the canvas (shift -4 .. 4).
      rows = np.flatnonzero(np.any(batch["targets"][:, t] == 100, axis=(0, 2, 3)))
      assert rows.min() >= 10 and rows.max() <= 21


def test_shifts_are_uniform_in_minus4_to_4():
  _, labels = _digits()
  pairs = multimnist.draw_pairs(np.zeros(4000, np.int32), labels,
                                multimnist.ClassIndex(labels),
                                np.random.default_rng(1))
  assert pairs.shifts.shape == (4000, 2, 2)
  values, counts = np.unique(pairs.shifts, return_counts=True)
  np.testing.assert_array_equal(values, np.arange(-4, 5))
  assert counts.min() > 0.8 * 16000 / 9  # each of the 9 values, ~1778 times


def test_training_pairs_depend_only_on_seed_and_step():
  images, labels = _digits()
  split = multimnist.PairSplit(images, labels)
  straight = multimnist.train_batches(split, 8, seed=5)
  batches = [next(straight) for _ in range(7)]  # 5 steps per epoch: crosses one
  resumed = next(multimnist.train_batches(split, 8, seed=5, start_step=6))
  for key in ("image", "label", "targets"):
    np.testing.assert_array_equal(resumed[key], batches[6][key])
  again = next(multimnist.train_batches(split, 8, seed=5, start_step=2))
  np.testing.assert_array_equal(again["image"], batches[2]["image"])
  other = next(multimnist.train_batches(split, 8, seed=6, start_step=2))
  assert not np.array_equal(other["image"], batches[2]["image"])
  # First digits: one epoch (5 steps of 8) uses each of the 40 digits once,
  # so each class i % 10 is the first label 4 times.
  firsts = np.concatenate([b["label"][:, 0] for b in batches[:5]])
  np.testing.assert_array_equal(np.bincount(firsts, minlength=10), [4] * 10)


def test_fixed_test_pairs():
  images, labels = _digits(25)
  a = multimnist.fixed_pairs(labels, 60)
  b = multimnist.fixed_pairs(labels, 60)
  for x, y in ((a.first, b.first), (a.second, b.second), (a.shifts, b.shifts)):
    np.testing.assert_array_equal(x, y)  # the same set every time
  np.testing.assert_array_equal(a.first, np.arange(60) % 25)  # 0..24, 0..24, 0..9
  assert np.all(labels[a.first] != labels[a.second])
  assert np.abs(a.shifts).max() <= 4
  split = multimnist.PairSplit(images, labels, a)
  assert len(split) == 60 and split.labels.shape == (60, 2)
  # Served in order, every pair once, the padding masked out.
  batches = list(multimnist.eval_batches(split, 16))
  assert len(batches) == 4  # 16 + 16 + 16 + 12
  np.testing.assert_array_equal(batches[-1]["mask"], [1] * 12 + [0] * 4)
  np.testing.assert_array_equal(
      np.concatenate([x["label"] for x in batches])[:60], split.labels)
  np.testing.assert_array_equal(batches[1]["image"], split.images[16:32])
  with pytest.raises(DataError, match="> 0"):
    multimnist.fixed_pairs(labels, 0)


def test_load_splits_on_idx_files(idx_dir):
  config = multimnist_config.get_config()
  config.idx_dir = str(idx_dir)  # 256 synthetic training, 100 test digits
  config.multimnist_test_pairs = 150
  splits = experiment.resolve(config).load_splits(0, 1)
  assert splits.info.image_shape == (36, 36, 1)
  assert splits.info.num_train == 256 and splits.info.num_test == 150
  assert len(splits.test) == 150 and splits.validation is None
  assert splits.test.images[:3].shape == (3, 36, 36, 1)
  # Two processes evaluate disjoint halves of the same 150 pairs.
  halves = [experiment.resolve(config).load_splits(p, 2).test for p in (0, 1)]
  assert [len(h) for h in halves] == [75, 75]
  np.testing.assert_array_equal(
      np.concatenate([h.labels for h in halves]), splits.test.labels)
  np.testing.assert_array_equal(halves[1].images[:2], splits.test.images[75:77])
  # A validation hold-out becomes fixed pairs of the held-out digits.
  config.validation_fraction = 0.1
  splits = experiment.resolve(config).load_splits(0, 1)
  assert len(splits.validation) == 25 and splits.info.num_train == 231


def test_registry_and_validation():
  spec = datasets.get("multimnist", "paper")
  assert spec.info.image_shape == spec.info.stored_shape == (36, 36, 1)
  assert spec.info.num_classes == 10 and spec.num_targets == 2
  assert datasets.get("mnist", "paper").num_targets == 1
  raw = np.full((2, 36, 36, 1), 51, np.uint8)
  np.testing.assert_allclose(spec.eval_fn(jnp.asarray(raw)), 0.2, rtol=1e-6)
  config = multimnist_config.get_config()
  validation.validate_config(config)
  config.data_setup = "reference"
  with pytest.raises(ConfigError, match="not defined for multimnist; valid: paper"):
    validation.validate_config(config)
  config = multimnist_config.get_config()
  config.multimnist_test_pairs = 0
  with pytest.raises(ConfigError, match="multimnist_test_pairs"):
    validation.validate_config(config)


# --------------------------------------------------------------------------
# Losses and the accuracy rule.


LENGTHS = jnp.array([[0.95, 0.5, 0.2, 0.05]])


@pytest.mark.parametrize("labels,expected", [
    # Present: 0 -> max(0, 0.9 - 0.95)^2 = 0; 1 -> (0.9 - 0.5)^2 = 0.16.
    # Absent: 2 -> 0.5 (0.2 - 0.1)^2 = 0.005; 3 -> 0.05 < 0.1: 0.
    ([[0, 1]], 0.165),
    ([[1, 0]], 0.165),
    # Present: 2 -> 0.7^2 = 0.49; 3 -> 0.85^2 = 0.7225. Absent: 0 -> 0.5 x
    # 0.85^2 = 0.36125; 1 -> 0.5 x 0.4^2 = 0.08. Sum 1.65375.
    ([[2, 3]], 1.65375),
    # One label (unchanged): absent 1 -> 0.08, 2 -> 0.005: 0.085.
    ([0], 0.085),
])
def test_margin_loss_with_two_labels(labels, expected):
  got = losses.margin_loss(LENGTHS, jnp.array(labels))
  np.testing.assert_allclose(got, [expected], rtol=1e-6)


def test_paper_accuracy_rule():
  lengths = jnp.array([
      [0.9, 0.8, 0.1, 0.2],   # top two {0, 1}
      [0.9, 0.1, 0.8, 0.2],   # top two {0, 2}
      [0.1, 0.2, 0.9, 0.8],   # top two {2, 3}
      [0.3, 0.9, 0.1, 0.35],  # top two {1, 3}
  ])
  labels = jnp.array([[1, 0], [0, 1], [0, 1], [3, 1]])
  np.testing.assert_array_equal(losses.top_k_correct(lengths, labels),
                                [True, False, False, True])
  np.testing.assert_array_equal(losses.top_k_partly_correct(lengths, labels),
                                [True, True, False, True])


def test_two_digit_reconstruction_sse():
  # One example, two digits, 2x2 images.
  recon = np.zeros((1, 2, 2, 2, 1), np.float32)
  target = np.zeros((1, 2, 2, 2, 1), np.float32)
  recon[0, 0, 0, 0] = 0.5   # digit 0: [[0.5, 0], [0, 0]]
  target[0, 0, 0, 0] = 1.0  #   target [[1, 0], [0, 0]]: 0.25
  recon[0, 1, 1, 1] = 1.0   # digit 1: [[0, 0], [0, 1]]
  target[0, 1, 1] = 0.5     #   target [[0, 0], [0.5, 0.5]]: 0.25 + 0.25
  np.testing.assert_allclose(losses.targets_sse(recon, target), [0.75])
  # Paired the other way round: (0.25 + 0.25 + 0.25) + (1 + 1) = 2.75.
  swapped = recon[:, ::-1]
  np.testing.assert_allclose(losses.targets_sse(swapped, target), [2.75])
  # At evaluation the better pairing counts, whichever order the capsules had.
  np.testing.assert_allclose(losses.matched_targets_sse(recon, target), [0.75])
  np.testing.assert_allclose(losses.matched_targets_sse(swapped, target), [0.75])


# --------------------------------------------------------------------------
# The model.


def test_parameter_count():
  from capsnet_jax.analysis import summary  # pylint: disable=g-import-not-at-top
  _, variables = summary.parameter_shapes(multimnist_config.get_config())
  counts = summary.summarize(variables["params"])
  # conv1: 9 x 9 x 1 x 256 + 256 = 20,992 (36 -> 28).
  # primary: 9 x 9 x 256 x 256 + 256 = 5,308,672 (28 -> 10, stride 2).
  # class capsules: 10 x 10 x 32 = 3,200 primary capsules; W 3,200 x 10 x
  #   16 x 8 = 4,096,000, bias 10 x 16 = 160: 4,096,160.
  # FC decoder: 160 x 512 + 512 = 82,432; 512 x 1024 + 1024 = 525,312;
  #   1024 x 1296 + 1296 = 1,328,400 (36 x 36 = 1296 pixels): 1,936,144.
  # Total: 20,992 + 5,308,672 + 4,096,160 + 1,936,144 = 11,361,968.
  assert counts["stem_params"] == 20_992
  assert counts["primary_params"] == 5_308_672
  assert counts["class_caps_params"] == 4_096_160
  assert counts["decoder_params"] == 1_936_144
  assert counts["total_params"] == 11_361_968
  w = [x for x in jax.tree.leaves(variables["params"]["class_caps"])
       if x.ndim == 4]
  assert w[0].shape == (3200, 10, 16, 8)


# --------------------------------------------------------------------------
# End to end.


@pytest.fixture(name="trained_mm", scope="module")
def fixture_trained_mm(idx_dir, tmp_path_factory):
  from capsnet_jax.training import loop  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp("mm"))
  config = multimnist_config.get_config("smoke")
  config.idx_dir = str(idx_dir)
  config.num_train_steps = 8
  config.log_every_steps = 4
  config.multimnist_test_pairs = 120
  config.eval_batch_size = 50  # 3 batches, the last one padded
  config.visualize_num_images = 4
  results = loop.train_and_evaluate(config, workdir)
  return workdir, config, results


def test_train_and_evaluate(trained_mm):
  workdir, _, results = trained_mm
  with open(os.path.join(workdir, "results.json")) as f:
    saved = json.load(f)
  assert saved["step"] == 8 and saved["dataset"] == "multimnist"
  # The paper's rule over the 120 fixed test pairs: a count of pairs.
  for key in ("test_accuracy", "test_partial_accuracy"):
    assert 0.0 <= saved[key] <= 1.0
    assert saved[key] * 120 == pytest.approx(round(saved[key] * 120))
  assert saved["test_partial_accuracy"] >= saved["test_accuracy"]
  # Two digits of up to 36 x 36 pixels in [0, 1]: 0 < SSE < 2 x 1296.
  assert 0 < saved["test_reconstruction_loss"] < 2 * 1296
  assert np.isfinite(saved["test_margin_loss"])
  with open(os.path.join(workdir, "eval_history.jsonl")) as f:
    record = json.loads(f.readlines()[-1])
  assert record["test_accuracy"] == pytest.approx(results["test_accuracy"])
  assert "test_partial_accuracy" in record


def test_eval_mode_and_tensorboard(trained_mm):
  from capsnet_jax.training import loop  # pylint: disable=g-import-not-at-top
  from capsnet_jax.analysis import curves  # pylint: disable=g-import-not-at-top
  workdir, config, results = trained_mm
  evaluated = loop.evaluate_checkpoint(config, workdir)
  assert evaluated["test_accuracy"] == pytest.approx(results["test_accuracy"])
  assert evaluated["test_reconstruction_loss"] == pytest.approx(
      results["test_reconstruction_loss"], rel=1e-5)
  tags = curves.from_events(workdir)
  for tag in ("train_accuracy", "train_reconstruction_loss", "test_accuracy",
              "test_partial_accuracy", "test_reconstruction_loss"):
    assert tag in tags, (tag, sorted(tags))


def test_visualize(trained_mm):
  from capsnet_jax.analysis import visualize  # pylint: disable=g-import-not-at-top
  workdir, config, _ = trained_mm
  summary = visualize.visualize(config, workdir)
  figures = os.path.join(workdir, "figures")
  for name in ("multimnist.png", "perturbation.png"):
    assert os.path.getsize(os.path.join(figures, name)) > 10000, name
  with open(os.path.join(figures, "summary.json")) as f:
    assert json.load(f)["num_test"] == 120
  assert not os.path.exists(os.path.join(figures, "rotation.png"))
  assert set(summary["skipped"]) == {"reconstructions.png", "rotation.png",
                                     "primary_caps.png", "confusion_matrix.png",
                                     "misclassified.png"}
  assert summary["num_test"] == 120
  with open(os.path.join(workdir, "results.json")) as f:
    assert summary["test_accuracy"] == pytest.approx(json.load(f)["test_accuracy"])


def test_visualize_without_a_decoder(trained_mm, tmp_path):
  """A MultiMNIST bundle exported without its decoder: both figures decode,
  so both are skipped with the reason (multimnist_figure crashed)."""
  from capsnet_jax.analysis import visualize  # pylint: disable=g-import-not-at-top
  from capsnet_jax.inference import export  # pylint: disable=g-import-not-at-top
  workdir, config, _ = trained_mm
  export.export(workdir, "mm", "latest", str(tmp_path), decoder_dtype="none")
  summary, _ = visualize.make_figures(config, str(tmp_path / "mm"),
                                      out=str(tmp_path / "figures"))
  assert summary["skipped"]["multimnist.png"] == (
      visualize.NO_DECODER_SKIPPED["multimnist"])
  assert summary["skipped"]["perturbation.png"] == (
      visualize.NO_DECODER_SKIPPED["perturbation"])
  assert not [p for p in os.listdir(tmp_path / "figures") if p.endswith(".png")]
  # The numbers are still there: the same accuracy as with the decoder.
  with_decoder, _ = visualize.make_figures(config, workdir,
                                           out=str(tmp_path / "full"))
  assert summary["test_accuracy"] == with_decoder["test_accuracy"]
  assert summary["num_test"] == with_decoder["num_test"] == 120


def test_ensemble_accuracy_uses_the_paper_rule():
  from capsnet_jax.inference import ensemble  # pylint: disable=g-import-not-at-top
  lengths = np.array([[0.9, 0.8, 0.1], [0.9, 0.1, 0.8], [0.2, 0.7, 0.6]])
  # Top two: {0, 1}, {0, 2}, {1, 2}; labels {1, 0}, {0, 1}, {2, 1}: 2 of 3.
  labels = np.array([[1, 0], [0, 1], [2, 1]])
  assert ensemble.accuracy(lengths, labels) == pytest.approx(2 / 3)
  # One label each: the longest capsules are 0, 0, 1; labels 0, 2, 1: 2 of 3.
  assert ensemble.accuracy(lengths, np.array([0, 2, 1])) == pytest.approx(2 / 3)


def test_report_table(tmp_path):
  from capsnet_jax.analysis import report  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps({"batch_size": 128}))
  records = [
      {"step": 234, "epoch": 0.5, "test_accuracy": 0.25,
       "test_partial_accuracy": 0.875, "test_reconstruction_loss": 61.234,
       "test_margin_loss": 0.12345, "wall_seconds": 5400.0, "source": "train"},
      {"step": 234, "epoch": 0.5, "test_accuracy": 0.1, "source": "eval"},
  ]
  with open(workdir / "eval_history.jsonl", "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in records))
  rows = report.multimnist_table(str(workdir)).splitlines()
  # 234 x 128 = 29,952 pairs; error 1 - 0.25 = 75.00%; 5400 s = 90.0 min
  # (minutes below 2 hours). The --mode=eval record is left out.
  assert rows[2] == ("| 234 (0.50) | 29,952 | 75.00% | 87.50% | 61.23 | "
                     "0.1235 | 90.0 min |")
  assert rows[3].startswith("| paper (60M training pairs, 10M test pairs) | "
                            "60,000,000 | CapsNet 5.2%, baseline CNN 8.1% |")
  assert len(rows) == 4


def test_predict_image_files(trained_mm, tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from capsnet_jax.data import multimnist as mm  # pylint: disable=g-import-not-at-top
  from capsnet_jax.inference import trained  # pylint: disable=g-import-not-at-top
  workdir, config, _ = trained_mm
  splits = experiment.resolve(config).load_splits(0, 1)
  pair = splits.test.images[:1][0, ..., 0]  # uint8 36x36, light on dark
  # Saved dark on light at 72x72: predict inverts it and resizes to 36x36.
  Image.fromarray(255 - pair).resize((72, 72), Image.NEAREST).save(
      tmp_path / "pair.png")
  model = trained.load(workdir)
  [result] = model.predict_files([str(tmp_path / "pair.png")])
  assert len(result["predictions"]) == 2
  assert len(set(result["predictions"])) == 2
  assert result["predictions"][0] == result["prediction"]  # longest first
  assert len(result["capsule_lengths"]) == 10
  shown = result["input"][..., 0]
  assert shown.shape == (mm.CANVAS_SIZE, mm.CANVAS_SIZE)
  # The same picture, light on dark again (Lanczos resampling: close).
  assert np.abs(shown - pair / 255.0).mean() < 0.05
