"""Prediction on image files: MNIST-style preprocessing of synthetic images,
the command line with a bad file among good ones, and real MNIST digits
written to PNG (as is, inverted, enlarged) predicted as the arrays are."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from capsnet_jax.workdir import checkpoints
from capsnet_jax.data import input_pipeline
from capsnet_jax.inference import predict
from capsnet_jax.training import train
from capsnet_jax.inference import trained
from capsnet_jax.workdir import record
from conftest import ROOT, SHARED_MNIST, subprocess_env, write_idx
from test_train import tiny_config


def _bbox(digit, threshold=0.5):
  rows = np.flatnonzero((digit > threshold).any(axis=1))
  cols = np.flatnonzero((digit > threshold).any(axis=0))
  return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def _l_shape(h=200, w=120, ink=0.0, paper=1.0, channels=3):
  """A dark 'L' (100 x 60 px) off-centre on light paper."""
  image = np.full((h, w, channels), paper, np.float32)
  image[20:120, 10:25] = ink
  image[105:120, 10:70] = ink
  return image


# --------------------------------------------------------------------------
# Preprocessing.


def test_inversion_auto_always_never():
  dark_on_light = _l_shape()
  light_on_dark = 1.0 - dark_on_light
  auto = predict.mnist_digit(dark_on_light)
  assert auto.max() == pytest.approx(1.0) and auto[0].max() == 0.0  # dark border
  np.testing.assert_allclose(predict.mnist_digit(light_on_dark), auto, atol=1e-6)
  np.testing.assert_allclose(predict.mnist_digit(light_on_dark, "always"), 0.0)
  np.testing.assert_allclose(predict.mnist_digit(dark_on_light, "never"), 0.0)
  np.testing.assert_allclose(predict.mnist_digit(dark_on_light, "always"), auto,
                             atol=1e-6)
  assert predict.should_invert(dark_on_light[..., 0])
  assert not predict.should_invert(light_on_dark[..., 0])
  with pytest.raises(ValueError, match="Unknown invert"):
    predict.mnist_digit(auto[..., None], "sometimes")


@pytest.mark.parametrize("shape,expected", [
    ((120, 30), (20, 5)),  # tall: height fills the 20-px box
    ((24, 96), (5, 20)),   # wide: width does
    ((60, 60), (20, 20)),
])
def test_aspect_ratio_is_kept(shape, expected):
  image = np.zeros((300, 260, 1), np.float32)
  h, w = shape
  image[37:37 + h, 150:150 + w] = 1.0
  digit = predict.mnist_digit(image)
  assert digit.shape == (28, 28) and digit.dtype == np.float32
  got = _bbox(digit)
  assert abs(got[0] - expected[0]) <= 1 and abs(got[1] - expected[1]) <= 1, got


def test_centre_of_mass_at_the_centre_and_range():
  rng = np.random.default_rng(0)
  photo = 0.8 + 0.05 * rng.standard_normal((90, 140, 3)).astype(np.float32)
  photo[10:80, 100:108] = 0.1  # a dark '1' far right, on noisy grey paper
  photo[10:18, 90:108] = 0.1
  ring = np.zeros((64, 64, 1), np.float32)
  yy, xx = np.mgrid[:64, :64]
  ring[..., 0] = (np.abs(np.hypot(yy - 20, xx - 40) - 12) < 3).astype(np.float32)
  for image in (_l_shape(), photo, np.clip(photo, 0, 1), ring,
                _l_shape(channels=1, ink=0.3, paper=0.9)):
    digit = predict.mnist_digit(image)
    assert digit.shape == (28, 28)
    assert digit.min() >= 0.0 and digit.max() <= 1.0
    row, col = predict.center_of_mass(digit)
    assert abs(row - 13.5) <= 1.0 and abs(col - 13.5) <= 1.0, (row, col)
    assert max(_bbox(digit, 0.1)) == 20
  assert predict.mnist_digit(np.full((20, 30, 3), 0.7)).max() == 0.0  # blank


def test_to_stored_for_every_dataset():
  image = _l_shape(h=90, w=160)
  for name, setup, shape in (("mnist", "reference", (28, 28, 1)),
                             ("cifar10", "paper", (32, 32, 3)),
                             ("smallnorb", "reference", (48, 48, 1)),
                             ("smallnorb", "paper", (48, 48, 2))):
    info = input_pipeline.dataset_info(name, setup)
    stored = predict.to_stored(image, info)
    assert stored.shape == shape and stored.dtype == np.uint8, name
  stored = predict.to_stored(image, input_pipeline.dataset_info("mnist"))
  np.testing.assert_array_equal(
      stored[..., 0], np.round(predict.mnist_digit(image) * 255))


def test_read_image_modes_and_errors(tmp_path):
  gray = (_l_shape(channels=1)[..., 0] * 255).astype(np.uint8)
  Image.fromarray(gray).save(tmp_path / "gray.png")
  Image.fromarray(np.stack([gray] * 3, -1)).save(tmp_path / "colour.jpg", quality=95)
  rgba = np.zeros((*gray.shape, 4), np.uint8)
  rgba[..., 3] = 255 - gray  # black ink on a transparent background
  Image.fromarray(rgba).save(tmp_path / "alpha.png")
  Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "deep.png")
  (tmp_path / "notes.txt").write_text("not an image")
  (tmp_path / "truncated.png").write_bytes((tmp_path / "gray.png").read_bytes()[:60])
  reference = predict.mnist_digit(predict.read_image(str(tmp_path / "gray.png")))
  assert predict.read_image(str(tmp_path / "gray.png")).shape == (200, 120, 1)
  assert predict.read_image(str(tmp_path / "colour.jpg")).shape == (200, 120, 3)
  for name in ("colour.jpg", "alpha.png", "deep.png"):
    digit = predict.mnist_digit(predict.read_image(str(tmp_path / name)))
    assert np.abs(digit - reference).max() < 0.1, name
  for name in ("notes.txt", "truncated.png", "missing.png"):
    with pytest.raises(predict.ImageReadError):
      predict.read_image(str(tmp_path / name))
  paths, errors = predict.expand_paths([
      str(tmp_path), str(tmp_path / "*.jpg"), str(tmp_path / "gray.png"),
      str(tmp_path / "none*.png"), str(tmp_path / "missing.png")])
  names = [os.path.basename(p) for p in paths]
  assert names == ["alpha.png", "colour.jpg", "deep.png", "gray.png",
                   "truncated.png"]  # each once, the folder's images only
  assert [why for _, why in errors] == ["no file matches", "no such file or folder"]


# --------------------------------------------------------------------------
# The command line, on an untrained tiny model (nothing to compile to train).


@pytest.fixture(name="untrained_workdir", scope="module")
def fixture_untrained_workdir(idx_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("untrained"))
  config = tiny_config(idx_dir, conv_impl="xla")
  record.prepare(workdir, config)
  info = input_pipeline.dataset_info("mnist")
  _, state = train.setup_model_and_state(config, info, train.make_mesh())
  ckpt = checkpoints.Checkpointer(workdir)
  ckpt.save(0, state, {"test_accuracy": 0.1})
  ckpt.close()
  return workdir


def test_command_line_bad_file_among_good_ones(untrained_workdir, tmp_path):
  images = tmp_path / "images"
  images.mkdir()
  for i, size in enumerate((28, 64, 200)):
    Image.fromarray((_l_shape(h=size, w=size, channels=1)[..., 0] * 255).astype(
        np.uint8)).save(images / f"digit{i}.png")
  bad = tmp_path / "bad.png"
  bad.write_text("this is not a PNG")
  out = tmp_path / "out"
  args = [sys.executable, str(ROOT / "main.py"), "--config=configs/mnist.py",
          f"--workdir={untrained_workdir}", "--mode=predict",
          f"--images={images / 'digit0.png'},{bad},{images}", f"--out={out}",
          "--config.conv_impl=xla"]  # the quickest to compile: 9.6 s, not 11.6
  env = subprocess_env()
  result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
  assert result.returncode == 1, result.stderr[-3000:]
  lines = [json.loads(line) for line in result.stdout.splitlines()]
  assert [os.path.basename(r["image"]) for r in lines] == [
      "digit0.png", "digit1.png", "digit2.png"]
  for r in lines:
    assert 0 <= r["prediction"] < 10 and r["class_name"] == str(r["prediction"])
    assert len(r["capsule_lengths"]) == 10
    assert r["prediction"] == int(np.argmax(r["capsule_lengths"]))
    with Image.open(r["figure"]) as im:  # input beside reconstruction
      assert im.size == (4 * 57, 4 * 28)
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert errors == [f"error: {bad}: not an image file PIL can read"]
  result = subprocess.run(args[:5], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
  assert result.returncode == 1 and not result.stdout
  assert result.stderr.splitlines()[-1].startswith(
      "error: --mode=predict needs --images=")


# --------------------------------------------------------------------------
# Real digits.


@pytest.fixture(name="real_mnist", scope="module")
def fixture_real_mnist(tmp_path_factory):
  """The tiny model after 80 steps (batch 64) on the real training set,
  evaluated on 500 real test digits (91.8%).

  The default convolutions: XLA's own are quicker to compile, but their
  backward pass at the suite's optimisation level 0 (conftest) made this
  fixture take 138 s instead of 35 s.
  """
  if not SHARED_MNIST.is_dir():
    pytest.skip("no ../shared/data/mnist")
  from capsnet_jax.data import idx  # pylint: disable=g-import-not-at-top
  data = tmp_path_factory.mktemp("mnist500")
  for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
    source = next(SHARED_MNIST.glob(name + "*"))
    os.symlink(source, data / source.name)
  images, labels = idx.load_mnist_idx(str(SHARED_MNIST), "test")
  write_idx(data / "t10k-images-idx3-ubyte", images[:500, ..., 0], compress=False)
  write_idx(data / "t10k-labels-idx1-ubyte", labels[:500], compress=False)
  workdir = str(tmp_path_factory.mktemp("real"))
  config = tiny_config(data, batch_size=64, num_train_steps=80,
                       eval_batch_size=100, log_every_steps=40)
  results = train.train_and_evaluate(config, workdir)
  return workdir, images[:500], labels[:500], results


def test_real_digits_from_files_as_from_arrays(real_mnist, tmp_path):
  workdir, images, labels, results = real_mnist
  assert results["test_accuracy"] > 0.6, results
  model = trained.load(workdir)
  out = model.predict_stored(images, ("lengths", "predictions"))
  # The most confidently right digit of each class.
  top2 = np.sort(out["lengths"], axis=-1)[:, -2:]
  margin = np.where(out["predictions"] == labels, top2[:, 1] - top2[:, 0], -1)
  picks = [int(np.argmax(np.where(labels == k, margin, -2))) for k in range(10)]
  picks = [i for i in picks if margin[i] > 0]
  assert len(picks) >= 8, picks
  variants = {
      "as_is": lambda x: Image.fromarray(x),
      "inverted": lambda x: Image.fromarray(255 - x),
      "100x100": lambda x: Image.fromarray(x).resize((100, 100), Image.BICUBIC),
  }
  for variant, make in variants.items():
    folder = tmp_path / variant
    folder.mkdir()
    for i in picks:
      make(images[i, ..., 0]).save(folder / f"{i:03d}.png")
  results = model.predict_files([str(tmp_path / v) for v in variants])
  assert len(results) == len(picks) * len(variants)
  for r in results:
    i = int(os.path.basename(r["image"])[:3])
    assert r["prediction"] == out["predictions"][i] == labels[i], r["image"]
