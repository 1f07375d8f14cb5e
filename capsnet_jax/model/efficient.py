"""Efficient-CapsNet (Mazzia, Salvetti & Chiaberge 2021): self-attention routing.

Synopsis::

  model = efficient.EfficientCapsNetMNIST()   # or config.model =
                                              # "efficient_capsnet"
  variables = model.init({"params": rng}, images, train=False)
  out, updates = model.apply(variables, images, labels, train=True,
                             mutable=["batch_stats"])   # dict, as CapsNet's

The MNIST architecture of the authors' released code
(EscVM/Efficient-CapsNet, models/efficient_capsnet_graph_mnist.py and
utils/layers.py), 28x28x1 input:

  stem        Conv 32 5x5, ReLU, BN        -> 24x24x32
              Conv 64 3x3, ReLU, BN        -> 22x22x64
              Conv 64 3x3, ReLU, BN        -> 20x20x64
              Conv 128 3x3 stride 2, ReLU, BN -> 9x9x128   (all VALID)
  primary     depthwise Conv 9x9 (one filter per channel, VALID) -> 1x1x128,
              reshaped to 16 capsules x 8D, ``squash``
  class_caps  self-attention routing (FCCaps) to 10 capsules x 16D
  decoder     Dense 512 ReLU, Dense 1024 ReLU, Dense 784 sigmoid

Batch norm comes AFTER the ReLU, as in their code. Trainable parameters:
161,824 without the decoder (the paper's figure), 1,573,168 with it; the batch
norms add 576 non-trainable running statistics (tests/test_efficient.py
derives every count).

The parts have CapsNet's top-level names (stem, primary, class_caps, decoder),
so checkpoints, summaries and figures treat both families alike.
"""

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from capsnet_jax.model import conv
from capsnet_jax.model import decoders
from capsnet_jax.model import layers
from capsnet_jax.model import masking

Initializer = Callable[..., jax.Array]


def squash(s: jax.Array, axis: int = -1, eps: float = 1e-20) -> jax.Array:
  """Efficient-CapsNet's squash: (1 - 1 / exp(|s|)) * s / |s|.

  The authors' ``Squash`` computes ``(1 - 1/(exp(n) + eps)) * s / (n + eps)``
  with eps = 10e-21. Here 1 - 1/exp(n) is written -expm1(-n): the same value
  (their eps is 1e-20 next to exp(n) >= 1, below float32's resolution), exact
  for small n, and with a finite gradient where exp(n) overflows (n > 88).
  ``eps`` sits inside the square root, so that the value (0) and the gradient
  are finite at s = 0, where tf.norm's gradient is NaN.

  Args:
    s: [..., D] capsule input vectors.
    axis: the capsule dimension.
    eps: added to |s|^2 inside the square root.

  Returns:
    [..., D] vectors of the same direction with length 1 - exp(-|s|) in [0, 1).
  """
  n = jnp.sqrt(jnp.sum(jnp.square(s), axis=axis, keepdims=True) + eps)
  return -jnp.expm1(-n) * (s / n)


def self_attention_routing(u_hat: jax.Array,
                           bias: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Non-iterative self-attention routing (the authors' FCCaps.call).

  For each output capsule j, A_j = U_j U_j^T / sqrt(D) is the [N, N]
  agreement between the predictions of all input capsules; the routing logit
  of input n is the row sum sum_m A_j[n, m]; the coupling coefficients are
  its softmax over the OUTPUT capsules j (their tf.nn.softmax(c, axis=1) on
  [B, K, N, 1]); then s_j = sum_n (c_nj + b_jn) u_hat_jn and v_j = squash(s_j).

  Args:
    u_hat: [B, K, N, D] prediction vectors (output capsule, input capsule,
      output dimension), in the authors' layout.
    bias: [K, N, 1], added to the coupling coefficients (the paper's B).

  Returns:
    v: [B, K, D] output capsules; c: [B, N, K] coupling coefficients (before
    the bias), each row summing to 1 over the K output capsules.
  """
  d = u_hat.shape[-1]
  logits = jnp.einsum("bknd,bkmd->bkn", u_hat, u_hat) / jnp.sqrt(float(d))
  c = jax.nn.softmax(logits, axis=1)  # over k, the output capsules
  s = jnp.einsum("bkn,bknd->bkd", c, u_hat) + jnp.einsum(
      "kn,bknd->bkd", bias[..., 0], u_hat)
  return squash(s), jnp.swapaxes(c, 1, 2)


class SelfAttentionCapsules(nn.Module):
  """Fully connected capsule layer with self-attention routing (FCCaps).

  Parameters, shaped as the authors': W [K, N, in_dim, dim] (he_normal, whose
  fans Keras and flax both take from the last two axes) and bias [K, N, 1]
  (zeros).
  """
  num_out: int
  dim: int = 16
  w_init: Initializer = nn.initializers.he_normal()

  @nn.compact
  def __call__(self, u: jax.Array) -> tuple[jax.Array, jax.Array]:
    """u: [B, N, in_dim] -> (v [B, K, dim], c [B, N, K])."""
    _, num_in, in_dim = u.shape
    w = self.param("W", self.w_init, (self.num_out, num_in, in_dim, self.dim),
                   jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.num_out, num_in, 1),
                      jnp.float32)
    u_hat = jnp.einsum("bni,knid->bknd", u.astype(jnp.float32), w)
    return self_attention_routing(u_hat, bias)


class DepthwiseConv(nn.Module):
  """VALID depthwise convolution with bias (one k x k filter per channel).

  Parameters named and shaped as ``flax.linen.Conv(C, k,
  feature_group_count=C)`` and Keras' ``Conv2D(C, k, groups=C)``: kernel
  [k, k, 1, C], bias [C]. ``impl`` "xla" runs lax's grouped convolution;
  every other choice multiplies image patches by the kernel, a product the
  backward pass also keeps cheap on CPU.
  """
  kernel_size: int
  stride: int = 1
  impl: str = "auto"
  kernel_init: Initializer = nn.initializers.glorot_uniform()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, H, W, C] -> [B, Ho, Wo, C]."""
    k, c = self.kernel_size, x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (k, k, 1, c), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    if conv.resolve(self.impl) == "xla":
      y = jax.lax.conv_general_dilated(
          x, kernel, (self.stride, self.stride), "VALID",
          dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)
    else:
      b, ho, wo = x.shape[0], *(
          conv.output_size(s, k, self.stride) for s in x.shape[1:3])
      patches = conv.extract_patches(x, k, k, self.stride)  # (row, col, chan)
      y = jnp.einsum("bhwpc,pc->bhwc", patches.reshape(b, ho, wo, k * k, c),
                     kernel.reshape(k * k, c))
    return y + bias.astype(self.dtype)


class Stem(nn.Module):
  """Convolutions, each followed by ReLU and then batch norm (their order).

  [B, H, W, C] -> [B, Ho, Wo, features[-1]].
  """
  features: Sequence[int] = (32, 64, 64, 128)
  kernels: Sequence[int] = (5, 3, 3, 3)
  strides: Sequence[int] = (1, 1, 1, 2)
  impl: str = "auto"
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    for i, (f, k, s) in enumerate(zip(self.features, self.kernels,
                                      self.strides)):
      x = layers.Conv(f, k, s, self.impl, nn.initializers.he_normal(),
                      self.dtype, name=f"conv{i}")(x)
      x = nn.BatchNorm(use_running_average=not train,
                       momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                       dtype=self.dtype, name=f"bn{i}")(nn.relu(x))
    return x


class PrimaryCapsules(nn.Module):
  """Depthwise convolution, reshape to capsules of ``dim``, squash.

  [B, H, W, C] -> [B, Ho * Wo * C / dim, dim]: a capsule is ``dim``
  consecutive channels at one position (their Reshape((N, D))).
  """
  dim: int = 8
  kernel_size: int = 9
  impl: str = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = DepthwiseConv(self.kernel_size, 1, self.impl, dtype=self.dtype,
                      name="conv")(x)
    b, h, w, c = x.shape
    if c % self.dim:
      raise ValueError(f"{c} channels do not split into capsules of {self.dim}")
    u = x.reshape(b, h * w * c // self.dim, self.dim)
    return squash(u.astype(jnp.float32))


class Generator(nn.Module):
  """The authors' decoder: Dense 512, ReLU, Dense 1024, ReLU, Dense H*W*C,
  sigmoid; he_normal hidden kernels, glorot_normal output kernel.

  Named as decoders.FCDecoder (dense0, dense1, out); with batch_norm, BN after
  each hidden Dense as there. [B, K * D] -> [B, H, W, C].
  """
  image_shape: tuple[int, int, int]
  hidden: Sequence[int] = (512, 1024)
  batch_norm: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    for i, width in enumerate(self.hidden):
      x = nn.Dense(width, kernel_init=nn.initializers.he_normal(),
                   dtype=self.dtype, dot_general=conv.dot_general,
                   name=f"dense{i}")(x)
      if self.batch_norm:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                         dtype=self.dtype, name=f"bn{i}")(x)
      x = nn.relu(x)
    h, w, c = self.image_shape
    x = nn.Dense(h * w * c, kernel_init=nn.initializers.glorot_normal(),
                 dtype=self.dtype, dot_general=conv.dot_general,
                 name="out")(x)
    return nn.sigmoid(x.astype(jnp.float32)).reshape(-1, h, w, c)


class EfficientCapsNet(nn.Module):
  """Efficient-CapsNet with a reconstruction decoder; CapsNet's call contract.

  Attributes:
    num_classes: K, number of class capsules.
    image_shape: (H, W, C) of the model input.
    stem_features, stem_kernels, stem_strides: the convolutional stem.
    primary_kernel, primary_dim: primary capsules (the depthwise kernel covers
      the whole 9x9 map for MNIST, giving 128 / 8 = 16 capsules).
    class_dim: D, dimension of the class capsules.
    decoder: "fc" (the authors' generator) or "deconv" (decoders.py's).
    decoder_hidden: widths of the FC decoder's hidden layers.
    batch_norm: BN in the decoder; the stem always has it (their design).
    bn_momentum, bn_epsilon: the stem's batch norms (Keras' defaults).
    conv_impl: implementation of the convolutions (see conv.IMPLS).
    dtype: compute dtype of convolutions and decoder (capsules, routing and
      squash stay float32).
  """
  num_classes: int = 10
  image_shape: tuple[int, int, int] = (28, 28, 1)
  stem_features: Sequence[int] = (32, 64, 64, 128)
  stem_kernels: Sequence[int] = (5, 3, 3, 3)
  stem_strides: Sequence[int] = (1, 1, 1, 2)
  primary_kernel: int = 9
  primary_dim: int = 8
  class_dim: int = 16
  decoder: str = "fc"
  decoder_hidden: Sequence[int] = (512, 1024)
  batch_norm: bool = False
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  conv_impl: str = "auto"
  dtype: Any = jnp.float32

  def setup(self):
    self.stem = Stem(tuple(self.stem_features), tuple(self.stem_kernels),
                     tuple(self.stem_strides), self.conv_impl, self.bn_momentum,
                     self.bn_epsilon, self.dtype)
    self.primary = PrimaryCapsules(self.primary_dim, self.primary_kernel,
                                   self.conv_impl, self.dtype)
    self.class_caps = SelfAttentionCapsules(self.num_classes, self.class_dim)
    if self.decoder == "fc":
      self.decoder_module = Generator(tuple(self.image_shape),
                                      tuple(self.decoder_hidden),
                                      self.batch_norm, self.dtype,
                                      name="decoder")
    else:
      self.decoder_module = decoders.create_decoder(
          self.decoder, self.image_shape, self.num_classes, self.batch_norm,
          self.decoder_hidden, nn.initializers.he_normal(), self.dtype,
          module_name="decoder", conv_impl=self.conv_impl)

  def encode(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """Images to capsules.

    Args:
      images: [B, H, W, C] float.
      train: batch norm uses batch statistics (and updates them) if True.

    Returns:
      dict with primary_caps [B, N, 8], class_caps [B, K, D],
      coupling [B, N, K] (the attention coupling coefficients, before the
      routing bias), lengths [B, K], scores [B, K] (the lengths, every
      family's per-class scores), predictions [B] (longest capsule).
    """
    u = self.primary(self.stem(images, train))
    v, c = self.class_caps(u)
    # Their Length layer: Keras' epsilon (1e-7) inside the square root.
    lengths = jnp.sqrt(jnp.sum(jnp.square(v), axis=-1) + 1e-7)
    return dict(primary_caps=u, class_caps=v, coupling=c, lengths=lengths,
                scores=lengths, predictions=jnp.argmax(lengths, axis=-1))

  def decode(self, class_caps: jax.Array, labels: jax.Array,
             train: bool = False) -> jax.Array:
    """Reconstruct from the capsule of ``labels``: [B, K, D], [B] -> [B, H, W, C]."""
    return self.decoder_module(masking.mask_capsules(class_caps, labels), train)

  def decode_masked(self, masked: jax.Array, train: bool = False) -> jax.Array:
    """Reconstruct from already masked, flattened capsules [B, K * D]."""
    return self.decoder_module(masked, train)

  def __call__(self, images: jax.Array, labels: jax.Array | None = None,
               train: bool = False) -> dict[str, jax.Array]:
    """Encode and reconstruct; the decoder sees the capsule of the TRUE label
    when ``train`` and labels are given, else of the predicted class.

    Returns:
      ``encode``'s dict plus reconstructions [B, H, W, C] in [0, 1].
    """
    out = self.encode(images, train)
    mask_labels = labels if (train and labels is not None) else out["predictions"]
    out["reconstructions"] = self.decode(out["class_caps"], mask_labels, train)
    return out


EfficientCapsNetMNIST = functools.partial(EfficientCapsNet, num_classes=10,
                                          image_shape=(28, 28, 1))
# The same structure, a few channels wide, for fast tests (not for training):
# 4 primary capsules of 8D.
_EfficientCapsNetTiny = functools.partial(
    EfficientCapsNet, num_classes=10, image_shape=(28, 28, 1),
    stem_features=(8, 8, 8, 32), decoder_hidden=(16, 32))
