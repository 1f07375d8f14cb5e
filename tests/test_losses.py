"""Tests of the margin and reconstruction losses and of masking (the
reconstruction weight's schedules: test_schedules.py)."""

import jax.numpy as jnp
import numpy as np
import pytest

from capsnet_jax.model import masking
from capsnet_jax.training import losses


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
  masked = masking.mask_capsules(caps, jnp.array([1, 2]))
  np.testing.assert_array_equal(np.asarray(masked),
                                [[0, 0, 2, 3, 0, 0], [0, 0, 0, 0, 10, 11]])


def test_top_k_labels_are_the_longest_capsules_longest_first():
  lengths = jnp.array([[0.1, 0.9, 0.5, 0.7], [0.8, 0.2, 0.3, 0.1]])
  np.testing.assert_array_equal(np.asarray(masking.top_k_labels(lengths, 2)),
                                [[1, 3], [0, 2]])


def test_reconstruction_loss_l1_and_l2_per_image():
  # Image 0: errors 0.5, 0.25, 0, 0.5; image 1: four errors of 0.2.
  recon = jnp.array([[0.5, 0.25, 0.0, 1.0], [0.1, 0.1, 0.1, 0.1]]).reshape(2, 2, 2, 1)
  images = jnp.array([[0.0, 0.0, 0.0, 0.5], [0.3, 0.3, 0.3, 0.3]]).reshape(2, 2, 2, 1)
  # L2: 0.25 + 0.0625 + 0 + 0.25 = 0.5625 and 4 * 0.04 = 0.16.
  np.testing.assert_allclose(
      np.asarray(losses.reconstruction_loss(recon, images, "l2")),
      [0.5625, 0.16], rtol=1e-6)
  # L1: 0.5 + 0.25 + 0 + 0.5 = 1.25 and 4 * 0.2 = 0.8.
  np.testing.assert_allclose(
      np.asarray(losses.reconstruction_loss(recon, images, "l1")),
      [1.25, 0.8], rtol=1e-6)
  with pytest.raises(ValueError, match="l1"):
    losses.reconstruction_loss(recon, images, "huber")


def test_margin_loss_orphan_capsule_is_always_absent():
  lengths = jnp.array([[0.95, 0.3, 0.05], [0.95, 0.3, 0.05]])
  labels = jnp.array([0, 0])
  # 0.02 from the real classes (test above); orphan 0.5: 0.5 * 0.4^2 = 0.08;
  # orphan 0.05 is below m- = 0.1: nothing.
  got = losses.margin_loss(lengths, labels, orphan_lengths=jnp.array([0.5, 0.05]))
  np.testing.assert_allclose(np.asarray(got), [0.10, 0.02], rtol=1e-5)
  # The same as one more column that is never the label.
  np.testing.assert_allclose(
      np.asarray(losses.margin_loss(jnp.array([[0.95, 0.3, 0.05, 0.5]]),
                                    jnp.array([0]))), [0.10], rtol=1e-5)


def test_authors_margin_loss_is_their_formula_by_hand():
  """research/capsules layers.py:341-362 and :396 for lengths (0.7, 0.35,
  0.05), label 0: l = |v| - 0.5 = (0.2, -0.15, -0.45); present class 0 costs
  0.5 (0.2 - 0.4)^2 = 0.02; absent class 1 costs 0.25 (-0.15 + 0.4)^2 =
  0.015625; absent class 2 (l < -0.4) costs 0; the mean over the 3 classes
  is 0.011875. The paper's sum is 0.04 + 0.5 x 0.0625 = 0.07125, 2 x 3
  times as much."""
  lengths = jnp.array([[0.7, 0.35, 0.05], [0.95, 0.05, 0.3]])
  labels = jnp.array([0, 2])
  got = np.asarray(losses.authors_margin_loss(lengths, labels))
  # Second example, label 2: l = (0.45, -0.45, -0.2): class 0 absent,
  # 0.25 (0.45 + 0.4)^2 = 0.180625; class 1: 0; class 2 present,
  # 0.5 (-0.2 - 0.4)^2 = 0.18; mean 0.120208.
  np.testing.assert_allclose(got, [0.011875, 0.36062500 / 3], rtol=1e-6)
  paper = np.asarray(losses.margin_loss(lengths, labels))
  np.testing.assert_allclose(paper, [0.07125, 0.72125], rtol=1e-6)
  np.testing.assert_allclose(
      np.asarray(losses.margin_objective(lengths, labels, "authors")), got)
  with pytest.raises(ValueError, match="sum, authors"):
    losses.margin_objective(lengths, labels, "mean")
