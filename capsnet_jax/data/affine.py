"""Affine transforms of image batches on the host (numpy): the robustness
sweeps of --mode=robustness and the affNIST-style set.

Synopsis::

  from capsnet_jax.data import affine
  rotated = affine.warp(images, affine.rotation(30.0))         # uint8 [N, H, W(, C)]
  moved = affine.warp(images, affine.identity(), shift=(1, 0))  # 1 px right
  canvas = affine.fit(images, 40)                              # centred in 40x40

Conventions (what every function here means by a transform):

- Coordinates: pixel (row i, column j) has its centre at (x, y) = (j, i); x
  points right and y down, as the image is displayed.
- The centre of every transform is the image's centre ((W - 1) / 2,
  (H - 1) / 2): the middle pixel's centre for odd sizes, the corner the
  four middle pixels share for even ones (14 pixels either side of a 28x28
  MNIST image). A 90-degree rotation of a square image therefore permutes its
  pixels exactly, as np.rot90 does.
- A transform is a 2x2 matrix ``A`` and a shift ``t`` (pixels, x right, y
  down): the input point p lands on c + A (p - c) + t. Rotations are
  counter-clockwise as displayed for positive angles; a positive shear
  slants upright strokes to the right like italics (x' = x - s y, y down);
  scales above 1 enlarge.
- Inverse mapping: each output pixel q takes the input at
  c + A^-1 (q - c - t), bilinearly interpolated between the four nearest
  input pixels; input outside the image is 0 (black, MNIST's background).
- uint8 images come back as uint8 (rounded to the nearest integer), float
  images as float32. The identity returns the input values exactly.
"""

from __future__ import annotations

import numpy as np

# Matrix entries this close to an integer are snapped to it, so that
# rotations by multiples of 90 degrees move pixels exactly.
_SNAP = 1e-12
# Images warped at once (bounds the temporary float64 coordinate arrays).
_CHUNK = 1024


def _snap(m: np.ndarray) -> np.ndarray:
  r = np.round(m)
  return np.where(np.abs(m - r) < _SNAP, r, m)


def identity() -> np.ndarray:
  """The 2x2 identity."""
  return np.eye(2)


def rotation(degrees) -> np.ndarray:
  """[..., 2, 2]: counter-clockwise (as displayed) by ``degrees``."""
  rad = np.deg2rad(np.asarray(degrees, np.float64))
  cos, sin = np.cos(rad), np.sin(rad)
  # y points down: a counter-clockwise turn on the screen takes (1, 0)
  # (right) to (0, -1) (up).
  return _snap(np.stack([np.stack([cos, sin], -1),
                         np.stack([-sin, cos], -1)], -2))


def shear(factor) -> np.ndarray:
  """[..., 2, 2]: horizontal shear, x' = x - factor * y (y down), so a
  positive factor moves the top of the image right (italics)."""
  s = np.asarray(factor, np.float64)
  one, zero = np.ones_like(s), np.zeros_like(s)
  return np.stack([np.stack([one, -s], -1), np.stack([zero, one], -1)], -2)


def scale(sx, sy=None) -> np.ndarray:
  """[..., 2, 2]: scales x by ``sx`` and y by ``sy`` (default ``sx``)."""
  sx = np.asarray(sx, np.float64)
  sy = sx if sy is None else np.asarray(sy, np.float64)
  zero = np.zeros(np.broadcast(sx, sy).shape)
  return np.stack([np.stack([sx + zero, zero], -1),
                   np.stack([zero, sy + zero], -1)], -2)


def _as_batch(images: np.ndarray) -> tuple[np.ndarray, bool]:
  """[N, H, W, C] from [N, H, W] or [N, H, W, C]; whether a channel axis
  was added."""
  images = np.asarray(images)
  if images.ndim == 3:
    return images[..., None], True
  if images.ndim != 4:
    raise ValueError(f"images must be [N, H, W] or [N, H, W, C], got "
                     f"{list(images.shape)}")
  return images, False


def warp(images, matrix, shift=(0.0, 0.0), out_size: int | None = None
         ) -> np.ndarray:
  """``images`` under the affine map (``matrix``, ``shift``) about their
  centre (see the module's conventions).

  Args:
    images: [N, H, W] or [N, H, W, C], uint8 or float.
    matrix: [2, 2] for every image, or [N, 2, 2].
    shift: (tx, ty) pixels for every image, or [N, 2].
    out_size: the output's height and width (square); default the input's.
      The output's centre is the input's centre moved to the output's
      centre, so a larger output pads the transformed image evenly.

  Returns:
    The transformed images, [N, out, out(, C)], uint8 (rounded) for uint8
    input, else float32.
  """
  x, squeezed = _as_batch(images)
  n, h, w, c = x.shape
  oh = ow = int(out_size) if out_size else None
  if oh is None:
    oh, ow = h, w
  a = np.broadcast_to(np.asarray(matrix, np.float64), (n, 2, 2))
  t = np.broadcast_to(np.asarray(shift, np.float64), (n, 2))
  inv = np.linalg.inv(a)
  cin = np.array([(w - 1) / 2, (h - 1) / 2])
  cout = np.array([(ow - 1) / 2, (oh - 1) / 2])
  qy, qx = np.meshgrid(np.arange(oh, dtype=np.float64),
                       np.arange(ow, dtype=np.float64), indexing="ij")
  q = np.stack([qx.ravel(), qy.ravel()])  # [2, P]
  # A zero border of one pixel: neighbours outside the image read 0.
  padded = np.zeros((n, h + 2, w + 2, c), np.float32)
  padded[:, 1:-1, 1:-1] = x
  out = np.empty((n, oh * ow, c), np.float32)
  for lo in range(0, n, _CHUNK):
    hi = min(n, lo + _CHUNK)
    rel = q[None] - (cout + t[lo:hi])[:, :, None]  # [B, 2, P]
    src = np.einsum("bij,bjp->bip", inv[lo:hi], rel) + cin[None, :, None]
    sx, sy = src[:, 0], src[:, 1]  # [B, P]
    x0, y0 = np.floor(sx), np.floor(sy)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    # Indices into the padded image, clipped onto its zero border.
    xi0 = np.clip(x0 + 1, 0, w + 1).astype(np.intp)
    xi1 = np.clip(x0 + 2, 0, w + 1).astype(np.intp)
    yi0 = np.clip(y0 + 1, 0, h + 1).astype(np.intp)
    yi1 = np.clip(y0 + 2, 0, h + 1).astype(np.intp)
    b = np.arange(lo, hi)[:, None]
    out[lo:hi] = ((1 - fy) * ((1 - fx) * padded[b, yi0, xi0] +
                              fx * padded[b, yi0, xi1]) +
                  fy * ((1 - fx) * padded[b, yi1, xi0] +
                        fx * padded[b, yi1, xi1]))
  out = out.reshape(n, oh, ow, c)
  if x.dtype == np.uint8:
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
  return out[..., 0] if squeezed else out


def fit(images, size: int) -> np.ndarray:
  """Square images centred in a ``size`` x ``size`` frame: padded with zeros
  when smaller (28 -> 40 adds 6 pixels on every side, affNIST's
  "just centred" images), centre-cropped when larger (40 -> 28 keeps rows and
  columns 6..33). Same dtype and rank as the input."""
  x, squeezed = _as_batch(images)
  h, w = x.shape[1:3]
  if h != w:
    raise ValueError(f"fit takes square images, got {h}x{w}")
  if h < size:
    lo = (size - h) // 2
    out = np.zeros((len(x), size, size, x.shape[3]), x.dtype)
    out[:, lo:lo + h, lo:lo + w] = x
  else:
    lo = (h - size) // 2
    out = x[:, lo:lo + size, lo:lo + size]
  return out[..., 0] if squeezed else out
