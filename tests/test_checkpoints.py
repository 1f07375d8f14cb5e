"""capsnet_jax.workdir.checkpoints on a tiny pytree with made-up test accuracies:
which checkpoints are kept (the latest N and the best), across restarts."""

import jax.numpy as jnp
import numpy as np
import pytest

from capsnet_jax.workdir import checkpoints


def _tree(step):
  return {"w": jnp.full((2, 3), float(step)), "b": {"x": jnp.array([step], jnp.int32)}}


def _save(ckpt, step, accuracy):
  metrics = None if accuracy is None else {"test_accuracy": accuracy}
  assert ckpt.save(step, _tree(step), metrics)
  ckpt.wait()


def test_latest_n_and_the_best_are_kept_across_restarts(tmp_path):
  ckpt = checkpoints.Checkpointer(str(tmp_path), keep=2)
  assert ckpt.latest_step() is None and ckpt.best_step() is None
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    ckpt.restore(_tree(1))
  for step, accuracy in ((1, 0.50), (2, 0.90), (3, 0.60), (4, 0.70)):
    _save(ckpt, step, accuracy)
  # The latest two, and step 2, older but the best.
  assert ckpt.all_steps() == [2, 3, 4]
  assert ckpt.best_step() == 2 and ckpt.latest_step() == 4
  # A save without metrics (a preemption) counts as latest, never as best.
  _save(ckpt, 5, None)
  assert ckpt.all_steps() == [2, 4, 5] and ckpt.best_step() == 2
  ckpt.close()

  # A new process: the accuracies were stored beside the checkpoints, so
  # the best is still known and still kept.
  ckpt = checkpoints.Checkpointer(str(tmp_path), keep=2, create=False)
  assert ckpt.best_step() == 2 and ckpt.latest_step() == 5
  _save(ckpt, 6, 0.80)
  assert ckpt.all_steps() == [2, 5, 6]
  # A better one replaces the best: step 2 is pruned.
  _save(ckpt, 7, 0.95)
  assert ckpt.best_step() == 7
  assert ckpt.all_steps() == [6, 7]
  restored = ckpt.restore(_tree(0), step=6)
  np.testing.assert_array_equal(restored["w"], np.full((2, 3), 6.0))
  latest = ckpt.restore(_tree(0))
  np.testing.assert_array_equal(latest["w"], np.full((2, 3), 7.0))
  assert int(latest["b"]["x"][0]) == 7
  ckpt.close()


def test_of_equal_accuracies_the_earliest_is_the_best(tmp_path):
  """As history.best (the step results.json and the evaluation lines name):
  a later evaluation that only equals the best does not replace it."""
  ckpt = checkpoints.Checkpointer(str(tmp_path), keep=2)
  for step, accuracy in ((1, 0.5), (2, 0.9), (3, 0.9), (4, 0.7), (5, 0.6)):
    _save(ckpt, step, accuracy)
  assert ckpt.best_step() == 2
  assert ckpt.all_steps() == [2, 4, 5]
  ckpt.close()


def test_restore_follows_the_given_structure(tmp_path):
  ckpt = checkpoints.Checkpointer(str(tmp_path), keep=1)
  _save(ckpt, 3, 0.5)
  # A different shape is not silently cast.
  with pytest.raises(ValueError, match="[Ss]hape"):
    ckpt.restore({"w": jnp.zeros((3, 2)), "b": {"x": jnp.zeros(1, jnp.int32)}})
  restored = ckpt.restore({"w": jnp.zeros((2, 3)),
                           "b": {"x": jnp.zeros(1, jnp.int32)}})
  assert restored["b"]["x"].dtype == jnp.int32
  assert checkpoints.checkpoint_dir(str(tmp_path)) == str(tmp_path / "checkpoints")
  ckpt.close()
