"""capsnet_jax.data.affnist: the generated affNIST-style set and the reader
of the real .mat files (tested on small files of that layout written here)."""

import numpy as np
import pytest

from capsnet_jax.data import affnist
from capsnet_jax.errors import DataError


def _digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """[n, 28, 28] uint8 blobs of ink inside MNIST's 20x20 box."""
  rng = np.random.default_rng(seed)
  images = np.zeros((n, 28, 28), np.uint8)
  images[:, 4:24, 4:24] = rng.integers(0, 256, (n, 20, 20)) * (
      rng.random((n, 20, 20)) < 0.3)
  return images, rng.integers(0, 10, n)


def test_random_transforms_are_within_the_ranges_and_prefix_stable():
  full = affnist.random_transforms(500, seed=3)
  for name, (lo, hi) in (("rotation", (-20, 20)), ("shear", (-0.2, 0.2)),
                         ("scale_x", (0.8, 1.2)), ("scale_y", (0.8, 1.2))):
    assert full[name].min() >= lo and full[name].max() <= hi, name
    # Uniform over the range: both halves are drawn.
    assert full[name].min() < (lo + hi) / 2 < full[name].max(), name
  assert 0 <= full["u"].min() and full["u"].max() < 1
  first = affnist.random_transforms(7, seed=3)
  for name in first:
    np.testing.assert_array_equal(first[name], full[name][:7])
  other = affnist.random_transforms(7, seed=4)
  assert not np.array_equal(other["rotation"], first["rotation"])


def test_translation_range_of_a_single_pixel():
  # One ink pixel at (19, 19) of a 40x40 canvas, identity: its extent is
  # [18.5, 19.5] on each axis; it can move from x = 0 (shift -19) to
  # x = 39 (shift +20).
  image = np.zeros((1, 40, 40), np.uint8)
  image[0, 19, 19] = 255
  shifts = affnist.translations(image, np.eye(2)[None],
                                np.array([[0.0, 1.0]]))
  np.testing.assert_allclose(shifts, [[-19.0, 20.0]])
  shifts = affnist.translations(image, np.eye(2)[None],
                                np.array([[0.5, 0.5]]))
  np.testing.assert_allclose(shifts, [[0.5, 0.5]])


def test_generated_set_is_deterministic_and_keeps_the_digit_on_the_canvas():
  images, labels = _digits(64)
  x, y = affnist.generate(images, labels, seed=0)
  assert x.shape == (64, 40, 40) and x.dtype == np.uint8
  np.testing.assert_array_equal(y, labels)
  again, _ = affnist.generate(images, labels, seed=0)
  np.testing.assert_array_equal(again, x)
  other, _ = affnist.generate(images, labels, seed=1)
  assert not np.array_equal(other, x)
  # A subset gets the full set's first images.
  part, _ = affnist.generate(images[:5], labels[:5], seed=0)
  np.testing.assert_array_equal(part, x[:5])
  # Scales of 0.8-1.2 keep roughly the ink (area x scale_x x scale_y):
  # nothing was pushed off the canvas.
  params = affnist.random_transforms(64, seed=0)
  area = params["scale_x"] * params["scale_y"]
  ink_in = images.reshape(64, -1).sum(1).astype(float)
  ink_out = x.reshape(64, -1).sum(1).astype(float)
  np.testing.assert_allclose(ink_out / (ink_in * area), 1.0, atol=0.1)
  # Translations are significant: the ink's centre moves by several pixels.
  ys, xs = np.mgrid[0:40, 0:40]
  cx = (x * xs).reshape(64, -1).sum(1) / ink_out
  assert np.abs(cx - 19.5).max() > 5


def _write_mat(path, images: np.ndarray, labels: np.ndarray) -> None:
  """A .mat file of affNIST's layout: struct affNISTdata, image [1600, N]
  (column n is image n, row after row), label_int [1, N], and the other
  fields the real files carry."""
  sio = pytest.importorskip("scipy.io")
  n = len(labels)
  one_of_n = np.zeros((10, n), np.uint8)
  one_of_n[labels, np.arange(n)] = 1
  sio.savemat(str(path), {"affNISTdata": {
      "image": images.reshape(n, 1600).T.astype(np.uint8),
      "label_int": labels.reshape(1, n).astype(np.uint8),
      "label_one_of_n": one_of_n,
      "affine_transform": np.zeros((6, n)),
      "index": np.arange(1, n + 1).reshape(1, n)}})


def test_read_mat_of_affnist_layout(tmp_path):
  images = np.zeros((3, 40, 40), np.uint8)
  images[0, 0, 1] = 201  # row 0, column 1: not transposed
  images[1, 39, 0] = 202
  images[2, 5, 7] = 203
  labels = np.array([4, 0, 9])
  _write_mat(tmp_path / "test.mat", images, labels)
  x, y = affnist.read(str(tmp_path))
  np.testing.assert_array_equal(x, images)
  np.testing.assert_array_equal(y, [4, 0, 9])
  assert x.dtype == np.uint8


def test_read_batches_in_numeric_order(tmp_path):
  batches = tmp_path / "test_batches"
  batches.mkdir()
  for number in (1, 2, 10):
    images = np.full((2, 40, 40), number, np.uint8)
    _write_mat(batches / f"{number}.mat", images, np.array([number % 10] * 2))
  x, y = affnist.read(str(tmp_path))
  assert x[:, 0, 0].tolist() == [1, 1, 2, 2, 10, 10]
  assert y.tolist() == [1, 1, 2, 2, 0, 0]


def test_read_refuses_what_is_not_affnist(tmp_path):
  with pytest.raises(DataError, match="no affNIST test files"):
    affnist.read(str(tmp_path))
  sio = pytest.importorskip("scipy.io")
  sio.savemat(str(tmp_path / "test.mat"), {"other": np.zeros(3)})
  with pytest.raises(DataError, match="no affNISTdata"):
    affnist.read(str(tmp_path))
  sio.savemat(str(tmp_path / "test.mat"), {"affNISTdata": {
      "image": np.zeros((784, 2), np.uint8), "label_int": np.zeros((1, 2))}})
  with pytest.raises(DataError, match=r"expected \[1600, N\]"):
    affnist.read(str(tmp_path))
  (tmp_path / "test.mat").write_bytes(b"not a MATLAB file at all")
  with pytest.raises(DataError, match="not a readable MATLAB file"):
    affnist.read(str(tmp_path))
