"""On-device preprocessing and augmentation (jit-compatible, batched).

Synopsis::

  preprocess = augment.make_preprocess_fn("mnist", "reference", train=True)
  images = preprocess(batch_uint8, rng)  # float32 [B, 28, 28, 1] in [0, 1]

The pipelines keep images as uint8 on the host and do every random operation
here, inside the jit-compiled step: the host only gathers batches, so it never
becomes the bottleneck, and the randomness depends only on the step's rng.
Functions take and return batches [B, H, W, C]; each example draws its own
random values.

Pipelines (../shared/REFERENCE.md):

  mnist     any setup  train: shift by up to 2 px (zero padding)   test: as is
  smallnorb reference  train: random 32x32 crop of 48x48, brightness
                       U[0.875, 1.125], contrast U[0.5, 1.5]      test: centre crop
  smallnorb paper      (2 channels) train: random 32x32 crop; both: per-image
                       standardisation                             test: centre crop
  cifar10   reference  train: brightness U[0.75, 1.25], contrast U[0.2, 1.8],
                       horizontal flip                             test: as is
  cifar10   paper      train: random 24x24 crop, horizontal flip   test: centre crop

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


def is_standardized(dataset: str, setup: str) -> bool:
  """Whether the model input is standardised rather than in [0, 1]."""
  return dataset == "smallnorb" and setup == "paper"


def reconstruction_target(images: jax.Array, dataset: str, setup: str) -> jax.Array:
  """What the sigmoid decoder reconstructs: the input, min-max scaled to
  [0, 1] per image where the input is standardised."""
  if not is_standardized(dataset, setup):
    return images
  lo = jnp.min(images, axis=(1, 2, 3), keepdims=True)
  hi = jnp.max(images, axis=(1, 2, 3), keepdims=True)
  return (images - lo) / jnp.maximum(hi - lo, 1e-6)


def make_preprocess_fn(dataset: str, setup: str, train: bool) -> PreprocessFn:
  """fn(images uint8 [B, H, W, C] as stored, rng) -> float32 model input.

  The test-time function ignores ``rng`` and is deterministic.
  """
  key = (dataset, setup if dataset != "mnist" else "reference", train)

  def mnist_train(x, rng):
    return random_shift(to_float(x), rng, 2)

  def smallnorb_train(x, rng):
    x = random_crop(to_float(x), jax.random.fold_in(rng, 0), (32, 32))
    x = random_brightness(x, jax.random.fold_in(rng, 1), 0.875, 1.125)
    return random_contrast(x, jax.random.fold_in(rng, 2), 0.5, 1.5)

  def smallnorb_paper_train(x, rng):
    return per_image_standardization(random_crop(to_float(x), rng, (32, 32)))

  def cifar10_train(x, rng):
    x = random_brightness(to_float(x), jax.random.fold_in(rng, 0), 0.75, 1.25)
    x = random_contrast(x, jax.random.fold_in(rng, 1), 0.2, 1.8)
    return random_flip_lr(x, jax.random.fold_in(rng, 2))

  def cifar10_paper_train(x, rng):
    x = random_crop(to_float(x), jax.random.fold_in(rng, 0), (24, 24))
    return random_flip_lr(x, jax.random.fold_in(rng, 1))

  fns = {
      ("mnist", "reference", True): mnist_train,
      ("mnist", "reference", False): lambda x, rng: to_float(x),
      ("smallnorb", "reference", True): smallnorb_train,
      ("smallnorb", "reference", False):
          lambda x, rng: center_crop(to_float(x), (32, 32)),
      ("smallnorb", "paper", True): smallnorb_paper_train,
      ("smallnorb", "paper", False): lambda x, rng: per_image_standardization(
          center_crop(to_float(x), (32, 32))),
      ("cifar10", "reference", True): cifar10_train,
      ("cifar10", "reference", False): lambda x, rng: to_float(x),
      ("cifar10", "paper", True): cifar10_paper_train,
      ("cifar10", "paper", False): lambda x, rng: center_crop(to_float(x), (24, 24)),
  }
  if key not in fns:
    raise ValueError(f"no preprocessing for dataset={dataset!r} setup={setup!r}")
  return fns[key]
