"""The device mesh and the two shardings every compiled step uses.

Synopsis::

  mesh = mesh_lib.make_mesh()                   # 1-D, every device, axis "data"
  params = jax.device_put(params, replicated(mesh))
  batch = global_batch({"image": x, "label": y}, batch_sharded(mesh))

The batch axis is sharded over every device of every process and parameters
are replicated: routing is per example, so data parallelism needs no
hand-written collectives (XLA inserts the gradient all-reduce).
"""

import jax
import numpy as np

DATA_AXIS = "data"


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh over every device of every process, axis "data".

  Auto axis type: XLA's partitioner propagates the batch sharding through
  the step (per-example vmaps, on-device augmentation) by itself.
  """
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh) -> jax.sharding.NamedSharding:
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def batch_sharded(mesh) -> jax.sharding.NamedSharding:
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(DATA_AXIS))


def global_batch(local_batch: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  """This process's part of a batch -> global arrays sharded over "data"."""
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in local_batch.items()}


def shard_replicated_input(array: np.ndarray, sharding) -> jax.Array:
  """A global array sharded by ``sharding`` from ``array``, which every
  process holds whole (unlike global_batch, whose inputs are per process)."""
  return jax.make_array_from_callback(array.shape, sharding,
                                      lambda index: array[index])
