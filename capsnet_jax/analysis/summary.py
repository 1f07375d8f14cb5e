"""--mode=summary: a parameter table and a JSON line of counts.

Synopsis::

  python main.py --config=configs/mnist.py --mode=summary --config.decoder=deconv
"""

import json
from typing import Any

from clu import parameter_overview
import jax
import jax.numpy as jnp
import numpy as np

from capsnet_jax import experiment


def _count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def parameter_shapes(config) -> tuple[Any, Any]:
  """(model, variables as ShapeDtypeStructs) of a config or experiment,
  without allocating parameters."""
  exp = experiment.ensure(config, "summary")
  model = exp.model
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0),
                         jnp.zeros((1, *exp.info.image_shape))))
  return model, variables


def summarize(params) -> dict[str, int]:
  """Parameter counts: total, encoder (all but the decoder, the figure papers
  quote: 6.8M for CapsNet, 161,824 for Efficient-CapsNet) and one per
  top-level part (stem, primary, class_caps, decoder for both capsule
  families; conv0.., dense0.., out for the baseline CNNs, whose encoder is
  the whole model)."""
  counts = {"total_params": _count(params),
            "encoder_params": _count(params) - _count(params.get("decoder", {}))}
  for part in params:
    counts[f"{part}_params"] = _count(params[part])
  return counts


def print_summary(config) -> dict[str, int]:
  exp = experiment.ensure(config, "summary")
  config = exp.config
  model, variables = parameter_shapes(exp)
  params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                        variables["params"])
  print(parameter_overview.get_parameter_overview(params, include_stats=False))
  counts = summarize(variables["params"])
  # Batch-norm running statistics: state, not trained (Keras' non-trainable).
  counts["non_trainable_params"] = _count(variables.get("batch_stats", {}))
  # A baseline CNN has no decoder, batch norm or orphan capsule: null.
  capsules = exp.capsules
  counts.update(model=config.model, dataset=config.dataset,
                data_setup=config.data_setup,
                decoder=config.decoder if capsules else None,
                batch_norm=bool(config.batch_norm) if capsules else None,
                orphan_capsule=(bool(getattr(model, "orphan_capsule", False))
                                if capsules else None))
  print(json.dumps(counts))
  return counts
