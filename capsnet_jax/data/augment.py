"""On-device preprocessing and augmentation (jit-compatible, batched).

Synopsis::

  x = augment.random_shift(augment.to_float(batch_uint8), rng, 2)
  preprocess = datasets.get("mnist", "paper").preprocess(train=True)

The pipelines keep images as uint8 on the host and do every random operation
here, inside the jit-compiled step: the host only gathers batches, so it never
becomes the bottleneck, and the randomness depends only on the step's rng.
Functions take and return batches [B, H, W, C]; each example draws its own
random values.

The pipelines of each (dataset, setup) are assembled from these ops in the
dataset registry, capsnet_jax.data.datasets.

Brightness and contrast follow torchvision's adjust_brightness/adjust_contrast,
clipped to [0, 1]; color_jitter applies them as the reference's ColorJitter
does, in a random order per image.
"""

from typing import Callable

import jax
import jax.numpy as jnp

PreprocessFn = Callable[[jax.Array, jax.Array], jax.Array]

# torchvision's rgb_to_grayscale weights (ITU-R 601-2 luma).
_LUMA = (0.299, 0.587, 0.114)


def to_float(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [0, 1]."""
  return images.astype(jnp.float32) / 255.0


def _crop_each(images: jax.Array, offsets: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Per-example crops of ``size`` at ``offsets`` [B, 2] (row, col)."""
  c = images.shape[-1]
  crop = lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (*size, c))
  return jax.vmap(crop)(images, offsets)


def random_crop(images: jax.Array, rng: jax.Array, size: tuple[int, int]) -> jax.Array:
  """A uniformly placed ``size`` crop of each image."""
  b, h, w, _ = images.shape
  rows = jax.random.randint(jax.random.fold_in(rng, 0), (b,), 0, h - size[0] + 1)
  cols = jax.random.randint(jax.random.fold_in(rng, 1), (b,), 0, w - size[1] + 1)
  return _crop_each(images, jnp.stack([rows, cols], -1), size)


def center_crop(images: jax.Array, size: tuple[int, int]) -> jax.Array:
  """The central ``size`` crop (the top-left of the two middles if odd)."""
  h, w = images.shape[1:3]
  top, left = (h - size[0]) // 2, (w - size[1]) // 2
  return images[:, top:top + size[0], left:left + size[1]]


def random_shift(images: jax.Array, rng: jax.Array, max_shift: int = 2) -> jax.Array:
  """Shifts each image by up to ``max_shift`` px per axis, zero-filling."""
  pad = ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0))
  return random_crop(jnp.pad(images, pad), rng, images.shape[1:3])


def random_flip_lr(images: jax.Array, rng: jax.Array) -> jax.Array:
  """Mirrors each image left-right with probability 1/2."""
  flip = jax.random.bernoulli(rng, 0.5, (images.shape[0], 1, 1, 1))
  return jnp.where(flip, images[:, :, ::-1], images)


def adjust_brightness(images: jax.Array, factor: jax.Array) -> jax.Array:
  """clip(image * factor, 0, 1); ``factor`` per example [B]."""
  return jnp.clip(images * factor[:, None, None, None], 0.0, 1.0)


def adjust_contrast(images: jax.Array, factor: jax.Array) -> jax.Array:
  """Blend with the mean grey level: clip(f * x + (1 - f) * mean, 0, 1).

  The mean is over the grayscale image (luma weights for 3 channels, the
  channel mean otherwise), as torchvision.transforms.functional does.
  """
  c = images.shape[-1]
  if c == 3:
    gray = jnp.tensordot(images, jnp.asarray(_LUMA, images.dtype), axes=([-1], [0]))
  else:
    gray = jnp.mean(images, axis=-1)
  mean = jnp.mean(gray, axis=(1, 2))[:, None, None, None]
  f = factor[:, None, None, None]
  return jnp.clip(f * images + (1.0 - f) * mean, 0.0, 1.0)


def _uniform(rng: jax.Array, n: int, low: float, high: float) -> jax.Array:
  return jax.random.uniform(rng, (n,), minval=low, maxval=high)


def color_jitter(images: jax.Array, rng: jax.Array,
                 brightness: tuple[float, float],
                 contrast: tuple[float, float]) -> jax.Array:
  """torchvision's ColorJitter(brightness=(lo, hi), contrast=(lo, hi)):
  apply_jitter with jitter_params' draws."""
  return apply_jitter(images, *jitter_params(rng, images.shape[0], brightness,
                                             contrast))


def jitter_params(rng: jax.Array, n: int, brightness: tuple[float, float],
                  contrast: tuple[float, float]
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """ColorJitter's draws for ``n`` images: brightness and contrast factors
  uniform in their ranges, and whether contrast comes first (probability
  1/2: ColorJitter applies its adjustments in a random permutation drawn
  for every image)."""
  return (_uniform(jax.random.fold_in(rng, 0), n, *brightness),
          _uniform(jax.random.fold_in(rng, 1), n, *contrast),
          jax.random.bernoulli(jax.random.fold_in(rng, 2), 0.5, (n,)))


def apply_jitter(images: jax.Array, brightness: jax.Array, contrast: jax.Array,
                 contrast_first: jax.Array) -> jax.Array:
  """Brightness then contrast, or contrast then brightness where
  ``contrast_first``, per image [B] (the orders differ where a value is
  clipped). Computed in float, as on a tensor (a PIL image would also be
  rounded to 8 bits after each adjustment)."""
  first = contrast_first[:, None, None, None]
  return jnp.where(
      first, adjust_brightness(adjust_contrast(images, contrast), brightness),
      adjust_contrast(adjust_brightness(images, brightness), contrast))


def per_image_standardization(images: jax.Array) -> jax.Array:
  """(x - mean) / max(std, 1/sqrt(N)) per image, as tf.image does."""
  n = images.shape[1] * images.shape[2] * images.shape[3]
  mean = jnp.mean(images, axis=(1, 2, 3), keepdims=True)
  std = jnp.std(images, axis=(1, 2, 3), keepdims=True)
  return (images - mean) / jnp.maximum(std, 1.0 / jnp.sqrt(float(n)))


def random_translate(images: jax.Array, rng: jax.Array,
                     fraction: float) -> jax.Array:
  """Integer shifts drawn as torchvision's RandomAffine(translate=fraction).

  Per example and axis: round(U(-fraction * size, fraction * size)) px, zero
  fill. For MNIST and 0.08 that is U(-2.24, 2.24) rounded: -2..2 with
  probabilities 0.165, 0.223, 0.223, 0.223, 0.165 (not uniform).
  """
  b, h, w, _ = images.shape
  limit = fraction * max(h, w)
  pad = int(round(limit))
  shifts = jnp.round(jax.random.uniform(rng, (b, 2), minval=-limit,
                                        maxval=limit)).astype(jnp.int32)
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  return _crop_each(padded, pad + shifts, (h, w))


def random_brightness_delta(images: jax.Array, rng: jax.Array,
                            max_delta: float) -> jax.Array:
  """x + U(-max_delta, max_delta) per example, unclipped (tf.image's
  random_brightness)."""
  delta = _uniform(rng, images.shape[0], -max_delta, max_delta)
  return images + delta[:, None, None, None]


def random_contrast_tf(images: jax.Array, rng: jax.Array, low: float,
                       high: float) -> jax.Array:
  """(x - mean) * f + mean with the mean per example and channel, unclipped
  (tf.image's random_contrast)."""
  f = _uniform(rng, images.shape[0], low, high)[:, None, None, None]
  mean = jnp.mean(images, axis=(1, 2), keepdims=True)
  return (images - mean) * f + mean


# --------------------------------------------------------------------------
# Efficient-CapsNet's MNIST augmentation (utils/pre_process_mnist.py of
# EscVM/Efficient-CapsNet), batched: each op has a deterministic form taking
# per-example amounts, and a random form drawing them as the authors do.


def _clipped_normal(rng: jax.Array, shape, std: float = 0.33,
                    bound: float = 0.9999) -> jax.Array:
  return jnp.clip(std * jax.random.normal(rng, shape), -bound, bound)


def rotate(images: jax.Array, degrees: jax.Array) -> jax.Array:
  """Rotates each image counter-clockwise (as displayed) by ``degrees`` [B]
  about the point (W/2, H/2), bilinear, zero fill: cv2.warpAffine of
  cv2.getRotationMatrix2D((W/2, H/2), degrees, 1), in float arithmetic
  (OpenCV rounds coordinates to 1/32 px)."""
  _, h, w, _ = images.shape
  cy, cx = h / 2, w / 2
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32),
                        jnp.arange(w, dtype=jnp.float32), indexing="ij")

  def one(image, deg):
    rad = jnp.deg2rad(deg)
    cos, sin = jnp.cos(rad), jnp.sin(rad)
    # Inverse of OpenCV's map dst = [[cos, sin], [-sin, cos]] (src - c) + c.
    src_x = cx + cos * (xs - cx) - sin * (ys - cy)
    src_y = cy + sin * (xs - cx) + cos * (ys - cy)
    sample = lambda ch: jax.scipy.ndimage.map_coordinates(
        ch, [src_y, src_x], order=1, mode="constant", cval=0.0)
    return jax.vmap(sample, in_axes=-1, out_axes=-1)(image)

  return jax.vmap(one)(images, degrees.astype(jnp.float32))


# The largest |angle| each data_setup rotates training images by (the others:
# none): int(30 * clip(., +-0.9999)) truncates to at most 29 degrees.
TRAINING_ROTATION_DEGREES = {"efficient": 29}


def random_rotate_efficient(images: jax.Array, rng: jax.Array,
                            max_degrees: float = 30.0) -> jax.Array:
  """Their image_rotate_random: with probability 1/2, a rotation by
  int(30 * clip(N(0, 0.33), +-0.9999)) degrees (truncated towards zero)."""
  b = images.shape[0]
  degrees = jnp.trunc(max_degrees * _clipped_normal(jax.random.fold_in(rng, 0), (b,)))
  apply = jax.random.bernoulli(jax.random.fold_in(rng, 1), 0.5, (b,))
  return rotate(images, jnp.where(apply, degrees, 0.0))


def _margins(present: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Empty lines before the first and after the last True of [B, L] (0 and 0
  where all are False)."""
  first = jnp.argmax(present, axis=-1)
  after_last = jnp.argmax(present[:, ::-1], axis=-1)
  return first, after_last


def shift_within_margins(images: jax.Array, amounts: jax.Array,
                         directions: jax.Array) -> jax.Array:
  """Their image_shift_rand, with its random draws as arguments.

  Per axis (rows, then columns) the shift is floor(-a * m_before) towards
  the top/left (direction 0) or floor(a * (1 + m_after)) towards the
  bottom/right (direction 1), where m are the empty (all-zero) lines around
  the content, so the content stays inside the frame: a roll that only
  wraps zeros.

  Args:
    images: [B, H, W, C].
    amounts: [B, 2] in [0, 1): a for (rows, columns).
    directions: [B, 2] integers in {0, 1}.
  """
  rows = jnp.sum(images, axis=(2, 3)) > 0  # [B, H]
  cols = jnp.sum(images, axis=(1, 3)) > 0  # [B, W]
  shifts = []
  for axis, present in enumerate((rows, cols)):
    before, after = _margins(present)
    a = amounts[:, axis]
    shifts.append(jnp.where(
        directions[:, axis] == 0,
        jnp.floor(-a * before.astype(jnp.float32)),
        jnp.floor(a * (1.0 + after.astype(jnp.float32)))).astype(jnp.int32))
  roll = lambda im, dy, dx: jnp.roll(im, (dy, dx), axis=(0, 1))
  return jax.vmap(roll)(images, shifts[0], shifts[1])


def random_shift_within_margins(images: jax.Array, rng: jax.Array) -> jax.Array:
  """Amounts min(|N(0, 0.33)|, 0.9999), directions by a fair coin."""
  b = images.shape[0]
  amounts = jnp.abs(_clipped_normal(jax.random.fold_in(rng, 0), (b, 2)))
  directions = jax.random.bernoulli(jax.random.fold_in(rng, 1), 0.5, (b, 2))
  return shift_within_margins(images, amounts, directions.astype(jnp.int32))


def squish(images: jax.Array, width_cut: jax.Array,
           extra_offset: jax.Array) -> jax.Array:
  """Their image_squish_random, with its random draws as arguments.

  Each image is resized (Lanczos-3 with antialiasing, as tf.image.resize) to
  W - width_cut columns and placed at column width_cut // 2 + extra_offset of
  a zero image of the original size; rows are unchanged.

  Args:
    images: [B, H, W, C].
    width_cut: [B] integers in [1, W / 4].
    extra_offset: [B] integers in {0, 1}.
  """
  _, _, w, _ = images.shape
  scale = (w - width_cut.astype(jnp.float32)) / w
  offset = (width_cut // 2 + extra_offset).astype(jnp.float32)

  def one(image, s, t):
    return jax.image.scale_and_translate(
        image, image.shape, (1,), s[None], t[None], method="lanczos3",
        antialias=True)

  return jax.vmap(one)(images, scale, offset)


def random_squish(images: jax.Array, rng: jax.Array) -> jax.Array:
  """width_cut = floor(7 a + 1) (for 28 px: W/4 = 7), extra_offset =
  floor(2 a'), a, a' ~ min(|N(0, 0.33)|, 0.9999)."""
  b, _, w, _ = images.shape
  a = jnp.abs(_clipped_normal(rng, (b, 2)))
  width_cut = jnp.floor(a[:, 0] * (w / 4) + 1).astype(jnp.int32)
  extra_offset = jnp.floor(a[:, 1] * 2).astype(jnp.int32)
  return squish(images, width_cut, extra_offset)


def erase(images: jax.Array, rows: jax.Array, cols: jax.Array,
          size: int = 4) -> jax.Array:
  """Zeroes the size x size patch at (rows[i], cols[i]) (top-left) of image i."""
  _, h, w, _ = images.shape
  r = jnp.arange(h)[None, :, None]
  c = jnp.arange(w)[None, None, :]
  inside = ((r >= rows[:, None, None]) & (r < rows[:, None, None] + size)
            & (c >= cols[:, None, None]) & (c < cols[:, None, None] + size))
  return jnp.where(inside[..., None], 0.0, images)


def random_erase(images: jax.Array, rng: jax.Array, size: int = 4,
                 low: int = 4, count: int = 19) -> jax.Array:
  """Their image_erase_random: a size x size patch whose top-left corner is
  uniform over [low, low + count - 1]^2 ([4, 22]^2, their constants for
  28 px) set to zero."""
  u = jax.random.uniform(rng, (images.shape[0], 2))
  corner = low + jnp.floor(u * count).astype(jnp.int32)
  return erase(images, corner[:, 0], corner[:, 1], size)


def efficient_mnist_train(images: jax.Array, rng: jax.Array) -> jax.Array:
  """uint8 MNIST batch -> Efficient-CapsNet's augmented training input:
  / 256, rotate, shift, squish, erase (their order). Lanczos ringing may
  leave values slightly outside [0, 1], as in their pipeline."""
  x = images.astype(jnp.float32) / 256.0
  x = random_rotate_efficient(x, jax.random.fold_in(rng, 0))
  x = random_shift_within_margins(x, jax.random.fold_in(rng, 1))
  x = random_squish(x, jax.random.fold_in(rng, 2))
  return random_erase(x, jax.random.fold_in(rng, 3))
