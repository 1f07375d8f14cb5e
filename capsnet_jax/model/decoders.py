"""Reconstruction decoders, selected by name.

Synopsis::

  dec = decoders.create_decoder("deconv", image_shape=(28, 28, 1),
                                num_classes=10, batch_norm=True)
  images = dec(masked_caps, train=True)     # [B, K * 16] -> [B, 28, 28, 1]

Inputs are the class capsules masked by a one-hot and flattened; outputs are
images in [0, 1] (sigmoid).
"""

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from capsnet_jax.model import conv
from capsnet_jax.model import initializers
from capsnet_jax.model import layers

Initializer = Callable[..., jax.Array]
BiasInit = initializers.BiasInit
DECODERS = ("fc", "deconv")


def _bn(train: bool, dtype: Any, name: str,
        scale_init: Initializer = nn.initializers.ones) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=dtype,
                      scale_init=scale_init, name=name)


class FCDecoder(nn.Module):
  """Dense 512, ReLU, Dense 1024, ReLU, Dense H*W*C, sigmoid.

  [B, K * D] -> [B, H, W, C]; with batch_norm, BN after each hidden Dense.
  """
  image_shape: tuple[int, int, int]
  hidden: Sequence[int] = (512, 1024)
  batch_norm: bool = False
  kernel_init: Initializer = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32
  bias_init: BiasInit = initializers.zero_bias

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    for i, width in enumerate(self.hidden):
      x = initializers.dense(width, x.shape[-1], self.kernel_init,
                             self.bias_init, f"dense{i}", dtype=self.dtype,
                             dot_general=conv.dot_general)(x)
      if self.batch_norm:
        x = _bn(train, self.dtype, f"bn{i}")(x)
      x = nn.relu(x)
    h, w, c = self.image_shape
    x = initializers.dense(h * w * c, x.shape[-1], self.kernel_init,
                           self.bias_init, "out", dtype=self.dtype,
                           dot_general=conv.dot_general)(x)
    return nn.sigmoid(x.astype(jnp.float32)).reshape(-1, h, w, c)


class DeconvDecoder(nn.Module):
  """Dense, reshape to a small map, transposed convolutions, sigmoid.

  28x28 (REFERENCE.md): Dense 36K -> 6x6xK (360 -> 6x6x10 for MNIST);
  ConvT 32 k9 s2 (6 -> 19);
  ConvT 64 k9 (19 -> 27); ConvT C k2 (27 -> 28).
  32x32: Dense 16K -> 4x4xK (K classes); ConvT 32 k9 s2 (4 -> 15);
  ConvT 64 k9 (15 -> 23); ConvT 128 k9 (23 -> 31); ConvT C k2 (31 -> 32).
  Other even sizes S use the 32x32 layout with a start map of (S - 24) / 2
  rows, or without the 128-wide layer when that map would be too small
  (24x24: 4x4xK, ConvT 32, ConvT 64, ConvT C).

  [B, K * D] -> [B, H, W, C]; with batch_norm, BN after every hidden layer
  (``bn_scale_init`` the scale of those after transposed convolutions, the
  reference's BatchNorm2d; the one after the Dense layer starts at one, its
  BatchNorm1d).

  output_mean: where given, the output layer's bias starts at
  logit(output_mean), so that the first reconstructions are the target's
  mean intensity instead of 0.5 (see below); None: the scheme's bias.

  Why: the output layer is a convolution, so each of the last hidden
  layer's channels brightens or darkens every pixel alike. Starting at 0.5
  against MNIST's 87% black pixels, every pixel's first error says
  "darker"; the channels with positive output weights are then switched
  off (Adam moves each ReLU bias by about the learning rate per step, more
  than those channels' early pre-activations) and a ReLU that is off for
  every input gets no gradient again. What is left can only darken, and the
  decoder settles on a black image (test SSE = the test set's sum of
  squared pixels, 89.34). The FC decoder's output layer has one bias and
  weight per pixel and does not fall into it. It happens with our default
  init, with the reference's, and with PyTorch's own (docs/results.md,
  "Deconvolution decoder").
  """
  image_shape: tuple[int, int, int]
  num_classes: int
  batch_norm: bool = False
  kernel_init: Initializer = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32
  conv_impl: str = "auto"
  bias_init: BiasInit = initializers.zero_bias
  output_mean: float | None = None
  bn_scale_init: Initializer = nn.initializers.ones

  def _layout(self) -> tuple[tuple[int, int, int], tuple[int, ...]]:
    """(start map [h, w, c], hidden ConvT widths) for this image size."""
    h, w, _ = self.image_shape
    if h != w:
      raise ValueError(f"deconv decoder needs square images, got {h}x{w}")
    if h == 28:
      return (6, 6, self.num_classes), (32, 64)
    # ConvT k9 s2 maps n -> 2n + 7, each further ConvT k9 adds 8 and the
    # final k2 adds 1: h = 2 * start + 8 * len(widths).
    for widths in ((32, 64, 128), (32, 64)):
      start, rem = divmod(h - 8 * len(widths), 2)
      if rem == 0 and start >= 3:
        return (start, start, self.num_classes), widths
    raise ValueError(f"deconv decoder has no layout for {h}x{w} images; "
                     "supported: 28x28 and even sizes >= 22")

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    start, widths = self._layout()
    x = initializers.dense(start[0] * start[1] * start[2], x.shape[-1],
                           self.kernel_init, self.bias_init, "dense",
                           dtype=self.dtype, dot_general=conv.dot_general)(x)
    if self.batch_norm:
      x = _bn(train, self.dtype, "bn_dense")(x)
    x = nn.relu(x).reshape(-1, *start)
    for i, width in enumerate(widths):
      stride = 2 if i == 0 else 1
      x = layers.ConvTranspose(width, 9, stride, self.conv_impl,
                               self.kernel_init, self.dtype,
                               bias_init=self.bias_init, name=f"deconv{i}")(x)
      if self.batch_norm:
        x = _bn(train, self.dtype, f"bn{i}", self.bn_scale_init)(x)
      x = nn.relu(x)
    out_bias = self.bias_init
    if self.output_mean is not None:
      out_bias = initializers.constant_bias(logit(self.output_mean))
    x = layers.ConvTranspose(self.image_shape[2], 2, 1, self.conv_impl,
                             self.kernel_init, self.dtype,
                             bias_init=out_bias, name="out")(x)
    return nn.sigmoid(x.astype(jnp.float32))


def logit(p: float) -> float:
  """The sigmoid's inverse, log(p / (1 - p)), for p in (0, 1)."""
  if not 0.0 < p < 1.0:
    raise ValueError(f"output_mean must be in (0, 1), got {p!r}")
  return math.log(p / (1.0 - p))


def create_decoder(name: str, image_shape: tuple[int, int, int],
                   num_classes: int, batch_norm: bool = False,
                   hidden: Sequence[int] = (512, 1024),
                   kernel_init: Initializer = nn.initializers.lecun_normal(),
                   dtype: Any = jnp.float32,
                   module_name: str = "decoder",
                   conv_impl: str = "auto",
                   bias_init: BiasInit = initializers.zero_bias,
                   output_mean: float | None = None,
                   bn_scale_init: Initializer = nn.initializers.ones
                   ) -> nn.Module:
  """The decoder called ``name`` (one of DECODERS); ``conv_impl`` picks the
  transposed convolutions' implementation (see conv.conv_transpose2d);
  ``output_mean`` and ``bn_scale_init`` are the deconv decoder's (the FC
  decoder's per-pixel output biases need no help; its batch norms follow
  Dense layers and start at one)."""
  if name == "fc":
    return FCDecoder(tuple(image_shape), tuple(hidden), batch_norm,
                     kernel_init, dtype, bias_init, name=module_name)
  if name == "deconv":
    return DeconvDecoder(tuple(image_shape), num_classes, batch_norm,
                         kernel_init, dtype, conv_impl, bias_init,
                         output_mean, bn_scale_init, name=module_name)
  raise ValueError(f"Unknown decoder {name!r}; valid: {DECODERS}")
