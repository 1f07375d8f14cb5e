"""Several JAX processes: the waits between them, each with a timeout.

Synopsis::

  from capsnet_jax import processes
  x = processes.broadcast_one_to_all(x, "the test images")  # process 0's x
  counts = processes.process_allgather(n, "the example counts")  # [P, ...]
  processes.barrier("the next batch of images")

JAX's host collectives (``jax.experimental.multihost_utils``) wait for
every process without a limit: a process that hangs while alive (the
coordination service's heartbeat notices only dead ones) would hold the
others forever. Each function here first waits at a barrier of the
distributed runtime, at most ``timeout_s`` (WAIT_TIMEOUT_S unless given);
once every process has arrived the collective itself completes at once. A
process that does not arrive in time makes each waiting process raise
errors.UserError, one line naming what was awaited (main.py: exit status 2).

Every process must make these calls in the same order, as JAX's
collectives require anyway: the barriers are numbered by call. With one
process they return at once (broadcast: the value itself; gather: it
stacked once) and touch no distributed runtime.

The other waits of a run have their timeouts where they are made:
``jax.distributed.initialize`` and the check that every process runs the
same command (cli, ``--distributed_timeout``), the workdir lock's outcome
(workdir.lock.LEAD_TIMEOUT_S). The collectives inside compiled steps
cannot take one; a dead process ends them through the heartbeat, and a
hung one is caught at the next of these barriers (training passes one every
``log_every_steps``).
"""

import itertools
from typing import Any

from capsnet_jax import errors

# How long a process waits for the others at a barrier: longer than any
# work one process does alone between two of them (process 0 writing a
# checkpoint's records and figures, a process preparing its data).
WAIT_TIMEOUT_S = 1800
_barriers = itertools.count()  # each barrier's number, the same everywhere


def _several() -> bool:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_count() > 1


def barrier(what: str, timeout_s: float = WAIT_TIMEOUT_S) -> None:
  """Waits until every process has called this (the same call: the n-th on
  each), at most ``timeout_s``; returns at once with one process.

  Args:
    what: what the processes meet for, for the error ("the test images").
    timeout_s: the longest wait, in seconds.

  Raises:
    errors.UserError: a process did not arrive in time.
  """
  if not _several():
    return
  import jax  # pylint: disable=g-import-not-at-top
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  number = next(_barriers)
  try:
    distributed.global_state.client.wait_at_barrier(
        f"capsnet_jax/{number}", int(timeout_s * 1000))
  except Exception as e:  # pylint: disable=broad-except  # XlaRuntimeError
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise errors.UserError(
        f"process {jax.process_index()}: the other processes did not reach "
        f"{what} within {timeout_s:g} s (barrier {number}: {first})"
        ) from None


def broadcast_one_to_all(tree: Any, what: str,
                         timeout_s: float = WAIT_TIMEOUT_S) -> Any:
  """Process 0's ``tree`` (arrays of the same shapes on every process) on
  every process, after ``barrier(what, timeout_s)``; ``tree`` itself with
  one process."""
  if not _several():
    return tree
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  barrier(what, timeout_s)
  return multihost_utils.broadcast_one_to_all(tree)


def process_allgather(tree: Any, what: str, tiled: bool = False,
                      timeout_s: float = WAIT_TIMEOUT_S) -> Any:
  """Every process's ``tree``, stacked on a new first axis (concatenated
  with ``tiled``), after ``barrier(what, timeout_s)``;
  multihost_utils.process_allgather's result with one process too."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  if _several():
    barrier(what, timeout_s)
  return multihost_utils.process_allgather(tree, tiled=tiled)
