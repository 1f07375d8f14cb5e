"""The training state: parameters, optimiser state, step, batch statistics.

Synopsis::

  state = state_lib.create(exp, mesh)          # initialised, replicated
  variables = state_lib.model_variables(state) # what model.apply takes
  state_lib.count_params(state.params)

Inference restores checkpoints into this structure (without the training
loop).
"""

from typing import Any

from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax

from capsnet_jax import experiment
from capsnet_jax.training import mesh as mesh_lib
from capsnet_jax.training import schedules


class TrainState(train_state.TrainState):
  """Parameters, optimiser state, step and batch-norm statistics."""
  batch_stats: Any = None


def create(exp: experiment.Experiment, mesh=None,
           rng: jax.Array | None = None) -> TrainState:
  """exp.model's initialised state with Adam over the experiment's learning
  rate schedule (rng: default jax.random.key(config.seed)), replicated over
  ``mesh`` when given."""
  model = exp.model
  h, w, c = model.image_shape
  tx = optax.adam(schedules.learning_rate(exp))
  rng = jax.random.key(exp.config.seed) if rng is None else rng

  def init():
    variables = model.init({"params": rng}, jnp.zeros((1, h, w, c)),
                           train=False)
    return TrainState.create(apply_fn=model.apply, params=variables["params"],
                             tx=tx, batch_stats=variables.get("batch_stats", {}))

  if mesh is None:
    return jax.jit(init)()
  return jax.jit(init, out_shardings=mesh_lib.replicated(mesh))()


def abstract(exp: experiment.Experiment, mesh) -> TrainState:
  """The state's structure as ShapeDtypeStructs replicated over ``mesh``
  (what a checkpoint restores into), without computing any parameters."""
  shapes = jax.eval_shape(lambda: create(exp))
  sharding = mesh_lib.replicated(mesh)
  return jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
      shapes)


def model_variables(state: TrainState, params=None) -> dict[str, Any]:
  variables = {"params": state.params if params is None else params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  return variables


def count_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
