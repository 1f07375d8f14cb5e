"""Training curves of workdirs: read from their evaluation histories, drawn
as one PNG.

    python -m capsnet_jax.analysis.curves runs/mnist runs/mnist_deconv \\
        --out=docs/figures/curves.png

Each positional argument is a workdir (optionally ``LABEL=WORKDIR``). A
workdir's curves come from its eval_history.jsonl (every evaluation: step,
epoch, test and validation metrics); a workdir without one (an older run)
is read from its TensorBoard event files instead, whose tags may be grouped
(``test/accuracy``) or flat (``test_accuracy``, before they were grouped).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from typing import Sequence

import numpy as np

from capsnet_jax.errors import WorkdirError
from capsnet_jax.workdir import history
from capsnet_jax.workdir import metric_logging

# (metric, title, log scale) in plotting order.
DEFAULT_PANELS = (
    ("test_accuracy", "test accuracy", False),
    ("test_margin_loss", "test margin loss", True),
    ("test_reconstruction_loss", "test reconstruction loss (SSE; L1 runs: SAE)",
     False),
)

Curves = dict[str, tuple[np.ndarray, np.ndarray]]  # metric -> (x, values)


def from_history(workdir: str, x: str = "epoch") -> Curves:
  """{metric: (epochs, values)} of every numeric field of the training
  evaluations in WORKDIR/eval_history.jsonl (empty if it has none); steps
  instead of epochs with ``x="step"``."""
  records = history.training_records(history.read(workdir))
  out: dict[str, tuple[list, list]] = {}
  for r in records:
    for key, value in r.items():
      if (key.startswith(("test_", "validation_")) and
          isinstance(value, (int, float)) and not isinstance(value, bool)):
        xs, ys = out.setdefault(key, ([], []))
        xs.append(float(r[x]))
        ys.append(float(value))
  return {k: (np.asarray(x), np.asarray(y)) for k, (x, y) in out.items()}


def from_events(workdir: str) -> Curves:
  """{metric: (steps, values)} from every event file in ``workdir``, tags
  in the history's flat names (test/accuracy -> test_accuracy). Steps are
  sorted; a step logged twice (a resumed run) keeps its last value."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top
  paths = sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*")),
                 key=os.path.getmtime)
  if not paths:
    raise WorkdirError(f"no {history.HISTORY_FILE} and no TensorBoard event "
                       f"files in {workdir}")
  points: dict[str, dict[int, float]] = {}
  for path in paths:
    acc = event_accumulator.EventAccumulator(
        path, size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in tags.get("tensors", []):
      for event in acc.Tensors(tag):
        value = np.asarray(tensor_util.make_ndarray(event.tensor_proto))
        if value.size == 1 and np.issubdtype(value.dtype, np.number):
          points.setdefault(metric_logging.flat_name(tag), {})[
              event.step] = float(value)
    for tag in tags.get("scalars", []):
      for event in acc.Scalars(tag):
        points.setdefault(metric_logging.flat_name(tag), {})[
            event.step] = float(event.value)
  out = {}
  for name, by_step in points.items():
    steps = np.array(sorted(by_step), dtype=np.int64)
    out[name] = (steps, np.array([by_step[s] for s in steps], np.float64))
  return out


def read(workdir: str, x: str = "epoch") -> tuple[Curves, str]:
  """(curves, x-axis name): the history's against the epoch (or the step,
  with ``x="step"``), else the event files' against the step."""
  curves = from_history(workdir, x)
  if curves:
    return curves, x
  return from_events(workdir), "step"


def plot(runs: dict[str, str], path: str,
         panels: Sequence[tuple[str, str, bool]] = DEFAULT_PANELS
         ) -> dict[str, Curves]:
  """Plots ``panels`` for each {label: workdir} into ``path`` (PNG);
  returns the curves by label."""
  from capsnet_jax.analysis import plots  # pylint: disable=g-import-not-at-top
  data, axes = {}, {}
  for label, workdir in runs.items():
    data[label], axes[label] = read(workdir)
  axis = "step" if "step" in axes.values() else "epoch"
  if axis == "step":  # Event files have no epochs: every run by its steps.
    for label, workdir in runs.items():
      if axes[label] == "epoch":
        data[label], _ = read(workdir, "step")
  plots.plot_training_curves(data, panels, axis, path)
  return data


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m capsnet_jax.analysis.curves",
      description="Plot training curves of capsnet_jax workdirs.")
  parser.add_argument("workdirs", nargs="+", help="WORKDIR or LABEL=WORKDIR")
  parser.add_argument("--out", required=True, help="output PNG path")
  args = parser.parse_args(argv)
  runs = {}
  for item in args.workdirs:
    label, _, workdir = item.rpartition("=")
    runs[label or os.path.basename(os.path.normpath(workdir))] = workdir
  try:
    plot(runs, args.out)
  except WorkdirError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
