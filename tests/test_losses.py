"""Tests of the margin and reconstruction losses and of masking."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from capsnet_jax.training import losses
from configs import default


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


# The reference's get_alpha(epoch), alpha = 0.0005, T = 8, typed from a
# calculator: (tanh(e / 8 - pi) + 1) / 2 and tanh(e / 16).
TANH_SHIFTED = {0: 9.319809e-07, 8: 6.805414e-06, 25: 2.458522e-04,
                50: 4.990042e-04}
TANH = {0: 0.0, 8: 2.310586e-04, 16: 3.807971e-04, 48: 4.975274e-04}


@pytest.mark.parametrize("name,alias,expected", [
    ("tanh_shifted", "1", TANH_SHIFTED), ("tanh", "2", TANH),
    ("none", "none", {0: 5e-4, 8: 5e-4, 300: 5e-4})])
def test_annealed_alpha_hand_computed(name, alias, expected):
  for epoch, value in expected.items():
    for schedule in (name, alias):
      got = float(losses.annealed_alpha(5e-4, schedule, epoch, 8.0))
      assert got == pytest.approx(value, rel=1e-5, abs=1e-12), (schedule, epoch)


def test_alpha_schedule_takes_the_epoch_from_the_step():
  config = default.get_config()
  config.alpha_schedule = "tanh"
  fn = losses.alpha_schedule(config, steps_per_epoch=100)
  # Steps 0-99 are epoch 0 (the reference's first epoch is 0), 800 is 8.
  for step, value in {0: 0.0, 99: 0.0, 100: 0.0005 * 0.06241881,
                      800: TANH[8], 899: TANH[8]}.items():
    assert float(fn(step)) == pytest.approx(value, rel=1e-5, abs=1e-12), step
  config.alpha_fractional_epochs = True
  fn = losses.alpha_schedule(config, steps_per_epoch=100)
  # Step 50 is epoch 0.5: 0.0005 * tanh(0.5 / 16) = 0.0005 * 0.03123983.
  assert float(fn(50)) == pytest.approx(0.0005 * 0.03123983, rel=1e-5)
  assert float(jax.jit(fn)(800)) == pytest.approx(TANH[8], rel=1e-5)


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
