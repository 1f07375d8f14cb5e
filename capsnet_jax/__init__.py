"""capsnet_jax: Capsule Networks with dynamic routing in JAX/Flax.

Synopsis::

  from capsnet_jax import models
  model = models.create_model(config)           # a flax.linen CapsNet
  variables = model.init(rng, images)
  out = model.apply(variables, images)          # dict: lengths, class_caps, ...

  from capsnet_jax import PrimaryCapsules, ClassCapsules, squash  # the layers
  from capsnet_jax import trained
  m = trained.load("runs/mnist")                # a trained workdir
  m.predict(images), m.predict_files(["digit.png"])

``import capsnet_jax`` is cheap: the names below are imported on first use.
"""

import importlib

__version__ = "0.1.0"

# name -> module that defines it (PEP 562 lazy attributes).
_LAZY = {
    "squash": "capsnet_jax.layers",
    "PrimaryCapsules": "capsnet_jax.layers",
    "ConvStem": "capsnet_jax.layers",
    "ClassCapsules": "capsnet_jax.routing",
    "dynamic_routing": "capsnet_jax.routing",
    "CapsNet": "capsnet_jax.models",
    "create_model": "capsnet_jax.models",
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
