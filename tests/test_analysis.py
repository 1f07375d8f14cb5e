"""capsnet_jax.analysis.arrays: the arrays behind the figures, against values
recomputed from the model's own outputs or worked out by hand.

The model is the tiny CapsNet with its initial parameters (no training, no
checkpoint): the functions only need a trained.TrainedModel. XLA's
convolutions compile in about a second on CPU.
"""

import subprocess
import sys

import jax
import numpy as np
import pytest

from capsnet_jax import experiment
from capsnet_jax.analysis import arrays
from capsnet_jax.inference import trained
from capsnet_jax.training import mesh as mesh_lib
from capsnet_jax.training import state as state_lib
from configs import default
from conftest import ROOT, synthetic_digits


@pytest.fixture(name="model", scope="module")
def fixture_model():
  """The tiny model (reference setup, our default init) at its initial
  parameters, as trained.load would give it."""
  config = default.get_config()
  config.update(model="tiny", batch_size=8, init="default")
  exp = experiment.resolve(config, "visualize")
  mesh = mesh_lib.make_mesh()
  return trained.TrainedModel(workdir="(initial parameters)", experiment=exp,
                              state=state_lib.create(exp, mesh), mesh=mesh,
                              batch_size=8)


@pytest.fixture(name="images", scope="module")
def fixture_images():
  return synthetic_digits(12, seed=3)[0][..., None]  # uint8 [12, 28, 28, 1]


def test_analysis_imports_no_matplotlib():
  script = ("import sys; import capsnet_jax.analysis.arrays; "
            "print([m for m in sys.modules if m.startswith('matplotlib')])")
  out = subprocess.run([sys.executable, "-c", script], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, check=True)
  assert out.stdout.split("\n")[0] == "[]"


def test_rotate_is_exact_at_multiples_of_90_degrees():
  image = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1)
  np.testing.assert_array_equal(arrays.rotate(image, 0), image)
  np.testing.assert_array_equal(arrays.rotate(image, 90)[0, ..., 0],
                                np.rot90(image[0, ..., 0]))
  np.testing.assert_array_equal(arrays.rotate(image, -180)[0, ..., 0],
                                np.rot90(image[0, ..., 0], 2))


def test_confusion_matrix_by_hand():
  labels = np.array([0, 0, 1, 2, 2, 2])
  predictions = np.array([0, 1, 1, 2, 0, 2])
  np.testing.assert_array_equal(
      arrays.confusion_matrix(predictions, labels, 3),
      [[1, 1, 0], [0, 1, 0], [1, 0, 2]])


def test_misclassified_by_hand():
  lengths = np.array([[0.9, 0.1, 0.0],    # label 0: right
                      [0.2, 0.7, 0.1],    # label 2: wrong by 0.7 - 0.1
                      [0.5, 0.4, 0.3],    # label 1: wrong by 0.5 - 0.4
                      [0.1, 0.2, 0.95],   # label 0: wrong by 0.95 - 0.1
                      [0.3, 0.6, 0.2],    # label 1: right
                      [0.6, 0.1, 0.0]])   # label 1: wrong by 0.6 - 0.1, as #1
  labels = np.array([0, 2, 1, 0, 1, 1])
  errors = arrays.misclassified(lengths, labels)
  np.testing.assert_array_equal(errors["index"], [3, 1, 5, 2])
  np.testing.assert_array_equal(errors["label"], [0, 2, 1, 1])
  np.testing.assert_array_equal(errors["prediction"], [2, 1, 0, 0])
  np.testing.assert_allclose(errors["predicted_length"], [0.95, 0.7, 0.6, 0.5])
  np.testing.assert_allclose(errors["true_length"], [0.1, 0.1, 0.1, 0.4])
  right = arrays.misclassified(lengths[[0, 4]], labels[[0, 4]])
  assert all(len(v) == 0 for v in right.values()) and len(right) == 5


def test_misclassified_examples(model, images):
  lengths = model.predict(images, ("lengths",))["lengths"]
  labels = (np.argmax(lengths, 1) + 1) % 10  # every image wrong
  errors = {k: v[:3] for k, v in arrays.misclassified(lengths, labels).items()}
  shown = arrays.misclassified_examples(model, images[errors["index"]], errors)
  assert shown["inputs"].shape == (3, 28, 28, 1)
  out = model.predict(images[errors["index"]], ("class_caps",))
  np.testing.assert_allclose(
      shown["predicted_recons"],
      model.decode(out["class_caps"], errors["prediction"]), atol=1e-6)
  np.testing.assert_allclose(
      shown["true_recons"], model.decode(out["class_caps"], errors["label"]),
      atol=1e-6)
  # Initial parameters decode every capsule to about 0.5, yet differently:
  # more than the tolerance above tells apart.
  assert np.abs(shown["predicted_recons"] - shown["true_recons"]).max() > 1e-5


def test_two_digit_rules_by_hand():
  lengths = np.array([[0.9, 0.8, 0.1], [0.5, 0.5, 0.9], [0.2, 0.7, 0.6]])
  # Longest first; the tie in row 1 goes to the lower class.
  np.testing.assert_array_equal(arrays.top_two(lengths),
                                [[0, 1], [2, 0], [1, 2]])
  labels = np.array([[1, 0], [2, 1], [0, 2]])
  np.testing.assert_array_equal(arrays.two_digits_right(lengths, labels),
                                [True, False, False])


def test_weighted_primary_caps_by_hand():
  out = dict(primary_caps=np.arange(12, dtype=np.float32).reshape(2, 3, 2),
             coupling=np.zeros((2, 3, 4), np.float32),
             predictions=np.array([1, 3]))
  out["coupling"][0, :, 1] = [0.5, 0.0, 2.0]
  out["coupling"][1, :, 3] = [1.0, 0.25, 0.0]
  out["coupling"][0, :, 0] = 9.0  # another class's coupling: not used
  np.testing.assert_array_equal(arrays.weighted_primary_caps(out), [
      [[0, 0.5], [0, 0], [8, 10]], [[6, 7], [2, 2.25], [0, 0]]])


def test_primary_grid_shape():
  # 28 -> 9x9 conv: 20 -> 9x9 stride 2: 6; the tiny model has 4 types.
  assert arrays.primary_grid_shape(4, "valid", (28, 28, 1), 144) == (6, 6, 4)
  assert arrays.primary_grid_shape(32, "valid", (32, 32, 3), 2048) == (8, 8, 32)
  # SAME padding (the authors' CIFAR10 model): 24 -> 24 -> 12, 64 types.
  assert arrays.primary_grid_shape(64, "same", (24, 24, 3), 9216) == (
      12, 12, 64)
  with pytest.raises(ValueError, match="12x12x64 primary capsules expected"):
    arrays.primary_grid_shape(64, "same", (24, 24, 3), 1024)
  # Efficient-CapsNet: 16 capsules, no grid of types.
  assert arrays.primary_grid_shape(None, "valid", (28, 28, 1), 16) == (1, 1, 16)


@pytest.mark.parametrize("grouping", ["paper", "reference"])
def test_primary_capsule_labels_name_where_each_capsule_comes_from(grouping):
  """Against the model's own grouping of a conv output that holds each
  value's (row, column, channel) index: a capsule's first value is at the
  labelled position, of the labelled type (paper: channels T*8..T*8+7) or
  conv channel (reference)."""
  from capsnet_jax.model import layers  # pylint: disable=g-import-not-at-top
  h, w, types, dim = 6, 5, 4, 8
  index = np.arange(h * w * types * dim).reshape(1, h, w, types * dim)
  caps = np.asarray(layers.group_capsules(index, types, dim, grouping))[0]
  for cap in range(len(caps)):
    first = int(caps[cap, 0])
    row, col, channel = first // (w * types * dim), first // (types * dim) % w, \
        first % (types * dim)
    where = (f"type {channel // dim}" if grouping == "paper"
             else f"map {channel}")
    assert arrays.primary_capsule_label(cap, (h, w, types), grouping, dim) == (
        f"{where} @({row},{col})"), cap
    # The capsule's values: one type's 8 channels at one position (paper),
    # or 8 consecutive values in (channel, row, column) order (reference;
    # with 6x5 positions some run on into the next channel).
    if grouping == "paper":
      np.testing.assert_array_equal(caps[cap], first + np.arange(dim))
    else:
      c = types * dim
      order = [(v % c) * h * w + v // (w * c) * w + v // c % w
               for v in caps[cap].tolist()]
      assert order == list(range(cap * dim, cap * dim + dim)), cap


def test_primary_grid_types_as_the_figure_resolves_them():
  """visualize passes exp.primary_types: the tiny model's default 4, and
  None for Efficient-CapsNet even where a config records 32 types."""
  from configs import mnist_efficient  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.model = "tiny"
  assert experiment.resolve(config, "visualize").primary_types == 4
  config = mnist_efficient.get_config()
  config.primary_types = 32
  assert experiment.resolve(config, "visualize").primary_types is None


def test_rotation_sweep_and_strip(model, images):
  angles = [-90, 0, 90, 180]
  # Labels: the predictions at 0 degrees, so that accuracy there is 1.
  plain = model.predict(images, ("lengths", "predictions"))
  labels = plain["predictions"]
  sweep = arrays.rotation_sweep(model, images, labels, angles)
  assert sweep["num_examples"] == 12
  np.testing.assert_array_equal(sweep["angles"], angles)
  for a, angle in enumerate(angles):
    rotated = np.rot90(images, angle // 90, axes=(1, 2))  # counter-clockwise
    out = model.predict(np.ascontiguousarray(rotated),
                               ("lengths", "predictions"))
    assert sweep["accuracy"][a] == pytest.approx(
        np.mean(out["predictions"] == labels))
    assert sweep["mean_true_length"][a] == pytest.approx(
        np.mean(out["lengths"][np.arange(12), labels]), rel=1e-6)
  assert sweep["accuracy"][1] == 1.0 and sweep["accuracy"].min() < 1.0

  strip = arrays.rotation_strip(model, images[0], angles)
  rotated = np.stack([np.rot90(images[0], k, axes=(0, 1))
                      for k in (-1, 0, 1, 2)])
  out = model.predict(rotated)
  np.testing.assert_array_equal(strip["predictions"], out["predictions"])
  np.testing.assert_allclose(strip["confidence"], out["lengths"].max(-1),
                             rtol=1e-6)
  np.testing.assert_allclose(strip["reconstructions"], out["reconstructions"],
                             atol=1e-6)
  # The displayed inputs: pixels / 255 (MNIST's reconstruction target).
  np.testing.assert_allclose(strip["inputs"], rotated / 255.0, atol=1e-6)


def test_perturbation_grid(model, images):
  out = model.predict(images[:1])
  caps, label = out["class_caps"][0], int(out["predictions"][0])
  grid = arrays.perturbation_grid(model, caps, label)
  assert grid.shape == (16, 11, 28, 28, 1)
  zero = list(arrays.PERTURBATION_OFFSETS).index(0.0)
  for d in range(16):  # offset 0 is the plain reconstruction
    np.testing.assert_allclose(grid[d, zero], out["reconstructions"][0], atol=1e-5)
  # Row 5, column 0: dimension 5 of the capsule moved by -0.25, decoded.
  moved = caps.copy()
  moved[label, 5] -= 0.25
  np.testing.assert_allclose(grid[5, 0], model.decode(moved[None], [label])[0],
                             atol=1e-5)
  assert not np.allclose(grid[0, 0], grid[0, -1])


def test_primary_decoder_training_and_cache(model, images, tmp_path):
  params, losses = arrays.train_primary_decoder(model, images, 15, 8)
  assert len(losses) == 15
  # The batch SSE of these 12 digits' targets: 144.9 for the initial
  # decoder's output of 0.5 everywhere, 41.9 for a black image, 25.8 for
  # their mean image. Measured (2-core Intel Xeon): 144.85 at the first step,
  # 29.45 over the last five (27.61, 27.20, 27.81, 31.05, 33.56).
  assert losses[0] == pytest.approx(144.85, abs=0.5)
  assert np.mean(losses[-5:]) < 33.0
  template = arrays.init_primary_decoder(model)
  assert jax.tree.map(np.shape, template) == jax.tree.map(np.shape, params)
  path = str(tmp_path / "decoder.msgpack")
  assert arrays.read_primary_decoder(path, template, 8) is None
  arrays.write_primary_decoder(path, params, 8)
  assert arrays.read_primary_decoder(path, template, 9) is None  # other step
  back = arrays.read_primary_decoder(path, template, 8)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  # Trained another way (more steps, another run): not this cache.
  recipe = dict(workdir="/runs/a", steps=200, examples=1000, batch_size=128)
  arrays.write_primary_decoder(path, params, 8, recipe)
  assert arrays.read_primary_decoder(path, template, 8) is None
  assert arrays.read_primary_decoder(path, template, 8,
                                     dict(recipe, steps=400)) is None
  assert arrays.read_primary_decoder(path, template, 8,
                                     dict(recipe, workdir="/runs/b")) is None
  assert arrays.read_primary_decoder(path, template, 8, recipe) is not None


def test_primary_capsule_rows(model, images):
  params = arrays.init_primary_decoder(model, seed=1)
  coefficients = np.linspace(0, 1, 4)
  rows = arrays.primary_capsule_rows(model, params, images[0], 3, coefficients)
  assert rows["images"].shape == (3, 4, 28, 28, 1)
  # Recomputed from the model's outputs: the rows are the 3 capsules with the
  # longest coupling-weighted vectors towards the prediction, longest first,
  # and row r, column k decodes capsule r alone, scaled by coefficient k.
  one = model.predict(images[:1], arrays.PRIMARY_KEYS)
  pred = int(one["predictions"][0])
  caps = one["primary_caps"][0]  # [144, 8]
  weighted = caps * one["coupling"][0, :, pred, None]
  norms = np.linalg.norm(weighted, axis=-1)
  assert rows["prediction"] == pred
  np.testing.assert_array_equal(rows["capsules"], np.argsort(-norms)[:3])
  assert np.all(np.diff(norms[rows["capsules"]]) <= 0)
  np.testing.assert_allclose(rows["coupling"],
                             one["coupling"][0, rows["capsules"], pred])
  module = arrays.PrimaryDecoder((28, 28, 1))
  inputs = np.zeros((3, 4, *caps.shape), np.float32)
  for r, i in enumerate(rows["capsules"]):
    inputs[r, :, i] = coefficients[:, None] * caps[i]
  expected = np.asarray(module.apply({"params": params},
                                     inputs.reshape(12, *caps.shape)))
  np.testing.assert_allclose(rows["images"].reshape(12, 28, 28, 1), expected,
                             atol=1e-5)
  # Different capsules draw different images.
  assert not np.allclose(rows["images"][0, -1], rows["images"][1, -1],
                         atol=1e-4)
  np.testing.assert_allclose(rows["full"], np.asarray(module.apply(
      {"params": params}, weighted[None]))[0], atol=1e-5)


def test_two_digit_examples(model, images):
  lengths = model.predict(images[:4], ("lengths",))["lengths"]
  order = np.argsort(-lengths, axis=1)
  labels = np.stack([order[:, 1], order[:, 0]], 1)  # the two longest, swapped
  labels[3] = [order[3, 0], order[3, 2]]  # the third longest: wrong
  out = arrays.two_digit_examples(model, images[:4], labels, lengths)
  np.testing.assert_array_equal(out["predicted"], order[:, :2])
  np.testing.assert_array_equal(out["correct"], [True, True, True, False])
  caps = model.predict(images[:4], ("class_caps",))["class_caps"]
  for t in range(2):
    np.testing.assert_allclose(out["predicted_recons"][:, t],
                               model.decode(caps, order[:, t]), atol=1e-6)
    np.testing.assert_allclose(out["true_recons"][:, t],
                               model.decode(caps, labels[:, t]), atol=1e-6)
  np.testing.assert_allclose(out["inputs"], images[:4] / 255.0, atol=1e-6)
