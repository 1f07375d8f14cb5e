"""The paper's 40x40 protocol (data_setup "expanded", configs/mnist40.py and
configs/mnist40_cnn.py): the loader's 40x40 canvas, the training shifts
(hand-checked on a synthetic digit), the centred test split, the parameter
counts (on shapes alone) and a tiny CapsNet through the real loop at 40x40,
then --mode=robustness on it."""

import json
import math

import jax
import numpy as np
import pytest

from capsnet_jax import experiment
from capsnet_jax import recipes
from capsnet_jax import validation
from capsnet_jax.analysis import robustness
from capsnet_jax.analysis import summary
from capsnet_jax.data import datasets
from capsnet_jax.data import idx
from capsnet_jax.data import input_pipeline
from capsnet_jax.errors import ConfigError
from capsnet_jax.inference import predict
from capsnet_jax.inference import trained
from configs import mnist40
from configs import mnist40_cnn
import conftest


def _centred(digits: np.ndarray) -> np.ndarray:
  """uint8 [N, 28, 28(, 1)] -> [N, 40, 40, 1], the digit at rows and
  columns 6..33, zeros elsewhere (built by hand, not by the loader)."""
  digits = digits.reshape(len(digits), 28, 28)
  out = np.zeros((len(digits), 40, 40, 1), np.uint8)
  out[:, 6:34, 6:34, 0] = digits
  return out


def test_the_expanded_spec():
  spec = datasets.get("mnist", "expanded")
  assert spec.info.image_shape == spec.info.stored_shape == (40, 40, 1)
  assert (spec.pad, spec.target_rule, spec.validation_fraction,
          spec.lr_schedule) == (6, "input", 0.0, "exponential")
  # One digit of MNIST's mean 0.13066 on 1,600 pixels.
  assert spec.target_mean == pytest.approx(0.13066 * 784 / 1600, abs=1e-4)
  # The authors' recipe, as the paper setup.
  for field in recipes.FIELDS:
    assert recipes.RECIPES["expanded"].__getattribute__(field) == (
        recipes.RECIPES["paper"].__getattribute__(field)), field
  config = mnist40.get_config()
  config.dataset = "smallnorb"
  with pytest.raises(ConfigError, match="'expanded' is not defined for "
                     "smallnorb; valid: reference, paper"):
    validation.validate_config(config)


def test_the_loader_pads_both_splits_to_40(idx_dir):
  """256 synthetic training and 100 test digits: each split is the digit at
  rows and columns 6..33 of a zero 40x40 canvas, the labels unchanged."""
  spec = datasets.get("mnist", "expanded")
  splits = input_pipeline.load_splits(
      spec, input_pipeline.Source(idx_dir=str(idx_dir)), 0.0,
      process_index=0, process_count=1)
  for split, name in ((splits.train, "train"), (splits.test, "test")):
    raw, labels = idx.load_mnist_idx(str(idx_dir), name)
    assert split.images.shape == (len(raw), 40, 40, 1)
    assert split.images.dtype == np.uint8
    np.testing.assert_array_equal(split.images, _centred(raw))
    np.testing.assert_array_equal(split.labels, labels)
  assert splits.validation is None
  assert (splits.info.num_train, splits.info.num_test) == (256, 100)
  # The test-time input: the centred canvas in [0, 1], unshifted.
  x = np.asarray(spec.eval_fn(splits.test.images[:3]))
  np.testing.assert_allclose(x, _centred(raw[:3]) / np.float32(255), rtol=0,
                             atol=1e-7)


def test_training_images_are_the_digit_shifted_by_up_to_6_px():
  """A digit with no zero pixel, padded to 40x40 by hand: every training
  image equals the digit placed at rows 6 + dy, columns 6 + dx of a zero
  canvas for exactly one integer (dy, dx) in [-6, 6]^2; over 512 draws
  every offset of each axis occurs; the draws depend only on the rng."""
  digit = (1 + (np.arange(784) * 37) % 255).astype(np.uint8).reshape(28, 28)
  batch = np.repeat(_centred(digit[None]), 512, axis=0)
  train_fn = jax.jit(datasets.get("mnist", "expanded").preprocess(train=True))
  out = np.asarray(train_fn(batch, jax.random.key(3)))
  assert out.shape == (512, 40, 40, 1) and out.dtype == np.float32
  again = np.asarray(train_fn(batch, jax.random.key(3)))
  np.testing.assert_array_equal(out, again)
  other = np.asarray(train_fn(batch, jax.random.key(4)))
  assert not np.array_equal(out, other)

  # Pixels in [0, 1]: back to 8 bits (x / 255 under jit may differ from
  # numpy's quotient in the last bit).
  assert out.min() == 0.0 and out.max() <= 1.0
  levels = np.round(out * 255).astype(np.uint8)
  np.testing.assert_allclose(levels / np.float32(255), out, rtol=0,
                             atol=1e-7)
  placed = {}
  for dy in range(-6, 7):
    for dx in range(-6, 7):
      canvas = np.zeros((40, 40), np.uint8)
      canvas[6 + dy:34 + dy, 6 + dx:34 + dx] = digit
      placed[(dy, dx)] = canvas
  offsets = []
  for image in levels[..., 0]:
    matches = [k for k, canvas in placed.items()
               if np.array_equal(image, canvas)]
    assert len(matches) == 1, matches
    offsets.append(matches[0])
  offsets = np.array(offsets)
  assert set(offsets[:, 0]) == set(range(-6, 7))
  assert set(offsets[:, 1]) == set(range(-6, 7))
  # Rows and columns are drawn independently: not all on the diagonal.
  assert np.any(offsets[:, 0] != offsets[:, 1])


def test_parameter_counts_on_shapes_alone():
  """The counts the config docstrings state (--mode=summary), layer by
  layer: on 40x40 conv1 gives 32x32 and the primary capsules 12x12x32."""
  _, variables = summary.parameter_shapes(mnist40.get_config())
  counts = summary.summarize(variables["params"])
  assert counts["stem_params"] == 9 * 9 * 1 * 256 + 256
  assert counts["primary_params"] == 9 * 9 * 256 * 256 + 256
  assert counts["class_caps_params"] == 12 * 12 * 32 * 10 * 16 * 8 + 10 * 16
  assert counts["decoder_params"] == (160 * 512 + 512 + 512 * 1024 + 1024
                                      + 1024 * 1600 + 1600)
  assert counts["total_params"] == 13_475_808
  _, variables = summary.parameter_shapes(mnist40_cnn.get_config())
  total = sum(math.prod(x.shape) for x in jax.tree.leaves(variables["params"]))
  assert total == 29_516_042


def test_a_mnist_file_becomes_a_centred_40x40_digit():
  """--mode=predict's preprocessing for a 40x40 model: the 28x28 MNIST-style
  digit it makes for a 28x28 model, with 6 zero pixels on every side."""
  image = predict.read_image(str(conftest.ROOT / "docs" / "examples" /
                                 "mnist_test0_label7.png"))
  small = predict.to_stored(image, datasets.get("mnist", "paper").info)
  big = predict.to_stored(image, datasets.get("mnist", "expanded").info)
  assert small.shape == (28, 28, 1) and big.shape == (40, 40, 1)
  np.testing.assert_array_equal(big, _centred(small[None])[0])


def _tiny40(idx_dir, steps: int = 4):
  config = mnist40.get_config()
  config.update(model="tiny", idx_dir=str(idx_dir), batch_size=32,
                eval_batch_size=50, num_train_steps=steps, log_every_steps=2,
                num_summary_images=2, learning_rate=3e-3)
  return config


def test_tiny_capsnet_trains_and_measures_robustness_at_40(idx_dir, tmp_path,
                                                          capsys):
  """The real loop on the 40x40 pipeline, then --mode=robustness: the
  model's stored input is 40x40, so the test digits go in centred in 40x40
  and the affNIST-style set as it is."""
  from capsnet_jax.training import loop  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "w"
  results = loop.train_and_evaluate(_tiny40(idx_dir), str(workdir))
  assert results["step"] == 4
  # conv1 9*9*8 + 8 = 656; primary 9*9*8*32 + 32 = 20,768; 12*12*4 = 576
  # primary capsules: W 576*10*16*8 = 737,280, bias 160; decoder 160*16 +
  # 16 = 2,576, 16*32 + 32 = 544, 32*1600 + 1600 = 52,800.
  assert results["num_params"] == 814_784
  # A reconstruction of 1,600 pixels in [0, 1].
  assert 0 < results["test_reconstruction_loss"] < 1600
  with open(workdir / "config.json") as f:
    assert json.load(f)["data_setup"] == "expanded"

  config = _tiny40(idx_dir)
  config.robustness_examples = 20
  exp = experiment.resolve(config, "robustness")
  images, labels = robustness._test_set(exp, config)  # pylint: disable=protected-access
  raw, raw_labels = idx.load_mnist_idx(str(idx_dir), "test")
  np.testing.assert_array_equal(images, _centred(raw[:20]))
  np.testing.assert_array_equal(labels, raw_labels[:20])
  capsys.readouterr()
  records = robustness.run(exp, str(workdir), out=str(tmp_path / "out"))
  lines = capsys.readouterr().out.strip().splitlines()
  assert [json.loads(l) for l in lines] == records
  assert [(r["transform"], r["value"]) for r in records] == (
      robustness.settings())
  assert all(r["n"] == 20 for r in records)
  # The untransformed setting is the model's accuracy on the hand-centred
  # 40x40 digits (a 28x28 batch would not even be accepted).
  model = trained.load(str(workdir))
  assert model.info.stored_shape == (40, 40, 1)
  predictions, _ = model.classify(_centred(raw[:20]))
  assert records[robustness.settings().index(("rotation", 0))][
      "accuracy"] == np.mean(predictions == raw_labels[:20])
  with pytest.raises(ValueError, match="stored size"):
    model.classify(raw[:2])
  assert (tmp_path / "out" / robustness.RESULTS_FILE).exists()
