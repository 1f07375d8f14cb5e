"""Preprocessing ops on small fixed inputs: exact values and ranges, eagerly
and inside jit (as the train step runs them)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from capsnet_jax import augment


def _ramp(b=2, h=6, w=6, c=1):
  return np.arange(b * h * w * c, dtype=np.float32).reshape(b, h, w, c) / (b * h * w * c)


@pytest.mark.parametrize("jit", [False, True])
def test_random_shift_is_a_zero_filled_translation(jit):
  x = _ramp(b=8)
  fn = jax.jit(augment.random_shift, static_argnums=2) if jit else augment.random_shift
  y = np.asarray(fn(jnp.asarray(x), jax.random.key(3), 2))
  padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
  shifts = set()
  for i in range(8):
    matches = [(r, c) for r in range(5) for c in range(5)
               if np.array_equal(padded[i, r:r + 6, c:c + 6], y[i])]
    assert len(matches) == 1, i
    shifts.add(matches[0])
  assert len(shifts) > 1  # examples draw their own shifts


def test_center_and_random_crop():
  x = _ramp(b=3, h=5, w=7)
  np.testing.assert_array_equal(augment.center_crop(x, (3, 3)), x[:, 1:4, 2:5])
  y = np.asarray(augment.random_crop(jnp.asarray(x), jax.random.key(0), (3, 3)))
  for i in range(3):
    assert any(np.array_equal(x[i, r:r + 3, c:c + 3], y[i])
               for r in range(3) for c in range(5))


@pytest.mark.parametrize("jit", [False, True])
def test_brightness_and_contrast_follow_torchvision(jit):
  x = np.array([[[[0.2], [0.8]], [[0.4], [1.0]]]], np.float32)  # [1, 2, 2, 1]
  b = jax.jit(augment.adjust_brightness) if jit else augment.adjust_brightness
  c = jax.jit(augment.adjust_contrast) if jit else augment.adjust_contrast
  np.testing.assert_allclose(b(x, jnp.array([1.5])),
                             [[[[0.3], [1.0]], [[0.6], [1.0]]]], atol=1e-6)
  # mean 0.6; 0.5 * x + 0.5 * 0.6
  np.testing.assert_allclose(c(x, jnp.array([0.5])),
                             [[[[0.4], [0.7]], [[0.5], [0.8]]]], atol=1e-6)
  # RGB: the mean is over the luma image.
  rgb = np.zeros((1, 1, 2, 3), np.float32)
  rgb[0, 0, 0] = (1.0, 0.0, 0.0)
  mean = 0.299 / 2
  np.testing.assert_allclose(c(rgb, jnp.array([0.0])), np.full_like(rgb, mean),
                             atol=1e-6)


def test_random_jitter_ranges_and_flip():
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(64, 4, 4, 3)), jnp.float32)
  y = augment.random_contrast(augment.random_brightness(
      x, jax.random.key(0), 0.75, 1.25), jax.random.key(1), 0.2, 1.8)
  assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
  f = np.asarray(augment.random_flip_lr(x, jax.random.key(2)))
  flipped = [np.array_equal(f[i], np.asarray(x)[i, :, ::-1]) for i in range(64)]
  kept = [np.array_equal(f[i], np.asarray(x)[i]) for i in range(64)]
  assert all(a or b for a, b in zip(flipped, kept))
  assert 10 < sum(flipped) < 54


def test_per_image_standardization_matches_tensorflow():
  tf = pytest.importorskip("tensorflow")
  x = np.random.default_rng(1).uniform(size=(3, 5, 5, 2)).astype(np.float32)
  x[2] = 0.5  # constant image: std floor 1/sqrt(N)
  expected = tf.image.per_image_standardization(x).numpy()
  np.testing.assert_allclose(augment.per_image_standardization(x), expected,
                             atol=1e-5)


@pytest.mark.parametrize("dataset,setup,stored,model_input", [
    ("mnist", "reference", (28, 28, 1), (28, 28, 1)),
    ("smallnorb", "reference", (48, 48, 1), (32, 32, 1)),
    ("smallnorb", "paper", (48, 48, 2), (32, 32, 2)),
    ("cifar10", "reference", (32, 32, 3), (32, 32, 3)),
    ("cifar10", "paper", (32, 32, 3), (24, 24, 3)),
])
def test_preprocess_shapes_ranges_and_determinism(dataset, setup, stored,
                                                  model_input):
  raw = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, *stored)),
                    jnp.uint8)
  train_fn = augment.make_preprocess_fn(dataset, setup, True)
  eval_fn = augment.make_preprocess_fn(dataset, setup, False)
  for fn in (train_fn, eval_fn):
    y = fn(raw, jax.random.key(0))
    assert y.shape == (4, *model_input) and y.dtype == jnp.float32
    if augment.is_standardized(dataset, setup):
      np.testing.assert_allclose(jnp.mean(y, axis=(1, 2, 3)), 0, atol=1e-5)
  # Test time ignores the rng; training does not.
  np.testing.assert_array_equal(eval_fn(raw, jax.random.key(0)),
                                eval_fn(raw, jax.random.key(1)))
  assert not np.array_equal(train_fn(raw, jax.random.key(0)),
                            train_fn(raw, jax.random.key(1)))
  target = augment.reconstruction_target(eval_fn(raw, None), dataset, setup)
  assert float(target.min()) >= 0 and float(target.max()) <= 1


def test_random_translate_draws_rounded_uniform_shifts():
  """RandomAffine(translate=0.08) on 28 px: round(U(-2.24, 2.24)), so -2..2
  with probabilities (0.74, 1, 1, 1, 0.74) / 4.48."""
  x = np.zeros((4000, 9, 9, 1), np.float32)
  x[:, 4, 4] = 1.0  # a dot in the middle of a 9x9 image; 0.08 * 9 = 0.72
  y = np.asarray(augment.random_translate(jnp.asarray(x), jax.random.key(0), 0.08))
  rows, cols = np.nonzero(y[..., 0].sum(axis=2) > 0)[1], None
  assert set(np.unique(rows)) == {3, 4, 5}  # round(U(-0.72, 0.72)): -1..1
  x = np.zeros((20000, 28, 28, 1), np.float32)
  x[:, 14, 14] = 1.0
  y = np.asarray(augment.random_translate(jnp.asarray(x), jax.random.key(1), 0.08))
  assert np.all(y.reshape(20000, -1).sum(axis=1) == 1.0)  # moved, not lost
  r, c = np.unravel_index(y.reshape(20000, -1).argmax(axis=1), (28, 28))
  for offsets in (r - 14, c - 14):
    freq = np.bincount(offsets + 2, minlength=5) / 20000
    expected = np.array([0.74, 1, 1, 1, 0.74]) / 4.48
    np.testing.assert_allclose(freq, expected, atol=0.012)
  del cols


def test_tf_style_brightness_and_contrast_are_unclipped():
  x = np.array([[[[0.2, 0.9]], [[0.6, 0.1]]]], np.float32)  # [1, 2, 1, 2]
  y = np.asarray(augment.random_brightness_delta(jnp.asarray(x), jax.random.key(0), 0.5))
  delta = y - x
  np.testing.assert_allclose(delta, delta.flat[0], atol=1e-6)
  assert abs(delta.flat[0]) <= 0.5
  z = np.asarray(augment.random_contrast_tf(jnp.asarray(x), jax.random.key(0), 3.0, 3.0 + 1e-6))
  # Per channel means (0.4, 0.5); (x - mean) * 3 + mean.
  np.testing.assert_allclose(z, [[[[-0.2, 1.7]], [[1.0, -0.7]]]], atol=1e-5)
