"""Tests of the margin and reconstruction losses and of masking."""

import jax.numpy as jnp
import numpy as np

from capsnet_jax import losses


def test_margin_loss_hand_computed():
  lengths = jnp.array([[0.95, 0.3, 0.05], [0.5, 0.2, 0.8]])
  labels = jnp.array([0, 2])
  # Example 0: present 0 (0.95 > 0.9); absent 0.5 * (0.2^2 + 0) = 0.02.
  # Example 1: present (0.9 - 0.8)^2 = 0.01; absent 0.5 * (0.4^2 + 0.1^2)
  #   = 0.5 * 0.17 = 0.085.
  np.testing.assert_allclose(np.asarray(losses.margin_loss(lengths, labels)),
                             [0.02, 0.095], rtol=1e-5)


def test_reconstruction_sse_is_per_image_sum():
  images = jnp.zeros((2, 3, 3, 1))
  recon = jnp.full((2, 3, 3, 1), 0.5).at[1].set(1.0)
  np.testing.assert_allclose(np.asarray(losses.reconstruction_sse(recon, images)),
                             [9 * 0.25, 9.0], rtol=1e-6)


def test_mask_capsules_keeps_only_the_label():
  caps = jnp.arange(2 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 2)
  masked = losses.mask_capsules(caps, jnp.array([1, 2]))
  np.testing.assert_array_equal(np.asarray(masked),
                                [[0, 0, 2, 3, 0, 0], [0, 0, 0, 0, 10, 11]])
