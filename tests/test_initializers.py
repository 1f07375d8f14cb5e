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
  """A CapsNet for MNIST with fewer channels than the paper's (conv1 32
  filters, 8 primary capsule types: 6 x 6 x 8 = 288 capsules; FC decoder
  160 -> 64 -> 128 -> 784), so that one jitted init takes seconds; the
  expected values below are worked out for these shapes."""
  model = models.CapsNet(init_scheme=scheme, decoder=decoder, conv_filters=32,
                         primary_types=8, decoder_hidden=(64, 128),
                         conv_impl="xla")
  params = jax.jit(model.init)(jax.random.key(0),
                               jnp.zeros((1, 28, 28, 1)))["params"]
  return jax.tree.map(np.asarray, params)


def test_reference_scheme_weights_and_pytorch_default_biases():
  """xavier_normal_(gain g): std = g sqrt(2 / (fan_in + fan_out)); biases
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with torch's fan-in.

  conv1 [9, 9, 1, 32]: std 0.02 sqrt(2 / (81 + 2,592)) = 5.4707e-4, bias
  bound 1 / sqrt(81) = 0.1111. Primary [9, 9, 32, 64], the reference's 8
  separate Conv2d(32 -> 8) (model.py:84-105): fan_in 32 x 81 = 2,592,
  fan_out 8 x 81 = 648, std 0.02 sqrt(2 / 3,240) = 4.9690e-4 (one Conv2d(32
  -> 64) would give 3.2075e-4), bound 1 / sqrt(2,592) = 0.019642. Deconv
  decoder: Dense 160 -> 360 bound 1 / sqrt(160) = 0.07906; ConvT 10 -> 32
  k9: torch's fan-in is Cout k^2 = 2,592, bound 0.01964; ConvT 32 -> 64 k9:
  fan-in 64 x 81, bound 0.01389; ConvT 64 -> 1 k2: fan-in 4, bound 0.5.
  Class-capsule bias [1, 1, 10, 16] (tools.py:38): torch's fans are both
  160, std 0.002 sqrt(2 / 320) = 1.5811e-4.

  W: torch's xavier_normal_(gain=0.002) of the reference's W [1, 288, 10,
  16, 8]: fan_in = 288 x 1,280 = 368,640, fan_out = 1,280, std = 0.002 sqrt(2
  / 369,920) = 4.6504e-6 (the paper's model, 1,152 capsules: 2.328e-6).

  The sample stds are within 3 standard errors (1 / sqrt(2 n), relative) of
  these: 2,592 values of conv1 (1.4%), 165,888 of the primary kernel (0.17%),
  368,640 of W (0.12%)."""
  p = _params("reference", "deconv")
  assert p["stem"]["conv"]["kernel"].std() == pytest.approx(5.4707e-4, rel=0.042)
  assert p["primary"]["conv"]["kernel"].std() == pytest.approx(4.9690e-4,
                                                               rel=0.005)
  w = p["class_caps"]["W"]
  assert w.shape == (288, 10, 16, 8)
  assert w.std() == pytest.approx(4.6504e-6, rel=0.004)
  bounds = {
      ("stem", "conv"): 1 / 9,
      ("primary", "conv"): 0.019642,
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
  # 160 values: 3 standard errors are 17%; the pooled draws below pin it.
  assert p["class_caps"]["bias"].std() == pytest.approx(1.5811e-4, rel=0.17)
  assert np.abs(p["class_caps"]["bias"].mean()) < 3 * 1.5811e-4 / 160 ** 0.5


def test_reference_capsule_bias_and_primary_kernel_over_many_draws():
  """The class-capsule bias of the paper's MNIST model, [10, 16], drawn 200
  times (32,000 values, 3 standard errors 1.7%): std 1.5811e-4, normal (a
  fraction 0.6827 within one std, +-0.8% at 3 standard errors). The
  paper-size primary kernel [9, 9, 256, 256] as 8 Conv2d(256 -> 32):
  std 0.02 sqrt(2 / (20,736 + 2,592)) = 1.8519e-4 (5.3M values)."""
  keys = jax.random.split(jax.random.key(3), 200)
  bias = np.asarray(jax.vmap(lambda k: initializers.reference_capsule_bias_init(
      k, (10, 16)))(keys))
  assert bias.std() == pytest.approx(1.5811e-4, rel=0.017)
  assert np.mean(np.abs(bias) < 1.5811e-4) == pytest.approx(0.6827, abs=0.008)
  kernel = np.asarray(jax.jit(initializers.reference_primary_init(8),
                              static_argnums=1)(jax.random.key(4),
                                                (9, 9, 256, 256)))
  assert kernel.std() == pytest.approx(1.8519e-4, rel=0.002)
  with pytest.raises(ValueError, match="60 output channels are not 8"):
    initializers.reference_primary_init(8)(jax.random.key(0), (9, 9, 4, 60))


def test_reference_batch_norm_scales():
  """BatchNorm2d weights ~ N(1, 0.02^2), biases 0 (tools.py:33-35): after
  conv1 (32 channels here), the primary capsules (64) and the deconv
  decoder's transposed convolutions (32, 64). The BatchNorm1d after the
  decoders' Dense layers keep PyTorch's ones (tools.py matches
  'BatchNorm2d' only). Other schemes start every scale at one."""
  model = models.CapsNet(init_scheme="reference", decoder="deconv",
                         batch_norm=True, conv_filters=32, primary_types=8,
                         conv_impl="xla")
  params = jax.jit(model.init)(jax.random.key(0),
                               jnp.zeros((2, 28, 28, 1)))["params"]
  scales = [np.asarray(params["stem"]["bn"]["scale"]),
            np.asarray(params["primary"]["bn"]["scale"]),
            np.asarray(params["decoder"]["bn0"]["scale"]),
            np.asarray(params["decoder"]["bn1"]["scale"])]
  pooled = np.concatenate(scales)  # 192 values: 3 standard errors 15%
  assert pooled.mean() == pytest.approx(1.0, abs=3 * 0.02 / 192 ** 0.5)
  assert (pooled - 1).std() == pytest.approx(0.02, rel=0.15)
  assert all(s.std() > 0.01 for s in scales)
  assert np.all(np.asarray(params["decoder"]["bn_dense"]["scale"]) == 1.0)
  for part in ("stem", "primary"):
    assert np.all(np.asarray(params[part]["bn"]["bias"]) == 0.0)
  scheme = initializers.scheme("authors")
  assert np.all(np.asarray(scheme.bn_scale(jax.random.key(0), (8,))) == 1.0)


def test_authors_scheme_truncated_normals_and_biases_of_one_tenth():
  """TensorFlow's truncated_normal_initializer(stddev) cuts at 2 stddev; the
  values' std is stddev x 0.8796 (the std of a standard normal truncated to
  [-2, 2]): conv1 0.05 -> 0.04398, primary, W and decoder 0.1 -> 0.08796.
  Every bias is 0.1. Tolerances: 3 standard errors of the sample std, 1 /
  sqrt(2 n) relative, for n = 2,592 (conv1: 4.2%), 165,888 (primary), 10,240
  (decoder's first layer: 2.1%), 100,352 (its output layer), 368,640 (W)."""
  p = _params("authors", "fc")
  for part, layer, std in (("stem", "conv", 0.05), ("primary", "conv", 0.1),
                           ("decoder", "dense0", 0.1), ("decoder", "out", 0.1)):
    kernel = p[part][layer]["kernel"]
    tolerance = 3 / (2 * kernel.size) ** 0.5
    assert kernel.std() == pytest.approx(std * 0.8796, rel=tolerance), (
        part, layer)
    assert np.abs(kernel).max() <= 2 * std + 1e-7
    assert np.all(p[part][layer]["bias"] == np.float32(0.1))
  w = p["class_caps"]["W"]
  assert w.std() == pytest.approx(0.08796, rel=0.004)
  assert np.abs(w).max() <= 0.2 + 1e-7
  assert np.all(p["class_caps"]["bias"] == np.float32(0.1))


def test_torch_fan_in_counts_a_transposed_kernels_output_channels():
  assert initializers.torch_fan_in((160, 360)) == 160
  assert initializers.torch_fan_in((9, 9, 256, 32)) == 81 * 256
  assert initializers.torch_fan_in((9, 9, 10, 32), transpose=True) == 81 * 32


def test_unknown_scheme_lists_the_valid_ones():
  with pytest.raises(ValueError, match="valid: default, reference, authors"):
    initializers.scheme("glorot")
