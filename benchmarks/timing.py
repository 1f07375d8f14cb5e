"""The benchmarks' clock: the median of timed calls, each waited for."""

import time

import jax
import numpy as np


def median_seconds(fn, repeats: int) -> float:
  """Median wall time of ``repeats`` calls of ``fn()``, each blocked on."""
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return float(np.median(times))
