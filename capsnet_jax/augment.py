"""On-device preprocessing and augmentation (jit-compatible, batched).

Synopsis::

  preprocess = augment.make_preprocess_fn("mnist", "reference", train=True)
  images = preprocess(batch_uint8, rng)  # float32 [B, 28, 28, 1] in [0, 1]

The pipelines keep images as uint8 on the host and do every random operation
here, inside the jit-compiled step: the host only gathers batches, so it never
becomes the bottleneck, and the randomness depends only on the step's rng.
Functions take and return batches [B, H, W, C]; each example draws its own
random values.

The pipelines of each (dataset, setup) are assembled from these ops in the
dataset registry, capsnet_jax.datasets.

Brightness and contrast follow torchvision's adjust_brightness/adjust_contrast
(the reference's ColorJitter), applied in that order, clipped to [0, 1].
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


def random_brightness(images: jax.Array, rng: jax.Array, low: float, high: float):
  return adjust_brightness(images, _uniform(rng, images.shape[0], low, high))


def random_contrast(images: jax.Array, rng: jax.Array, low: float, high: float):
  return adjust_contrast(images, _uniform(rng, images.shape[0], low, high))


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


def is_standardized(dataset: str, setup: str) -> bool:
  """Whether the model input has zero mean per image rather than being
  in [0, 1] or normalised by fixed constants."""
  from capsnet_jax import datasets  # pylint: disable=g-import-not-at-top
  return datasets.get(dataset, setup).standardized


def reconstruction_target(images: jax.Array, dataset: str, setup: str,
                          mask: jax.Array | None = None) -> jax.Array:
  """What the sigmoid decoder reconstructs (datasets.Spec.target)."""
  from capsnet_jax import datasets  # pylint: disable=g-import-not-at-top
  return datasets.get(dataset, setup).target(images, mask)


def make_preprocess_fn(dataset: str, setup: str, train: bool) -> PreprocessFn:
  """fn(images uint8 [B, H, W, C] as stored, rng) -> float32 model input,
  from the dataset registry (capsnet_jax.datasets). The test-time function
  ignores ``rng`` and is deterministic."""
  from capsnet_jax import datasets  # pylint: disable=g-import-not-at-top
  try:
    spec = datasets.get(dataset, setup)
  except ValueError:
    raise ValueError(f"no preprocessing for dataset={dataset!r} "
                     f"setup={setup!r}") from None
  if train:
    return spec.train_fn
  return lambda x, rng=None: spec.eval_fn(x)
