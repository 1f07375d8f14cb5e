"""The baseline CNNs that the capsule models are compared with.

Synopsis::

  model = cnn.BaselineCNNMNIST()            # or config.model = "cnn"
  variables = model.init({"params": rng}, images, train=False)
  out = model.apply(variables, images, train=True,
                    rngs={"dropout": rng})   # dict: logits, scores, predictions

Two architectures, one module (``CNN``):

* ``cnn``: the paper's MNIST baseline (Sabour et al. 2017, section 5; see
  ../shared/REFERENCE.md): three 5x5 stride-1 SAME convolutions of 256, 256
  and 128 channels with ReLU and no pooling, fully connected 328 and 192
  with ReLU, dropout, a 10-way linear layer whose softmax is trained with
  cross-entropy. 35,445,522 parameters on 28x28x1 MNIST: conv 6,656 +
  1,638,656 + 819,328, dense 32,915,784 + 63,168, output 1,930.
* ``cnn_maxpool``: the baseline of the authors' released code
  (research/capsules models/conv_model.py: 5x5 conv 512, 2x2 max-pool
  stride 2, 5x5 conv 256, 2x2 max-pool, fully connected 1024, linear 10; SAME
  padding) with the paper's dropout before the output layer: the paper's
  affNIST comparison uses a CNN "with MaxPooling and DropOut", and the
  paper's own baseline has no pooling. On the 40x40 canvas it has
  29,516,042 parameters and about 2.7 GFLOP per image forward, against the
  28x28 baseline's 35.4M and 3.9 GFLOP: a CNN of the baseline's cost
  (configs/mnist40_cnn.py).

Dropout (rate 0.5, between the last hidden layer and the output layer): the
paper says the last fully connected layer is "connected with dropout" to the
softmax, i.e. dropout on the inputs of the output layer, and gives no rate;
0.5 is the rate of Srivastava et al. 2014 for fully connected layers and of
the TensorFlow MNIST CNN tutorial of the paper's time (keep_prob 0.5 before
its output layer). The convolutions get no dropout, as in both sources.

Initialisation: flax's defaults (LeCun-normal kernels, zero biases); the
paper gives none, and Adam makes the scale matter little.

The outputs share the capsule models' ``predictions`` [B] and ``scores``
[B, K] (here the softmax probabilities; the capsule lengths there), so
inference code that only needs classes and per-class scores works for every
family (capsnet_jax.inference.trained.TrainedModel.classify). There are no
capsules and no decoder: models.has_capsules(model) is False.
"""

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from capsnet_jax.model import conv
from capsnet_jax.model import layers

Initializer = Callable[..., jax.Array]


class CNN(nn.Module):
  """Convolutions (ReLU, optional 2x2 max pooling), fully connected ReLU
  layers, dropout, a linear output layer.

  Attributes:
    num_classes: K, the output layer's width.
    image_shape: (H, W, C) of the model input.
    conv_features: channels of each 5x5 stride-1 SAME convolution.
    conv_kernel: their kernel size.
    max_pool: a 2x2 stride-2 SAME max pooling after each convolution.
    dense_features: widths of the hidden fully connected layers.
    dropout_rate: dropout on the output layer's input (training only).
    conv_impl: implementation of the convolutions (see conv.IMPLS).
    dtype: compute dtype of convolutions and dense layers (the logits and
      the loss stay float32).

  Parameters are named conv0.., dense0.., out, so that the summary counts
  each layer (analysis.summary).
  """
  num_classes: int = 10
  image_shape: tuple[int, int, int] = (28, 28, 1)
  conv_features: Sequence[int] = (256, 256, 128)
  conv_kernel: int = 5
  max_pool: bool = False
  dense_features: Sequence[int] = (328, 192)
  dropout_rate: float = 0.5
  conv_impl: str = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, labels: jax.Array | None = None,
               train: bool = False) -> dict[str, jax.Array]:
    """Classify a batch.

    Args:
      images: [B, H, W, C] float model inputs.
      labels: unused (the capsule models' signature, so that the training
        and inference code call every family alike).
      train: dropout is applied (it needs the "dropout" rng) if True.

    Returns:
      dict with logits [B, K] (float32), scores [B, K] (their softmax) and
      predictions [B] (the argmax).
    """
    del labels
    x = images
    for i, features in enumerate(self.conv_features):
      x = layers.Conv(features, self.conv_kernel, 1, self.conv_impl,
                      nn.initializers.lecun_normal(), self.dtype,
                      padding="same", name=f"conv{i}")(x)
      x = nn.relu(x)
      if self.max_pool:
        x = nn.max_pool(x, (2, 2), (2, 2), padding="SAME")
    x = x.reshape(x.shape[0], -1)
    for i, features in enumerate(self.dense_features):
      x = nn.relu(nn.Dense(features, dtype=self.dtype,
                           dot_general=conv.dot_general,
                           name=f"dense{i}")(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    logits = nn.Dense(self.num_classes, dtype=self.dtype,
                      dot_general=conv.dot_general,
                      name="out")(x).astype(jnp.float32)
    return dict(logits=logits, scores=jax.nn.softmax(logits, axis=-1),
                predictions=jnp.argmax(logits, axis=-1))


# The paper's MNIST baseline (35,445,522 parameters on 28x28x1).
BaselineCNNMNIST = functools.partial(CNN, num_classes=10,
                                     image_shape=(28, 28, 1))
# The authors' released baseline with max pooling, plus dropout (the
# paper's affNIST CNN; configs/mnist40_cnn.py).
MaxPoolCNN = functools.partial(CNN, conv_features=(512, 256), max_pool=True,
                               dense_features=(1024,))
# The same structure, a few channels wide, for fast tests (not for training).
_CNNTiny = functools.partial(CNN, num_classes=10, image_shape=(28, 28, 1),
                             conv_features=(4, 4, 2), dense_features=(16, 12))
