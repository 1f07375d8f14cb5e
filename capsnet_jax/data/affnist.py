"""affNIST's test set: generated from the MNIST test digits, or read from
the real files.

Synopsis::

  from capsnet_jax.data import affnist
  images, labels = affnist.generate(mnist_test_images, mnist_test_labels)  # uint8 [N, 40, 40]
  images, labels = affnist.read("affNIST")      # the real test set's .mat files

affNIST (Tijmen Tieleman, https://www.cs.toronto.edu/~tijmen/affNIST/): each
MNIST digit centred in a 40x40 image (a 6-pixel border) and transformed by
random affine maps, 32 per digit, with "significant translations"; the test
set transforms the 10,000 MNIST test digits (320,000 images), stored as
MATLAB files. The ranges used here (AFFNIST_RANGES) are those given for
affNIST (docs/usage.md, "Robustness", says where they come from and how
this set differs from the real one).

``generate`` draws, for the n-th digit, the n-th row of one array of
uniform numbers from numpy's default_rng(seed): a subset of the first k
digits gets the same images as the full set's first k. Each digit, centred
in 40x40, is scaled (x and y independently), sheared, rotated (in that
order, about the canvas centre; capsnet_jax.data.affine's conventions,
bilinear, zero fill), then moved by a translation drawn uniformly among
those that keep its ink's bounding box inside the canvas (none where the
box is larger than the canvas).

``read`` takes a folder holding the real test set: ``test.mat`` (the whole
set), or ``test_batches/1.mat`` ... ``32.mat`` (or ``1.mat`` ... in the
folder itself), each a MATLAB struct ``affNISTdata`` whose field ``image``
is uint8 [1600, N] (column n one image, its 1600 values row after row of
40) and ``label_int`` [1, N] the digits.
"""

from __future__ import annotations

import glob
import os
import re

import numpy as np

from capsnet_jax.data import affine
from capsnet_jax.errors import DataError

SIZE = 40  # affNIST's images are 40x40.
# Ranges of the random transforms (uniform): degrees, shear factor,
# horizontal and vertical scale (drawn independently).
AFFNIST_RANGES = dict(rotation=(-20.0, 20.0), shear=(-0.2, 0.2),
                      scale=(0.8, 1.2))
DEFAULT_SEED = 0


def random_transforms(n: int, seed: int = DEFAULT_SEED,
                      ranges: dict | None = None) -> dict[str, np.ndarray]:
  """The random parameters of ``n`` digits: rotation, shear, scale_x,
  scale_y [n] and the translation's position in its allowed range, u [n, 2]
  in [0, 1). Row k depends on ``seed`` and k only."""
  r = dict(AFFNIST_RANGES, **(ranges or {}))
  draws = np.random.default_rng(seed).uniform(size=(n, 6))

  def between(col, lo_hi):
    lo, hi = lo_hi
    return lo + (hi - lo) * draws[:, col]

  return dict(rotation=between(0, r["rotation"]), shear=between(1, r["shear"]),
              scale_x=between(2, r["scale"]), scale_y=between(3, r["scale"]),
              u=draws[:, 4:6])


def linear_part(params: dict[str, np.ndarray]) -> np.ndarray:
  """[n, 2, 2]: scale, then shear, then rotation."""
  return (affine.rotation(params["rotation"]) @ affine.shear(params["shear"])
          @ affine.scale(params["scale_x"], params["scale_y"]))


def _ink_boxes(images: np.ndarray) -> np.ndarray:
  """[n, 4] (x_min, x_max, y_min, y_max) of the pixels > 0 of [n, H, W]
  images (the centre pixel for a blank image)."""
  n, h, w = images.shape
  ink = images > 0
  cols, rows = ink.any(axis=1), ink.any(axis=2)
  boxes = np.empty((n, 4))
  for k, (c, r) in enumerate(zip(cols, rows)):
    xs, ys = np.flatnonzero(c), np.flatnonzero(r)
    if len(xs) == 0:
      xs, ys = np.array([(w - 1) / 2]), np.array([(h - 1) / 2])
    boxes[k] = xs[0], xs[-1], ys[0], ys[-1]
  return boxes


def translations(images: np.ndarray, matrices: np.ndarray, u: np.ndarray,
                 size: int = SIZE) -> np.ndarray:
  """[n, 2] shifts (x, y) that keep each image's transformed ink box (the
  four corners of its bounding box, each pixel counted with its half-pixel
  extent, under ``matrices`` about the centre) inside a ``size`` canvas:
  low + u * (high - low) between the smallest and largest such shift, 0
  where the box does not fit."""
  images = np.asarray(images)
  if images.ndim == 4:
    images = images[..., 0]
  c = (size - 1) / 2
  boxes = _ink_boxes(images) + np.array([-0.5, 0.5, -0.5, 0.5])
  corners = np.stack([boxes[:, [0, 2]], boxes[:, [1, 2]], boxes[:, [0, 3]],
                      boxes[:, [1, 3]]], axis=1) - c  # [n, 4, 2]
  moved = np.einsum("nij,nkj->nki", matrices, corners) + c
  lo = -0.5 - moved.min(axis=1)  # the smallest shift keeping it inside
  hi = (size - 0.5) - moved.max(axis=1)
  shift = lo + u * (hi - lo)
  return np.where(hi >= lo, shift, 0.0)


def generate(images: np.ndarray, labels: np.ndarray, seed: int = DEFAULT_SEED,
             ranges: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The affNIST-style set of MNIST digits: one random affine transform of
  each (see the module docstring).

  Args:
    images: uint8 [N, 28, 28] or [N, 28, 28, 1] (MNIST as stored).
    labels: [N].
    seed, ranges: the random draws (default AFFNIST_RANGES).

  Returns:
    uint8 [N, 40, 40] images and int64 [N] labels.
  """
  x = np.asarray(images)
  if x.ndim == 4:
    x = x[..., 0]
  canvas = affine.fit(x, SIZE)
  params = random_transforms(len(canvas), seed, ranges)
  matrices = linear_part(params)
  shifts = translations(canvas, matrices, params["u"])
  out = affine.warp(canvas, matrices, shifts)
  return out, np.asarray(labels).astype(np.int64).reshape(-1)


# --------------------------------------------------------------------------
# The real files.


def _number(path: str) -> int:
  m = re.search(r"(\d+)\.mat$", os.path.basename(path))
  return int(m.group(1)) if m else -1


def test_files(folder: str) -> list[str]:
  """The .mat files of the real test set in ``folder``, in order."""
  whole = os.path.join(folder, "test.mat")
  if os.path.isfile(whole):
    return [whole]
  for where in (os.path.join(folder, "test_batches"), folder):
    found = [p for p in glob.glob(os.path.join(where, "*.mat"))
             if _number(p) >= 0]
    if found:
      return sorted(found, key=_number)
  raise DataError(f"no affNIST test files in {folder!r}: expected test.mat, "
                  "or test_batches/1.mat ... 32.mat (affNIST's "
                  "transformed test set, https://www.cs.toronto.edu/~tijmen/"
                  "affNIST/)")


def read_mat(path: str) -> tuple[np.ndarray, np.ndarray]:
  """uint8 [N, 40, 40] images and int64 [N] labels of one affNIST .mat file."""
  from scipy import io as sio  # pylint: disable=g-import-not-at-top
  try:
    data = sio.loadmat(path, struct_as_record=True, squeeze_me=False)
  except Exception as e:  # pylint: disable=broad-except  # scipy's parser
    # raises many kinds (MatReadError, IndexError, ...) on a foreign file.
    raise DataError(f"{path}: not a readable MATLAB file ({e})") from None
  if "affNISTdata" not in data:
    raise DataError(f"{path}: no affNISTdata struct (it holds "
                    f"{sorted(k for k in data if not k.startswith('__'))})")
  struct = data["affNISTdata"]
  fields = struct.dtype.names or ()
  for name in ("image", "label_int"):
    if name not in fields:
      raise DataError(f"{path}: affNISTdata has no field {name!r} (it has "
                      f"{', '.join(fields)})")
  image = np.asarray(struct["image"][0, 0])
  label = np.asarray(struct["label_int"][0, 0]).reshape(-1)
  if image.ndim != 2 or image.shape[0] != SIZE * SIZE:
    raise DataError(f"{path}: affNISTdata.image is {list(image.shape)}, "
                    f"expected [{SIZE * SIZE}, N]")
  if image.shape[1] != len(label):
    raise DataError(f"{path}: {image.shape[1]} images but {len(label)} "
                    "labels")
  images = image.T.reshape(-1, SIZE, SIZE)
  return images.astype(np.uint8), label.astype(np.int64)


def read(folder: str) -> tuple[np.ndarray, np.ndarray]:
  """The real affNIST test set in ``folder`` (see test_files), concatenated."""
  parts = [read_mat(p) for p in test_files(folder)]
  return (np.concatenate([p[0] for p in parts]),
          np.concatenate([p[1] for p in parts]))
