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

from capsnet_jax import conv

Initializer = Callable[..., jax.Array]


def squash(s: jax.Array, axis: int = -1, eps: float = 1e-7) -> jax.Array:
  """Capsule non-linearity |s|^2 / (1 + |s|^2) * s / |s|.

  ``eps`` sits inside the square root so that the value and the gradient are
  finite (zero) at s = 0; zero-length capsules are common early in training.

  Args:
    s: [..., D] capsule input vectors.
    axis: the capsule dimension.
    eps: added to |s|^2 inside the square root.

  Returns:
    [..., D] vectors of the same direction with length in [0, 1).
  """
  sq = jnp.sum(jnp.square(s), axis=axis, keepdims=True)
  return s * (sq / (1.0 + sq) / jnp.sqrt(sq + eps))


class Conv(nn.Module):
  """VALID (or, with transpose, transposed) convolution with bias whose
  implementation is chosen by name.

  Parameters are named and shaped exactly as ``flax.linen.Conv`` (kernel HWIO,
  bias [features]), so checkpoints do not depend on ``impl``.
  """
  features: int
  kernel_size: int
  stride: int = 1
  impl: str = "auto"
  kernel_init: Initializer = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32
  transpose: bool = False
  padding: str = "valid"  # valid | same (TensorFlow's; not for transpose)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, H, W, Cin] -> [B, Ho, Wo, features] (transposed: Ho = (H - 1) *
    stride + kernel_size)."""
    k = self.kernel_size
    kernel = self.param("kernel", self.kernel_init,
                        (k, k, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,),
                      jnp.float32)
    if self.padding == "same" and not self.transpose:
      x = conv.pad_same(x, k, self.stride)
    op = conv.conv_transpose2d if self.transpose else conv.conv2d
    y = op(x.astype(self.dtype), kernel.astype(self.dtype), stride=self.stride,
           impl=self.impl)
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

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = Conv(self.filters, self.kernel_size, 1, self.impl, self.kernel_init,
             self.dtype, padding=self.padding, name="conv")(x)
    if self.batch_norm:
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                       dtype=self.dtype, name="bn")(x)
    return nn.relu(x)


class PrimaryCapsules(nn.Module):
  """Primary capsules: strided convolution to num_types x dim channels, squash.

  A capsule is the ``dim`` channels of one capsule type at one position
  (channels-last grouping), not ``dim`` spatially consecutive values of one
  feature map as in the reference implementation.

  [B, H, W, C] -> [B, Ho * Wo * num_types, dim], ordered (row, column, type).
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

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = Conv(self.num_types * self.dim, self.kernel_size, self.stride,
             self.impl, self.kernel_init, self.dtype, padding=self.padding,
             name="conv")(x)
    if self.batch_norm:
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                       dtype=self.dtype, name="bn")(x)
    b, h, w, _ = x.shape
    u = x.reshape(b, h * w * self.num_types, self.dim)
    # Squash in float32: lengths near 1 matter for the margin loss.
    return squash(u.astype(jnp.float32))
