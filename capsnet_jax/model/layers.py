"""Capsule layers: squash, the convolutional stem and primary capsules.

Synopsis::

  v = layers.squash(s)                                   # s: [..., D]
  stem = layers.ConvStem(filters=256, kernel_size=9)
  prim = layers.PrimaryCapsules(num_types=32, dim=8, kernel_size=9, stride=2)
  u = prim(stem(images))                                 # [B, 6 * 6 * 32, 8]
"""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from capsnet_jax.model import conv
from capsnet_jax.model import initializers

Initializer = Callable[..., jax.Array]
BiasInit = initializers.BiasInit
GROUPINGS = ("paper", "reference")


# The floor of |s|^2 under the square roots of squash and capsule_length:
# above float32's smallest normal number (1.2e-38), and far below any
# squared length that carries a gradient.
TINY = 1e-37


def squash(s: jax.Array, axis: int = -1) -> jax.Array:
  """Capsule non-linearity |s|^2 / (1 + |s|^2) * s / |s|.

  |s| is computed as sqrt(max(|s|^2, TINY)): exact for every capsule longer
  than about 3e-19, with a finite (zero) value and gradient at s = 0.
  Adding an epsilon to |s|^2 instead, as many implementations do, turns the
  function cubic for |s| below sqrt(eps): with eps = 1e-7 a capsule 1e-8
  long gets a gradient 1e-9 times the exact one, and a network whose
  initialisation makes capsules that short (the PyTorch reference's W
  gain of 0.002) never starts to learn.

  Args:
    s: [..., D] capsule input vectors.
    axis: the capsule dimension.

  Returns:
    [..., D] vectors of the same direction with length in [0, 1).
  """
  sq = jnp.sum(jnp.square(s), axis=axis, keepdims=True)
  return s * (sq / (1.0 + sq) / jnp.sqrt(jnp.maximum(sq, TINY)))


def capsule_length(v: jax.Array, axis: int = -1) -> jax.Array:
  """|v| along ``axis``, with squash's floor: exact, and with a finite
  gradient at v = 0 (a unit vector's worth elsewhere, however short v)."""
  return jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(v), axis=axis), TINY))


class Conv(nn.Module):
  """VALID (or, with transpose, transposed) convolution with bias whose
  implementation is chosen by name.

  Parameters are named and shaped exactly as ``flax.linen.Conv`` (kernel HWIO,
  bias [features]), so checkpoints do not depend on ``impl``. ``bias_init``
  takes the layer's PyTorch fan-in (initializers.torch_fan_in);
  ``output_scale`` multiplies the convolution before the bias is added.
  """
  features: int
  kernel_size: int
  stride: int = 1
  impl: str = "auto"
  kernel_init: Initializer = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32
  transpose: bool = False
  padding: str = "valid"  # valid | same (TensorFlow's; not for transpose)
  bias_init: BiasInit = initializers.zero_bias
  output_scale: float = 1.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, H, W, Cin] -> [B, Ho, Wo, features] (transposed: Ho = (H - 1) *
    stride + kernel_size)."""
    k = self.kernel_size
    shape = (k, k, x.shape[-1], self.features)
    kernel = self.param("kernel", self.kernel_init, shape, jnp.float32)
    fan_in = initializers.torch_fan_in(shape, self.transpose)
    bias = self.param("bias", self.bias_init(fan_in), (self.features,),
                      jnp.float32)
    if self.padding == "same" and not self.transpose:
      x = conv.pad_same(x, k, self.stride)
    op = conv.conv_transpose2d if self.transpose else conv.conv2d
    y = op(x.astype(self.dtype), kernel.astype(self.dtype), stride=self.stride,
           impl=self.impl)
    if self.output_scale != 1.0:
      y = y * jnp.asarray(self.output_scale, y.dtype)
    return y + bias.astype(self.dtype)


# VALID transposed convolution with bias (conv.conv_transpose2d), parameters
# named and shaped as flax.linen.ConvTranspose.
ConvTranspose = functools.partial(Conv, transpose=True)


class ConvStem(nn.Module):
  """conv1: 9x9 stride-1 convolution, optional batch norm, ReLU.

  [B, H, W, C] -> [B, H - 8, W - 8, filters] for the default kernel of 9.
  """
  filters: int = 256
  kernel_size: int = 9
  batch_norm: bool = False
  impl: str = "auto"
  kernel_init: Initializer = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32
  padding: str = "valid"
  bias_init: BiasInit = initializers.zero_bias
  bn_scale_init: Initializer = nn.initializers.ones

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = Conv(self.filters, self.kernel_size, 1, self.impl, self.kernel_init,
             self.dtype, padding=self.padding, bias_init=self.bias_init,
             name="conv")(x)
    if self.batch_norm:
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                       dtype=self.dtype, scale_init=self.bn_scale_init,
                       name="bn")(x)
    return nn.relu(x)


class PrimaryCapsules(nn.Module):
  """Primary capsules: strided convolution to num_types x dim channels, squash.

  grouping "paper": a capsule is the ``dim`` channels of one capsule type at
  one position (channels-last), [B, Ho * Wo * num_types, dim] ordered (row,
  column, type), as in the paper and the authors' code.
  grouping "reference": the PyTorch reference's ``dim`` convolutions of
  ``num_types`` channels each (our channels ordered [dim, num_types]),
  stacked on a new axis 1 and viewed as [B, -1, dim] without a permute
  (``primary_grouping_reference`` restates it): a capsule is ``dim``
  consecutive values in row-major (map, row, column) order, mostly
  neighbours along a row of one map; where a map's positions are not a
  multiple of ``dim`` (6x6 = 36 of MNIST's), some run on into the next row
  or the next map.

  vote_scale multiplies the convolution before the bias: the authors'
  primary capsules are a capsule layer with one routing iteration, whose
  uniform coupling over the num_types output types scales every vote by
  1 / num_types (layers.py:110, capsule_model.py:55-65).
  """
  num_types: int = 32
  dim: int = 8
  kernel_size: int = 9
  stride: int = 2
  batch_norm: bool = False
  impl: str = "auto"
  kernel_init: Initializer = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32
  padding: str = "valid"
  bias_init: BiasInit = initializers.zero_bias
  grouping: str = "paper"
  vote_scale: float = 1.0
  bn_scale_init: Initializer = nn.initializers.ones

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = Conv(self.num_types * self.dim, self.kernel_size, self.stride,
             self.impl, self.kernel_init, self.dtype, padding=self.padding,
             bias_init=self.bias_init, output_scale=self.vote_scale,
             name="conv")(x)
    if self.batch_norm:
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                       dtype=self.dtype, scale_init=self.bn_scale_init,
                       name="bn")(x)
    u = group_capsules(x, self.num_types, self.dim, self.grouping)
    # Squash in float32: lengths near 1 matter for the margin loss.
    return squash(u.astype(jnp.float32))


def group_capsules(x: jax.Array, num_types: int, dim: int,
                   grouping: str = "paper") -> jax.Array:
  """Primary-capsule conv output [B, H, W, num_types * dim] -> capsules
  [B, H * W * num_types, dim] (see PrimaryCapsules for ``grouping``)."""
  b, h, w, c = x.shape
  if c != num_types * dim:
    raise ValueError(f"{c} channels are not {num_types} types x {dim} dims")
  if grouping == "paper":
    return x.reshape(b, h * w * num_types, dim)
  if grouping == "reference":
    # [B, H, W, dim, types] -> torch.stack([conv_k(x) for k], 1): [B, dim,
    # types, H, W] -> .view(B, -1, dim).
    x = x.reshape(b, h, w, dim, num_types).transpose(0, 3, 4, 1, 2)
    return x.reshape(b, h * w * num_types, dim)
  raise ValueError(f"Unknown primary_grouping {grouping!r}; valid: "
                   f"{', '.join(GROUPINGS)}")
