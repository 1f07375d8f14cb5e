"""The Python API a researcher reaches for (issue 40), on the bundled
Efficient-CapsNet and the real MNIST test images (../shared):
capsnet_jax.load, predict on images as a person has them (uint8 0..255 or
floats in [0, 1], any layout), predict_preprocessed refusing inputs at the
wrong scale, the Prediction it returns, decode.

The docstrings' own examples: test_doctests.py. trained.load on a training
workdir: test_trained.py."""

import dataclasses
import json
import re

import numpy as np
import pytest

import capsnet_jax
from capsnet_jax.data import idx
from capsnet_jax.inference import trained
from conftest import ROOT, shared_mnist

META = json.loads((ROOT / "capsnet_jax" / "weights" / "mnist_efficient" /
                   "weights.json").read_text())


@pytest.fixture(name="model", scope="module")
def fixture_model():
  return capsnet_jax.load("bundled:mnist_efficient")  # the package synopsis


@pytest.fixture(name="mnist", scope="module")
def fixture_mnist():
  """The 10,000 MNIST test images, uint8 [N, 28, 28, 1], and labels [N]."""
  images, labels = idx.load_mnist_idx(str(shared_mnist()), "test")
  assert images.dtype == np.uint8 and images.shape == (10000, 28, 28, 1)
  return images, labels


@pytest.fixture(name="as_uint8", scope="module")
def fixture_as_uint8(model, mnist):
  """The synopsis: predict on the test images as uint8 (one pass, in the
  model's batches of 500)."""
  return model.predict(mnist[0])


def _errors(out, labels) -> int:
  return int(np.sum(out.predictions != labels))


def test_load_is_the_package_entry_point(model):
  assert capsnet_jax.load is trained.load
  assert isinstance(model, trained.TrainedModel)
  assert model.step == META["step"]
  assert (model.info.name, model.info.setup) == ("mnist", "efficient")
  assert model.info.stored_shape == (28, 28, 1)


def test_uint8_images_reproduce_the_recorded_accuracy(as_uint8, mnist):
  # The bundle records its training run's own evaluation of this step:
  # 99.73%, 27 errors in 10,000.
  assert META["test_accuracy"] == 0.9973
  assert _errors(as_uint8, mnist[1]) == 27
  assert 1 - _errors(as_uint8, mnist[1]) / 10000 == META["test_accuracy"]


def test_float_images_in_0_1_reproduce_it_too(model, mnist, as_uint8):
  images, labels = mnist
  out = model.predict(images / 255.0)  # float64 in [0, 1]
  assert _errors(out, labels) == 27
  # The same model inputs: the same outputs.
  np.testing.assert_array_equal(out.predictions, as_uint8.predictions)
  np.testing.assert_allclose(out.lengths, as_uint8.lengths, atol=1e-6)


def test_any_layout_gives_the_same_predictions(model, mnist, as_uint8):
  images = mnist[0][:5]
  expected = as_uint8.lengths[:5]
  for batch in (images, images[..., 0]):  # [N, H, W, C], [N, H, W]
    out = model.predict(batch)
    np.testing.assert_array_equal(out.predictions, as_uint8.predictions[:5])
    np.testing.assert_allclose(out.lengths, expected, atol=1e-6)
  for one in (images[3], images[3, ..., 0]):  # [H, W, C], [H, W]
    out = model.predict(one)
    assert out.predictions.shape == (1,) and out.lengths.shape == (1, 10)
    assert out.predictions[0] == as_uint8.predictions[3]
    np.testing.assert_allclose(out.lengths[0], expected[3], atol=1e-6)
  # Integers of any width, and float64 in [0, 1], are images too.
  np.testing.assert_allclose(model.predict(images.astype(np.int64)).lengths,
                             expected, atol=1e-6)


def _one_line(excinfo) -> str:
  message = str(excinfo.value)
  assert "\n" not in message, message
  return message


def test_predict_refuses_what_is_not_an_image(model, mnist):
  images = mnist[0][:2]
  with pytest.raises(ValueError, match=r"float images must lie in \[0, 1\], "
                     r"these in \[0, 255\]: pass pixel values 0\.\.255 as "
                     r"uint8") as e:
    model.predict(images.astype(np.float32))
  _one_line(e)
  with pytest.raises(ValueError, match=r"integer images must lie in 0\.\.255"):
    model.predict(images.astype(np.int32) - 1)
  nan = images.astype(np.float32) / 255.0
  nan[1, 5, 5, 0] = np.nan
  with pytest.raises(ValueError, match="images hold NaN or infinite pixels"):
    model.predict(nan)
  with pytest.raises(ValueError, match="images must be numbers"):
    model.predict(images > 0)
  for shape in ((2, 32, 32, 1), (2, 28, 28, 3), (28, 28, 3), (784,)):
    with pytest.raises(ValueError, match=re.escape(
        f"(the dataset's stored size), got {list(shape)}; predict_files reads "
        "and resizes image files of any size")) as e:
      model.predict(np.zeros(shape, np.uint8))
    _one_line(e)


def test_predict_preprocessed_refuses_other_scales(model, mnist, as_uint8):
  images = mnist[0][:4]
  # The efficient setup's model inputs: pixels / 256, in [0, 255/256].
  inputs = images.astype(np.float32) / 256.0
  out = model.predict_preprocessed(inputs)
  np.testing.assert_array_equal(out.predictions, as_uint8.predictions[:4])
  np.testing.assert_allclose(out.lengths, as_uint8.lengths[:4], atol=1e-6)
  np.testing.assert_allclose(model.preprocess(images), inputs, atol=1e-7)
  assert images.max() == 255  # so [0, 1] floats reach 1 > 255/256
  for wrong, what in ((images, "takes float model inputs, got uint8 images"),
                      (images.astype(np.float32), "lie in"),
                      (images / 255.0, "lie in")):
    with pytest.raises(ValueError, match=what) as e:
      model.predict_preprocessed(wrong)
    assert _one_line(e).endswith(
        "use predict() for images as uint8 0..255 or floats in [0, 1]")
  nan = inputs.copy()
  nan[0, 0, 0, 0] = np.nan
  with pytest.raises(ValueError, match="model inputs hold NaN or infinite"):
    model.predict_preprocessed(nan)
  with pytest.raises(ValueError, match=r"model inputs must be \[N, 28, 28, 1\],"
                     r" got \[4, 28, 28\]: predict\(\) takes images .* "
                     "predict_files image files of any size") as e:
    model.predict_preprocessed(inputs[..., 0])
  _one_line(e)


def test_prediction_fields_and_shapes(model, mnist, as_uint8):
  assert tuple(f.name for f in dataclasses.fields(trained.Prediction)) == (
      trained.OUTPUT_KEYS) == ("lengths", "predictions", "class_caps",
                               "reconstructions", "primary_caps", "coupling",
                               "scores")
  out = as_uint8
  assert out.lengths.shape == (10000, 10) and out.lengths.dtype == np.float32
  assert np.all((out.lengths >= 0) & (out.lengths < 1))
  assert out.predictions.shape == (10000,) and out.predictions.dtype.kind == "i"
  np.testing.assert_array_equal(out.predictions, np.argmax(out.lengths, -1))
  assert out.class_caps.shape == (10000, 10, 16)
  np.testing.assert_allclose(np.linalg.norm(out.class_caps, axis=-1),
                             out.lengths, atol=1e-5)
  assert out.primary_caps is None and out.coupling is None
  # Mapping access, for the keys that were computed.
  assert out["lengths"] is out.lengths and "lengths" in out
  assert "coupling" not in out
  with pytest.raises(KeyError):
    out["coupling"]  # pylint: disable=pointless-statement
  assert dict(out.items()).keys() == set(out.keys())
  # The routing's internals on request: Efficient-CapsNet's 16 primary
  # capsules of 8 dimensions and their attention coupling to the 10 classes.
  inside = model.predict(mnist[0][:3], ("primary_caps", "coupling"))
  assert inside.keys() == ("primary_caps", "coupling")
  assert inside.primary_caps.shape == (3, 16, 8)
  assert inside.coupling.shape == (3, 16, 10)
  with pytest.raises(ValueError, match=r"Unknown outputs \['logits'\]"):
    model.predict(mnist[0][:1], ("logits",))


def test_reconstructions_and_decode(model, mnist, as_uint8):
  """The bundle's decoder: predict's reconstructions come from the
  predicted capsule, decode rebuilds them, and a tweaked dimension of that
  capsule changes the image (the explorer's and Figure 4's call)."""
  assert model.has_decoder and META["decoder"] is True
  out = as_uint8
  assert out.keys() == trained.PREDICT_KEYS  # reconstructions by default
  assert out.reconstructions.shape == (10000, 28, 28, 1)
  assert out.reconstructions.min() >= 0 and out.reconstructions.max() <= 1
  caps, labels = out.class_caps[:4], out.predictions[:4]
  np.testing.assert_allclose(model.decode(caps, labels),
                             out.reconstructions[:4], atol=1e-5)
  # A reconstruction resembles its input: its SSE against the image in
  # [0, 1] is far below the image's own sum of squares.
  target = mnist[0][:4].astype(np.float32) / 255.0
  sse = np.sum((out.reconstructions[:4] - target) ** 2, axis=(1, 2, 3))
  assert np.all(sse < 0.5 * np.sum(target ** 2, axis=(1, 2, 3)))
  tweaked = caps.copy()
  tweaked[0, labels[0], 3] += 0.25
  moved = model.decode(tweaked, labels)
  assert np.abs(moved[0] - out.reconstructions[0]).max() > 0.05
  np.testing.assert_allclose(moved[1:], out.reconstructions[1:4], atol=1e-5)
  with pytest.raises(ValueError, match=r"decode takes class capsules "
                     r"\[N, K, D\] and labels \[N\], got \[10, 16\]"):
    model.decode(caps[0], labels[:1])
