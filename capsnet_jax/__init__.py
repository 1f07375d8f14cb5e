"""capsnet_jax: Capsule Networks with dynamic routing in JAX/Flax.

Synopsis::

  from capsnet_jax import models
  model = models.create_model(config)           # a flax.linen CapsNet
  variables = model.init(rng, images)
  out = model.apply(variables, images)          # dict: lengths, class_caps, ...
"""

__version__ = "0.1.0"
