"""The initialisation schemes against values computed by hand."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from capsnet_jax.model import initializers
from capsnet_jax.model import models


@functools.lru_cache(maxsize=None)
def _params(scheme: str, decoder: str):
  model = models.CapsNetMNIST(init_scheme=scheme, decoder=decoder)
  params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
  return jax.tree.map(np.asarray, params)


def test_reference_scheme_weights_and_pytorch_default_biases():
  """xavier_normal_(gain g): std = g sqrt(2 / (fan_in + fan_out)); biases
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with torch's fan-in.

  conv1 [9, 9, 1, 256]: std 0.02 sqrt(2 / (81 + 20,736)) = 1.960e-4, bias
  bound 1 / sqrt(81) = 0.1111. Primary [9, 9, 256, 256]: std 0.02 sqrt(2 /
  41,472) = 1.389e-4, bound 1 / sqrt(20,736) = 0.006944. Deconv decoder:
  Dense 160 -> 360 bound 1 / sqrt(160) = 0.07906; ConvT 10 -> 32 k9: torch's
  fan-in is Cout k^2 = 2,592, bound 0.01964; ConvT 64 -> 1 k2: fan-in 4,
  bound 0.5. W: 2.328e-6 (test_models). Class-capsule bias: 0."""
  p = _params("reference", "deconv")
  assert p["stem"]["conv"]["kernel"].std() == pytest.approx(1.960e-4, rel=0.02)
  assert p["primary"]["conv"]["kernel"].std() == pytest.approx(1.389e-4, rel=0.01)
  bounds = {
      ("stem", "conv"): 1 / 9,
      ("primary", "conv"): 0.006944,
      ("decoder", "dense"): 0.07906,
      ("decoder", "deconv0"): 0.01964,
      ("decoder", "deconv1"): 1 / (64 * 81) ** 0.5,  # 0.01389
      ("decoder", "out"): 0.5,
  }
  for (part, layer), bound in bounds.items():
    bias = p[part][layer]["bias"]
    assert np.abs(bias).max() <= bound, (part, layer)
    # Uniform over the whole interval: its extremes come near the bound and
    # its std is bound / sqrt(3).
    assert np.abs(bias).max() > 0.8 * bound, (part, layer)
    if bias.size >= 256:
      assert bias.std() == pytest.approx(bound / 3 ** 0.5, rel=0.15)
  assert np.all(p["class_caps"]["bias"] == 0.0)


def test_authors_scheme_truncated_normals_and_biases_of_one_tenth():
  """TensorFlow's truncated_normal_initializer(stddev) cuts at 2 stddev; the
  values' std is stddev x 0.8796 (the std of a standard normal truncated to
  [-2, 2]): conv1 0.05 -> 0.04398, primary, W and decoder 0.1 -> 0.08796.
  Every bias is 0.1."""
  p = _params("authors", "fc")
  for part, layer, std in (("stem", "conv", 0.05), ("primary", "conv", 0.1),
                           ("decoder", "dense0", 0.1), ("decoder", "out", 0.1)):
    kernel = p[part][layer]["kernel"]
    assert kernel.std() == pytest.approx(std * 0.8796, rel=0.02), (part, layer)
    assert np.abs(kernel).max() <= 2 * std + 1e-7
    assert np.all(p[part][layer]["bias"] == np.float32(0.1))
  w = p["class_caps"]["W"]
  assert w.std() == pytest.approx(0.08796, rel=0.01)
  assert np.abs(w).max() <= 0.2 + 1e-7
  assert np.all(p["class_caps"]["bias"] == np.float32(0.1))


def test_torch_fan_in_counts_a_transposed_kernels_output_channels():
  assert initializers.torch_fan_in((160, 360)) == 160
  assert initializers.torch_fan_in((9, 9, 256, 32)) == 81 * 256
  assert initializers.torch_fan_in((9, 9, 10, 32), transpose=True) == 81 * 32
