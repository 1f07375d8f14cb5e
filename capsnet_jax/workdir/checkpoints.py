"""Checkpoints of the training state through orbax's CheckpointManager.

Synopsis::

  ckpt = checkpoints.Checkpointer(workdir, keep=3)
  state = ckpt.restore(abstract_state) if ckpt.latest_step() is not None else state
  ckpt.save(step, state, metrics={"test_accuracy": 0.99})
  ckpt.close()

Keeps the latest ``keep`` checkpoints plus the best one by test accuracy
(the earliest of equals, as history.best names it).
Saves are atomic (orbax writes to a temporary directory and renames it), so a
process killed mid-save leaves the previous checkpoint as the latest one.
"""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def latest_step(workdir: str) -> int | None:
  """The latest complete checkpoint's step in ``workdir`` (None if none),
  without creating anything."""
  if not os.path.isdir(checkpoint_dir(workdir)):
    return None
  ckpt = Checkpointer(workdir, create=False)
  try:
    return ckpt.latest_step()
  finally:
    ckpt.close()


def _rank(metrics: dict[str, float]) -> float:
  """Orders checkpoints by test accuracy, the earlier step first among equal
  accuracies (orbax keeps the last of equals). The step's share, at most
  1e-6 for 1e6 steps, is below any accuracy difference of a test set of up
  to 100,000 images."""
  return float(metrics["test_accuracy"]) - 1e-12 * float(metrics.get("step", 0))


class Checkpointer:
  """A thin wrapper around ``ocp.CheckpointManager`` for one pytree."""

  def __init__(self, workdir: str, keep: int = 3, async_save: bool = True,
               create: bool = True):
    policy = cm.AnyPreservationPolicy([
        cm.LatestN(n=keep),
        cm.BestN(get_metric_fn=_rank, n=1,
                 keep_checkpoints_without_metrics=False),
    ])
    # best_fn makes orbax write each save's metrics next to it (without it
    # they are dropped, BestN forgets the best after a restart and
    # best_step() is the latest step).
    options = ocp.CheckpointManagerOptions(
        create=create, preservation_policy=policy,
        best_fn=_rank, best_mode="max",
        enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(checkpoint_dir(workdir),
                                          options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """The kept step with the highest test accuracy (None if none has one)."""
    return self._manager.best_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any,
           metrics: dict[str, float] | None = None, force: bool = True) -> bool:
    """Saves ``state`` at ``step`` (asynchronously); returns whether it saved."""
    if metrics is not None:
      metrics = {k: float(v) for k, v in metrics.items()}
      metrics.setdefault("step", float(step))
    return self._manager.save(step, args=ocp.args.StandardSave(state),
                              metrics=metrics, force=force)

  def restore(self, abstract_state: Any, step: int | None = None) -> Any:
    """Restores into the structure, shapes and shardings of ``abstract_state``.

    Args:
      abstract_state: a pytree of arrays or jax.ShapeDtypeStructs (with
        shardings) like the saved one.
      step: defaults to the latest.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError("no checkpoint to restore")
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    return self._manager.restore(step, args=ocp.args.StandardRestore(target))

  def reached_preemption(self, step: int) -> bool:
    return self._manager.reached_preemption(step)

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()
