"""Preprocessing ops on small fixed inputs: exact values and ranges, eagerly
and inside jit (as the train step runs them)."""

import jax
import jax.numpy as jnp
import conftest
import numpy as np
import pytest

from capsnet_jax.data import augment
from capsnet_jax.data import datasets


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


def test_color_jitter_order_and_draws_and_flip():
  """As torchvision's ColorJitter: brightness and contrast in a random order
  per image, which matters where values clip."""
  x = np.array([[[[0.2], [1.0]]]] * 2, np.float32)  # [2, 1, 2, 1], mean 0.6
  y = augment.apply_jitter(x, jnp.array([1.5, 1.5]), jnp.array([0.5, 0.5]),
                           jnp.array([False, True]))
  # Brightness first: [0.3, 1.0] (clipped), mean 0.65, then 0.5 x + 0.325.
  np.testing.assert_allclose(y[0, 0, :, 0], [0.475, 0.825], atol=1e-6)
  # Contrast first: 0.5 x + 0.3 = [0.4, 0.8], then x 1.5 = [0.6, 1.0] (clipped).
  np.testing.assert_allclose(y[1, 0, :, 0], [0.6, 1.0], atol=1e-6)
  b, c, first = map(np.asarray, augment.jitter_params(
      jax.random.key(0), 1000, (0.75, 1.25), (0.2, 1.8)))
  assert 0.75 <= b.min() < 0.76 and 1.24 < b.max() <= 1.25
  assert 0.2 <= c.min() < 0.22 and 1.78 < c.max() <= 1.8
  assert 450 < first.sum() < 550  # 1/2 each: 500 +- 3.2 sigma
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(64, 4, 4, 3)), jnp.float32)
  y = augment.color_jitter(x, jax.random.key(0), (0.75, 1.25), (0.2, 1.8))
  np.testing.assert_array_equal(y, augment.apply_jitter(
      x, *augment.jitter_params(jax.random.key(0), 64, (0.75, 1.25),
                                (0.2, 1.8))))
  assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
  f = np.asarray(augment.random_flip_lr(x, jax.random.key(2)))
  flipped = [np.array_equal(f[i], np.asarray(x)[i, :, ::-1]) for i in range(64)]
  kept = [np.array_equal(f[i], np.asarray(x)[i]) for i in range(64)]
  assert all(a or b for a, b in zip(flipped, kept))
  assert 10 < sum(flipped) < 54


def test_per_image_standardization_matches_tensorflow():
  tf = conftest.require("tensorflow")
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
  train_fn = datasets.get(dataset, setup).preprocess(True)
  eval_fn = datasets.get(dataset, setup).preprocess(False)
  for fn in (train_fn, eval_fn):
    y = fn(raw, jax.random.key(0))
    assert y.shape == (4, *model_input) and y.dtype == jnp.float32
    if datasets.get(dataset, setup).standardized:
      np.testing.assert_allclose(jnp.mean(y, axis=(1, 2, 3)), 0, atol=1e-5)
  # Test time ignores the rng; training does not.
  np.testing.assert_array_equal(eval_fn(raw, jax.random.key(0)),
                                eval_fn(raw, jax.random.key(1)))
  assert not np.array_equal(train_fn(raw, jax.random.key(0)),
                            train_fn(raw, jax.random.key(1)))
  target = datasets.get(dataset, setup).target(eval_fn(raw, None))
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


# Efficient-CapsNet's MNIST augmentation (data_setup="efficient"). Expected
# values are worked out by hand from the authors' utils/pre_process_mnist.py;
# a one-off comparison with their OpenCV/TF calls on 64 MNIST test digits
# agreed within 4e-6 (rotation, squish) and exactly (shift).


@pytest.mark.parametrize("jit", [False, True])
def test_rotate_is_opencv_counter_clockwise_about_w2_h2(jit):
  x = np.zeros((3, 28, 28, 1), np.float32)
  x[:, 14, 20] = 1.0  # 6 px right of OpenCV's centre (14, 14)
  fn = jax.jit(augment.rotate) if jit else augment.rotate
  y = np.asarray(fn(jnp.asarray(x), jnp.array([90.0, -90.0, 0.0])))
  # +90: right of centre -> above it (row 14 - 6); -90: below (row 14 + 6).
  # A centre at (13.5, 13.5) would put the first at row 7, column 14.
  for i, (row, col) in enumerate([(8, 14), (20, 14), (14, 20)]):
    expected = np.zeros((28, 28), np.float32)
    expected[row, col] = 1.0
    np.testing.assert_allclose(y[i, ..., 0], expected, atol=1e-5)


def test_random_rotate_rotates_about_half_the_images():
  x = np.zeros((64, 28, 28, 1), np.float32)
  x[:, 10:18, 13:15] = 1.0  # a vertical bar
  y = np.asarray(augment.random_rotate_efficient(jnp.asarray(x), jax.random.key(0)))
  kept = sum(np.array_equal(y[i], x[i]) for i in range(64))
  assert 16 < kept < 48  # unrotated half (and truncation of |angle| < 1 to 0)


def test_largest_training_rotation_is_29_degrees(monkeypatch):
  # The clipped normal at its bound: 30 x 0.9999 truncates to 29 degrees, the
  # figure that rotation.png's title gives for data_setup=efficient.
  monkeypatch.setattr(augment, "_clipped_normal",
                      lambda rng, shape, std=0.33, bound=0.9999:
                      jnp.full(shape, bound))
  x = np.zeros((16, 28, 28, 1), np.float32)
  x[:, 4:24, 13:15] = 1.0  # a long vertical bar
  y = np.asarray(augment.random_rotate_efficient(jnp.asarray(x), jax.random.key(0)))
  most = augment.TRAINING_ROTATION_DEGREES["efficient"]
  assert most == 29
  expected = np.asarray(augment.rotate(jnp.asarray(x[:1]), jnp.array([29.0])))[0]
  beyond = np.asarray(augment.rotate(jnp.asarray(x[:1]), jnp.array([30.0])))[0]
  assert not np.array_equal(expected, beyond)
  rotated = [i for i in range(16) if not np.array_equal(y[i], x[i])]
  assert rotated  # about half
  for i in rotated:
    np.testing.assert_array_equal(y[i], expected)


def test_shift_within_margins_by_hand():
  x = np.zeros((2, 28, 28, 1), np.float32)
  x[:, 10:14, 5:10] = 1.0  # margins: top 10, bottom 14, left 5, right 18
  amounts = jnp.array([[0.5, 0.5], [0.9999, 0.9999]])
  directions = jnp.array([[0, 1], [1, 0]])  # (rows, columns); 0: up/left
  y = np.asarray(augment.shift_within_margins(jnp.asarray(x), amounts,
                                              directions))
  expected = np.zeros_like(x)
  # rows floor(-0.5 * 10) = -5, columns floor(0.5 * (1 + 18)) = 9.
  expected[0, 5:9, 14:19] = 1.0
  # rows floor(0.9999 * (1 + 14)) = 14 (to the bottom edge, no wrap),
  # columns floor(-0.9999 * 5) = -5 (to the left edge).
  expected[1, 24:28, 0:5] = 1.0
  np.testing.assert_array_equal(y, expected)


def test_squish_narrows_and_places_columns():
  ones = jnp.ones((2, 28, 28, 1))
  y = np.asarray(augment.squish(ones, jnp.array([1, 7]), jnp.array([0, 1])))
  expected = np.zeros((2, 28, 28, 1), np.float32)
  expected[0, :, 0:27] = 1.0  # width 27 at column 1 // 2 + 0 = 0
  expected[1, :, 4:25] = 1.0  # width 21 at column 7 // 2 + 1 = 4
  np.testing.assert_allclose(y, expected, atol=1e-5)


def test_erase_zeroes_one_4x4_patch():
  ones = jnp.ones((2, 28, 28, 1))
  y = np.asarray(augment.erase(ones, jnp.array([4, 22]), jnp.array([22, 4])))
  expected = np.ones((2, 28, 28, 1), np.float32)
  expected[0, 4:8, 22:26] = 0.0
  expected[1, 22:26, 4:8] = 0.0
  np.testing.assert_array_equal(y, expected)
  r = np.asarray(augment.random_erase(jnp.ones((32, 28, 28, 1)), jax.random.key(0)))
  for i in range(32):
    rows, cols = np.nonzero(r[i, ..., 0] == 0)
    assert len(rows) == 16 and 4 <= rows.min() <= 22 and 4 <= cols.min() <= 22


def test_efficient_mnist_setup():
  raw = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1)),
                    jnp.uint8)
  eval_fn = datasets.get("mnist", "efficient").preprocess(False)
  # Their pre_process divides by 256 (the other setups by 255).
  np.testing.assert_array_equal(eval_fn(jnp.full((1, 28, 28, 1), 255, jnp.uint8), None),
                                np.full((1, 28, 28, 1), 255 / 256, np.float32))
  np.testing.assert_array_equal(
      datasets.get("mnist", "paper").preprocess(False)(raw, None),
      augment.to_float(raw))
  train_fn = jax.jit(datasets.get("mnist", "efficient").preprocess(True))
  a, b = train_fn(raw, jax.random.key(0)), train_fn(raw, jax.random.key(1))
  assert a.shape == (8, 28, 28, 1) and a.dtype == jnp.float32
  np.testing.assert_array_equal(a, train_fn(raw, jax.random.key(0)))
  assert not np.array_equal(a, b)
  # Every image is squished and erased; Lanczos may overshoot [0, 1] a little.
  assert not any(np.array_equal(a[i], eval_fn(raw, None)[i]) for i in range(8))
  assert -0.5 < float(a.min()) and float(a.max()) < 1.5
