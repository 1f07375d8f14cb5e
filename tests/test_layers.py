"""Tests of squash and the primary capsules' grouping."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from capsnet_jax.model import layers


def test_squash_length_and_direction():
  s = jnp.array([[3.0, 4.0], [0.3, 0.4]])
  v = layers.squash(s)
  norms = np.linalg.norm(np.asarray(v), axis=-1)
  np.testing.assert_allclose(norms, [25 / 26, 0.25 / 1.25], rtol=1e-5)
  np.testing.assert_allclose(np.asarray(v) / norms[:, None],
                             np.asarray(s) / np.linalg.norm(s, axis=-1)[:, None],
                             rtol=1e-5)


def test_squash_zero_vector_finite_value_and_gradient():
  v = layers.squash(jnp.zeros((2, 8)))
  np.testing.assert_array_equal(np.asarray(v), 0.0)
  g = jax.grad(lambda s: jnp.sum(layers.squash(s)))(jnp.zeros((2, 8)))
  assert np.all(np.isfinite(np.asarray(g)))


def test_primary_capsules_group_channels_at_one_position():
  module = layers.PrimaryCapsules(num_types=2, dim=3, kernel_size=1, stride=1)
  x = jnp.ones((1, 2, 2, 1))
  variables = module.init(jax.random.key(0), x)
  # Kernel that copies position-independent channel values 0..5.
  kernel = jnp.zeros((1, 1, 1, 6))
  bias = jnp.arange(6.0)
  params = {"conv": {"kernel": kernel, "bias": bias}}
  u = module.apply({"params": params}, x)
  assert u.shape == (1, 2 * 2 * 2, 3)
  # Capsule (position 0, type 1) holds channels 3, 4, 5 of that position.
  np.testing.assert_allclose(np.asarray(u[0, 1]),
                             np.asarray(layers.squash(jnp.array([3.0, 4, 5]))),
                             rtol=1e-6)
  del variables


def test_reference_grouping_is_the_references_stack_and_view():
  """The reference's primary capsules, restated in numpy: ``dim`` convs of
  ``types`` channels each (our channels ordered [dim, types]), each output
  NCHW, torch.stack(dim=1) and .view(B, -1, dim) without a permute."""
  b, h, w, types, dim = 2, 3, 3, 4, 8
  y = np.random.RandomState(0).randn(b, h, w, dim * types).astype(np.float32)
  maps = [y[..., k * types:(k + 1) * types].transpose(0, 3, 1, 2)
          for k in range(dim)]  # each [B, types, H, W]
  expected = np.stack(maps, axis=1).reshape(b, -1, dim)
  got = np.asarray(layers.group_capsules(jnp.asarray(y), types, dim,
                                         "reference"))
  np.testing.assert_array_equal(got, expected)
  # The capsule's 8 values are neighbours in one feature map: the first
  # capsule is row 0, columns 0-2 and row 1, columns 0-2 and row 2, columns
  # 0-1 of conv 0's channel 0.
  np.testing.assert_array_equal(got[0, 0], y[0, :, :, 0].reshape(-1)[:8])
  # The paper's grouping: the 8 channels of one type at one position.
  paper = np.asarray(layers.group_capsules(jnp.asarray(y), types, dim, "paper"))
  np.testing.assert_array_equal(paper[0, 0], y[0, 0, 0, :8])


def test_unknown_grouping_lists_the_valid_ones():
  with pytest.raises(ValueError, match="paper, reference"):
    layers.group_capsules(jnp.zeros((1, 2, 2, 16)), 2, 8, "spatial")


def test_squash_of_a_short_capsule_keeps_its_exact_gradient():
  """|squash(s)| = |s|^2 / (1 + |s|^2): for |s| = 1e-8 the derivative of the
  length along s is 2 |s| = 2e-8. An epsilon added under the square root
  (1e-7) made it 3 |s|^2 / sqrt(eps) = 9.5e-13, and the length
  |s|^3 / sqrt(eps) = 3.2e-21 instead of 1e-16."""
  direction = jnp.ones((8,)) / jnp.sqrt(8.0)
  length = lambda r: layers.capsule_length(layers.squash(r * direction))
  assert float(length(1e-8)) == pytest.approx(1e-16, rel=1e-5)
  assert float(jax.grad(length)(1e-8)) == pytest.approx(2e-8, rel=1e-4)
  g = jax.grad(lambda v: layers.capsule_length(v))(jnp.zeros((16,)))
  np.testing.assert_array_equal(np.asarray(g), 0.0)
