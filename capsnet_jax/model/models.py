"""The CapsNet model and its named variants; the registry of every model
family (MODELS: CapsNet, Efficient-CapsNet, the baseline CNNs).

Synopsis::

  model = models.CapsNetMNIST()            # a named variant
  model = models.create("capsnet", num_classes=5, image_shape=(32, 32, 1))
  variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  out = model.apply(variables, images)     # dict, see CapsNet.__call__

Architecture (Sabour et al. 2017): conv1 256 9x9 + ReLU; primary capsules
(9x9 stride-2 conv to 32 types x 8D, squash); class capsules (16D, dynamic
routing); a decoder reconstructing the input from the masked class capsules.
"""

import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from capsnet_jax.model import cnn
from capsnet_jax.model import decoders
from capsnet_jax.model import efficient
from capsnet_jax.model import initializers
from capsnet_jax.model import layers
from capsnet_jax.model import masking
from capsnet_jax.model import routing

INITS = initializers.SCHEMES
# Where other code imports it from here.
reference_w_init = initializers.reference_w_init


class CapsNet(nn.Module):
  """CapsNet with dynamic routing and a reconstruction decoder.

  Attributes:
    num_classes: K, number of class capsules.
    image_shape: (H, W, C) of the model input.
    conv_filters, conv_kernel: conv1.
    primary_types, primary_dim, primary_kernel, primary_stride: primary caps.
    class_dim: D, dimension of the class capsules.
    routing_iterations, leaky_routing, routing_stop_gradient: routing.
    orphan_capsule: one extra class capsule that is never a target (the
      reference's --leaky; leaky_routing is the authors' orphan logit
      instead). The margin loss pushes its length below m-; predictions,
      masking and every output except ``orphan_lengths`` leave it out, and
      the decoder input keeps its (always zero) slot, (K + 1) * D wide, as
      the reference's decoder is built for K + 1 capsules.
    decoder: a name in decoders.DECODERS.
    decoder_hidden: widths of the FC decoder's hidden layers.
    batch_norm: BN after conv1, after the primary conv and in the decoder.
    conv_impl: implementation of the convolutions and the deconv decoder's
      transposed convolutions (one of conv.IMPLS: "auto", "xla",
      "patches", "rows", "dft").
    init_scheme: a name in INITS (capsnet_jax.model.initializers).
    primary_grouping: "paper" or "reference" (layers.PrimaryCapsules).
    primary_vote_scale: factor on the primary-capsule convolution before
      its bias (the authors' 1 / primary_types; layers.PrimaryCapsules).
    decoder_output_mean: the deconv decoder's starting output level, the
      mean of its target (decoders.DeconvDecoder); None: 0.5.
    conv_padding: "valid" (the paper's MNIST model) or "same" (conv1 and
      the primary capsules of the authors' CIFAR10 model).
    dtype: compute dtype of convolutions and decoder (routing, squash and
      losses stay float32).
  """
  num_classes: int = 10
  image_shape: tuple[int, int, int] = (28, 28, 1)
  conv_filters: int = 256
  conv_kernel: int = 9
  primary_types: int = 32
  primary_dim: int = 8
  primary_kernel: int = 9
  primary_stride: int = 2
  class_dim: int = 16
  routing_iterations: int = 3
  leaky_routing: bool = False
  routing_stop_gradient: bool = False
  orphan_capsule: bool = False
  decoder: str = "fc"
  decoder_hidden: Sequence[int] = (512, 1024)
  batch_norm: bool = False
  conv_impl: str = "auto"
  init_scheme: str = "default"
  dtype: Any = jnp.float32
  conv_padding: str = "valid"
  primary_grouping: str = "paper"
  primary_vote_scale: float = 1.0
  decoder_output_mean: float | None = None

  def setup(self):
    init = initializers.scheme(self.init_scheme)
    self.stem = layers.ConvStem(self.conv_filters, self.conv_kernel,
                                self.batch_norm, self.conv_impl, init.conv1,
                                self.dtype, self.conv_padding, init.bias,
                                init.bn_scale)
    self.primary = layers.PrimaryCapsules(
        self.primary_types, self.primary_dim, self.primary_kernel,
        self.primary_stride, self.batch_norm, self.conv_impl,
        init.primary(self.primary_dim), self.dtype, self.conv_padding,
        init.bias, self.primary_grouping, self.primary_vote_scale,
        init.bn_scale)
    num_caps = self.num_classes + int(self.orphan_capsule)
    self.class_caps = routing.ClassCapsules(
        num_caps, self.class_dim, self.routing_iterations,
        self.leaky_routing, self.routing_stop_gradient, init.w,
        init.capsule_bias)
    self.decoder_module = decoders.create_decoder(
        self.decoder, self.image_shape, num_caps, self.batch_norm,
        self.decoder_hidden, init.decoder, self.dtype, module_name="decoder",
        conv_impl=self.conv_impl, bias_init=init.bias,
        output_mean=self.decoder_output_mean, bn_scale_init=init.bn_scale)

  def encode(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """Images to capsules.

    Args:
      images: [B, H, W, C] float.
      train: batch norm uses batch statistics (and updates them) if True.

    Returns:
      dict with primary_caps [B, N, 8], class_caps [B, K, D],
      coupling [B, N, K] (final routing coefficients), lengths [B, K],
      scores [B, K] (the lengths: every family's per-class scores),
      predictions [B] (longest class capsule); with orphan_capsule also
      orphan_lengths [B] (the K real classes are all the others show).
    """
    u = self.primary(self.stem(images, train), train)
    v, c = self.class_caps(u)
    lengths = layers.capsule_length(v)
    out = {}
    if self.orphan_capsule:  # The last capsule; only the loss sees it.
      out["orphan_lengths"] = lengths[:, -1]
      v, c, lengths = v[:, :-1], c[..., :-1], lengths[:, :-1]
    out.update(primary_caps=u, class_caps=v, coupling=c, lengths=lengths,
               scores=lengths, predictions=jnp.argmax(lengths, axis=-1))
    return out

  def decode(self, class_caps: jax.Array, labels: jax.Array,
             train: bool = False) -> jax.Array:
    """Reconstruct from the capsule of ``labels``: [B, K, D], [B] -> [B, H, W, C]."""
    masked = masking.mask_capsules(class_caps, labels)
    if self.orphan_capsule:  # Its slot: zero, as it is never the one kept.
      masked = jnp.pad(masked, ((0, 0), (0, class_caps.shape[-1])))
    return self.decoder_module(masked, train)

  def decode_masked(self, masked: jax.Array, train: bool = False) -> jax.Array:
    """Reconstruct from already masked, flattened capsules [B, K * D]
    ([B, (K + 1) * D] with orphan_capsule)."""
    return self.decoder_module(masked, train)

  def __call__(self, images: jax.Array, labels: jax.Array | None = None,
               train: bool = False) -> dict[str, jax.Array]:
    """Encode and reconstruct.

    The decoder sees the capsule of the TRUE label when ``train`` and labels
    are given, else of the predicted class.

    Returns:
      ``encode``'s dict plus reconstructions [B, H, W, C] in [0, 1].
    """
    out = self.encode(images, train)
    mask_labels = labels if (train and labels is not None) else out["predictions"]
    out["reconstructions"] = self.decode(out["class_caps"], mask_labels, train)
    return out


def decode_each(module: nn.Module, images: jax.Array,
                labels: jax.Array | None = None, num_targets: int = 2,
                train: bool = False) -> dict[str, jax.Array]:
  """Encode, then reconstruct each of several objects from its own capsule.

  For ``model.apply(variables, images, labels, method=models.decode_each)``
  with any model of CapsNet's contract (encode / decode): MultiMNIST, where
  the decoder sees one digit's capsule at a time.

  Args:
    images: [B, H, W, C].
    labels: [B, T] classes whose capsules are decoded (the true ones in
      training); None: the ``num_targets`` longest capsules, longest first
      (evaluation).

  Returns:
    ``encode``'s dict plus decoded_labels [B, T] and reconstructions
    [B, T, H, W, C], reconstruction t from the capsule of decoded_labels[:, t]
    alone.
  """
  out = module.encode(images, train)
  if labels is None:
    labels = masking.top_k_labels(out["lengths"], num_targets)
  b, t = labels.shape
  caps = jnp.repeat(out["class_caps"], t, axis=0)  # [B * T, K, D]
  recon = module.decode(caps, labels.reshape(-1), train)
  out["decoded_labels"] = labels
  out["reconstructions"] = recon.reshape(b, t, *recon.shape[1:])
  return out


# Named variants, as in REFERENCE.md.
CapsNetMNIST = functools.partial(CapsNet, num_classes=10, image_shape=(28, 28, 1))
CapsNetSmallNORB = functools.partial(CapsNet, num_classes=5,
                                     image_shape=(32, 32, 1))
CapsNetCIFAR10 = functools.partial(CapsNet, num_classes=10,
                                   image_shape=(32, 32, 3))
# A tiny model with the same structure for fast unit tests (not for training).
_CapsNetTiny = functools.partial(
    CapsNet, num_classes=10, image_shape=(28, 28, 1), conv_filters=8,
    primary_types=4, primary_dim=8, class_dim=16, decoder_hidden=(16, 32))

MODELS = {
    "capsnet": CapsNet,
    "tiny": _CapsNetTiny,
    # Efficient-CapsNet (self-attention routing), capsnet_jax/model/efficient.py.
    "efficient_capsnet": efficient.EfficientCapsNetMNIST,
    "efficient_tiny": efficient._EfficientCapsNetTiny,  # pylint: disable=protected-access
    # Baseline CNNs without capsules (softmax cross-entropy),
    # capsnet_jax/model/cnn.py: the paper's MNIST baseline, the authors'
    # max-pooling baseline (the 40x40 protocol), a tiny test variant.
    "cnn": cnn.BaselineCNNMNIST,
    "cnn_maxpool": cnn.MaxPoolCNN,
    "cnn_tiny": cnn._CNNTiny,  # pylint: disable=protected-access
}


def has_capsules(model: nn.Module | str) -> bool:
  """Whether ``model`` (a module, or a name in MODELS) is a capsule model
  (class capsules, margin loss, decoder) rather than a baseline CNN (softmax
  cross-entropy, no decoder): what the training steps, evaluation and the
  capsule-only modes ask."""
  if isinstance(model, str):
    cls = MODELS[model]
    return not issubclass(getattr(cls, "func", cls), cnn.CNN)
  return not isinstance(model, cnn.CNN)


def default_primary_types(name: str) -> int | None:
  """The primary capsule types the model called ``name`` has by default
  (32 for capsnet, 4 for the tiny test model); None for a model without
  the attribute (Efficient-CapsNet)."""
  cls = MODELS[name]
  if "primary_types" not in model_fields(name):
    return None
  default = getattr(cls, "keywords", {}).get("primary_types")
  return int(default if default is not None else
             getattr(getattr(cls, "func", cls), "primary_types"))


def create(name: str, **kwargs) -> nn.Module:
  """The model called ``name`` (one of MODELS) with ``kwargs``: those it has
  no attribute for (routing options for Efficient-CapsNet, say) are
  dropped."""
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; valid: {', '.join(MODELS)}")
  fields = model_fields(name)
  return MODELS[name](**{k: v for k, v in kwargs.items() if k in fields})


def model_fields(name: str) -> set[str]:
  """The attributes of the model called ``name`` in MODELS."""
  cls = MODELS[name]
  return {f.name for f in dataclasses.fields(getattr(cls, "func", cls))}
