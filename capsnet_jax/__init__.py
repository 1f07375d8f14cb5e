"""capsnet_jax: Capsule Networks with dynamic routing in JAX/Flax.

Synopsis (from the checkout, with the MNIST files in ../shared/data/mnist;
the suite runs it as a doctest)::

  >>> import capsnet_jax
  >>> from capsnet_jax.data import idx
  >>> images, labels = idx.load_mnist_idx("../shared/data/mnist", "test")
  >>> m = capsnet_jax.load("bundled:mnist_efficient")   # or a training workdir
  >>> out = m.predict(images[:8])   # uint8 0..255 or floats in [0, 1]
  >>> out.predictions.tolist()      # [N]; out.lengths: [N, 10]
  [7, 2, 1, 0, 4, 1, 4, 9]

  >>> from capsnet_jax import CapsNet, PrimaryCapsules, ClassCapsules, squash
  >>> model = CapsNet(num_classes=10, image_shape=(28, 28, 1))   # flax.linen

``m.predict`` returns a Prediction (capsnet_jax.inference.trained): lengths,
predictions, class capsules and, where the weights have a decoder,
reconstructions.

The package's parts (imports point one way, top to bottom):

  model/      layers, routing, decoders, the two model families
  data/       the dataset registry, augmentation, IDX files, input pipeline
  experiment  a config validated and resolved once (recipes, validation)
  workdir/    a run's folder: record, checkpoints, history, logging, parks
  training/   state, schedules, losses, compiled steps, the loop
  inference/  trained models and bundles, prediction on files, ensembles
  analysis/   figures, --mode=visualize, the results report, curves
  cli         the command line (main.py, ``capsnet-jax``)

``import capsnet_jax`` is cheap: the names below are imported on first use.
"""

import importlib

__version__ = "0.2.0"

# name -> module that defines it (PEP 562 lazy attributes).
_LAZY = {
    "load": "capsnet_jax.inference.trained",
    "squash": "capsnet_jax.model.layers",
    "PrimaryCapsules": "capsnet_jax.model.layers",
    "ConvStem": "capsnet_jax.model.layers",
    "ClassCapsules": "capsnet_jax.model.routing",
    "dynamic_routing": "capsnet_jax.model.routing",
    "CapsNet": "capsnet_jax.model.models",
    "EfficientCapsNet": "capsnet_jax.model.efficient",
}
__all__ = sorted(_LAZY)


def __getattr__(name):
  if name in _LAZY:
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_LAZY))
