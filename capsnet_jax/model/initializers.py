"""Initialisation schemes of CapsNet, by the role of each parameter.

Synopsis::

  scheme = initializers.scheme("authors")
  scheme.conv1(key, (9, 9, 1, 256))          # truncated normal, std 0.05
  scheme.bias(fan_in=81)(key, (256,))        # constant 0.1

Three schemes (``SCHEMES``):

* ``default``: LeCun-normal kernels, class-capsule W ~ N(0, 0.01^2), zero
  biases. Trains quickly; not anybody's published recipe.
* ``reference``: the PyTorch reference (ethanleet/CapsNet tools.py:21-38,
  model.py): xavier-normal with gain 0.02 on every Conv, ConvTranspose and
  Linear weight with PyTorch's fans of each module (the primary capsules are
  ``dim`` separate Conv2d(Cin -> types), model.py:84-105, so each kernel's
  fan-out is types x k x k), 0.002 on W (over its 5-D [1, N, K, 16, 8]
  tensor) and on the class capsules' bias (its [1, 1, K, 16] tensor:
  std 0.002 / sqrt(16 K), 1.58e-4 for MNIST; tools.py:36-38); BatchNorm2d
  weights N(1, 0.02^2) and biases 0 (tools.py:33-35; the BatchNorm1d of the
  decoders keep PyTorch's ones); every other bias PyTorch's default
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with PyTorch's fan-in (Conv2d:
  Cin * k * k; ConvTranspose2d: Cout * k * k; Linear: in_features).
* ``authors``: Sabour et al.'s released code (research/capsules,
  models/layers/variables.py:29-67, models/capsule_model.py:181-184,
  models/layers/layers.py:459-461): truncated normal (cut at 2 std, the
  std of the untruncated normal as TensorFlow's initializer takes it),
  std 0.05 for conv1, 0.1 for the primary-capsule kernel, W and the
  decoder; every bias 0.1, the capsule layers' included.

A bias initialiser is a function of the layer's PyTorch fan-in (``BiasInit``)
because the reference's default bias depends on it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]
# fan_in (PyTorch's convention) -> initializer of a bias.
BiasInit = Callable[[int], Initializer]

SCHEMES = ("default", "reference", "authors")


def zero_bias(fan_in: int) -> Initializer:
  del fan_in
  return nn.initializers.zeros


def constant_bias(value: float) -> BiasInit:
  return lambda fan_in: nn.initializers.constant(value)


def torch_default_bias(fan_in: int) -> Initializer:
  """PyTorch's default bias of Conv2d, ConvTranspose2d and Linear:
  U(-1 / sqrt(fan_in), 1 / sqrt(fan_in))."""
  bound = 1.0 / max(fan_in, 1) ** 0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def xavier_normal(gain: float) -> Initializer:
  """torch.nn.init.xavier_normal_(gain): std = gain * sqrt(2 / (fan_in +
  fan_out)). For HWIO conv and [in, out] dense kernels the fans are torch's
  (the sum is the same for a transposed convolution's kernel)."""
  return nn.initializers.variance_scaling(gain ** 2, "fan_avg", "normal",
                                          in_axis=-2, out_axis=-1)


def reference_w_init(key, shape, dtype=jnp.float32):
  """The reference's xavier_normal(gain 0.002) of its 5-D W [1, N, K, 16, 8].

  torch takes fan_in = size(1) * receptive field = N * K * 16 * 8 and
  fan_out = size(0) * receptive field = K * 16 * 8, so for MNIST (N = 1152,
  K = 10) std = 0.002 * sqrt(2 / (1,474,560 + 1,280)) = 2.33e-6. Our W is
  [N, K, 16, 8], the same tensor without the leading 1.
  """
  n, k, d, i = shape
  fan_in, fan_out = n * k * d * i, k * d * i
  std = 0.002 * (2.0 / (fan_in + fan_out)) ** 0.5
  return std * jax.random.normal(key, shape, dtype)


def reference_primary_init(convs: int) -> Initializer:
  """xavier_normal(gain 0.02) of a primary-capsule kernel [k, k, Cin,
  Cout] that the reference builds as ``convs`` separate Conv2d(Cin ->
  Cout / convs) (model.py:84-105): fan_in Cin k^2, fan_out (Cout / convs)
  k^2 (MNIST: std 0.02 sqrt(2 / (20,736 + 2,592)) = 1.852e-4)."""
  def init(key, shape, dtype=jnp.float32):
    kh, kw, cin, cout = shape
    if cout % convs:
      raise ValueError(f"{cout} output channels are not {convs} convolutions")
    std = 0.02 * (2.0 / (kh * kw * (cin + cout // convs))) ** 0.5
    return std * jax.random.normal(key, shape, dtype)

  return init


def reference_capsule_bias_init(key, shape, dtype=jnp.float32):
  """The reference's xavier_normal(gain 0.002) of the class capsules' bias
  [1, 1, K, D] (tools.py:38): torch's fans are both K x D (size(1) and
  size(0), 1, times the receptive field K x D), so std = 0.002 sqrt(2 /
  (2 K D)) = 0.002 / sqrt(K D): 1.581e-4 for 10 classes of 16. Our bias is
  [K, D], the same tensor without the leading ones."""
  k, d = shape
  std = 0.002 / (k * d) ** 0.5
  return std * jax.random.normal(key, shape, dtype)


def reference_bn_scale(key, shape, dtype=jnp.float32):
  """The reference's BatchNorm2d weight, N(1, 0.02^2) (tools.py:33-35)."""
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def truncated_normal(stddev: float) -> Initializer:
  """TensorFlow 1's truncated_normal_initializer(stddev): a normal of std
  ``stddev`` redrawn outside two standard deviations (so the values' own
  std is about 0.88 stddev)."""
  return nn.initializers.truncated_normal(stddev, lower=-2.0, upper=2.0)


@dataclasses.dataclass(frozen=True)
class Scheme:
  """Initialisers of a CapsNet's parameters, by role.

  conv1: the stem's kernel; primary: the number of separate convolutions
  the primary capsules are (their capsule dim, in the reference) -> their
  kernel's initialiser; w: the class capsules' W [N, K, D, d]; decoder:
  every decoder kernel; bias: fan-in -> the bias of conv1, the primary
  capsules and the decoder; capsule_bias: the class capsules' bias [K, D];
  bn_scale: the scale of the batch norms after convolutions (PyTorch's
  BatchNorm2d: conv1, primary capsules, the deconv decoder's transposed
  convolutions); those after Dense layers start at one in every scheme.
  """
  name: str
  conv1: Initializer
  primary: Callable[[int], Initializer]
  w: Initializer
  decoder: Initializer
  bias: BiasInit
  capsule_bias: Initializer
  bn_scale: Initializer = nn.initializers.ones


def scheme(name: str) -> Scheme:
  """The scheme called ``name`` (one of SCHEMES)."""
  if name == "default":
    lecun = nn.initializers.lecun_normal()
    return Scheme(name, lecun, lambda convs: lecun,
                  nn.initializers.normal(0.01), lecun, zero_bias,
                  nn.initializers.zeros)
  if name == "reference":
    xavier = xavier_normal(0.02)
    return Scheme(name, xavier, reference_primary_init, reference_w_init,
                  xavier, torch_default_bias, reference_capsule_bias_init,
                  reference_bn_scale)
  if name == "authors":
    primary = truncated_normal(0.1)
    return Scheme(name, truncated_normal(0.05), lambda convs: primary,
                  truncated_normal(0.1), truncated_normal(0.1),
                  constant_bias(0.1), nn.initializers.constant(0.1))
  raise ValueError(f"Unknown init {name!r}; valid: {', '.join(SCHEMES)}")


def torch_fan_in(kernel_shape: tuple[int, ...], transpose: bool = False
                 ) -> int:
  """PyTorch's fan-in of a layer whose flax kernel has ``kernel_shape``:
  [in, out] (Dense) or HWIO (conv; a transposed convolution's torch weight
  is [Cin, Cout, kh, kw], so its fan-in counts the output channels)."""
  if len(kernel_shape) == 2:
    return int(kernel_shape[0])
  kh, kw, cin, cout = kernel_shape
  return int(kh * kw * (cout if transpose else cin))


def dense(features: int, in_features: int, kernel_init: Initializer,
          bias_init: BiasInit, name: str, **kwargs: Any) -> nn.Dense:
  """flax Dense whose bias follows ``bias_init`` for its fan-in."""
  return nn.Dense(features, kernel_init=kernel_init,
                  bias_init=bias_init(in_features), name=name, **kwargs)
