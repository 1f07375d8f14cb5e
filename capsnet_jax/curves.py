"""Training curves from TensorBoard event files, as one small PNG.

Reads the scalars that `train.train_and_evaluate` writes with clu's metric
writers (stored as TensorBoard "tensors" by the TF summary writer, or as
"scalars" by tensorboardX-style writers) and plots the key curves of one or
more workdirs side by side:

    python -m capsnet_jax.curves runs/mnist runs/mnist_deconv \\
        --out=docs/figures/curves.png

Each positional argument is a workdir (optionally `LABEL=WORKDIR`). Needs the
`tensorboard` package, which ships with the requirements.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from typing import Sequence

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from capsnet_jax.errors import WorkdirError  # pylint: disable=g-import-not-at-top,wrong-import-position

# (tag, y-axis label, log scale) in plotting order.
DEFAULT_PANELS = (
    ("train_loss", "train loss", True),
    ("test_accuracy", "test accuracy", False),
    ("test_margin_loss", "test margin loss", True),
    ("test_reconstruction_loss", "test reconstruction SSE", False),
)


def read_scalars(workdir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Returns {tag: (steps, values)} over every event file in `workdir`.

  Steps are sorted; where a step was logged twice (a run resumed from an
  earlier checkpoint re-logs the steps after it) the last written value wins.
  """
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top
  paths = sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*")),
                 key=os.path.getmtime)
  if not paths:
    raise WorkdirError(f"no TensorBoard event files in {workdir}")
  points: dict[str, dict[int, float]] = {}
  for path in paths:
    acc = event_accumulator.EventAccumulator(
        path, size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in tags.get("tensors", []):
      for event in acc.Tensors(tag):
        value = np.asarray(
            tensor_util.make_ndarray(event.tensor_proto))
        if value.size == 1 and np.issubdtype(value.dtype, np.number):
          points.setdefault(tag, {})[event.step] = float(value)
    for tag in tags.get("scalars", []):
      for event in acc.Scalars(tag):
        points.setdefault(tag, {})[event.step] = float(event.value)
  out = {}
  for tag, by_step in points.items():
    steps = np.array(sorted(by_step), dtype=np.int64)
    out[tag] = (steps, np.array([by_step[s] for s in steps], np.float64))
  return out


def plot_curves(runs: dict[str, str], path: str,
                panels: Sequence[tuple[str, str, bool]] = DEFAULT_PANELS,
                steps_per_epoch: int | None = None) -> dict[str, dict]:
  """Plots `panels` for each {label: workdir} into `path` (PNG).

  Returns {label: {tag: (steps, values)}} of what was plotted. With
  `steps_per_epoch` the x axis is in epochs.
  """
  data = {label: read_scalars(workdir) for label, workdir in runs.items()}
  fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.8))
  axes = np.atleast_1d(axes)
  for ax, (tag, ylabel, log) in zip(axes, panels):
    for label, scalars in data.items():
      if tag not in scalars:
        continue
      steps, values = scalars[tag]
      x = steps / steps_per_epoch if steps_per_epoch else steps
      ax.plot(x, values, label=label, lw=1.2,
              marker="o" if len(steps) < 30 else None, ms=3)
    ax.set_title(ylabel, fontsize=9)
    ax.set_xlabel("epoch" if steps_per_epoch else "step", fontsize=8)
    ax.tick_params(which="both", labelsize=7)
    if log:
      ax.set_yscale("log")
    ax.grid(alpha=0.3)
  if len(runs) > 1:
    axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return data


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      description="Plot training curves of capsnet_jax workdirs.")
  parser.add_argument("workdirs", nargs="+", help="WORKDIR or LABEL=WORKDIR")
  parser.add_argument("--out", required=True, help="output PNG path")
  parser.add_argument("--steps_per_epoch", type=int, default=None,
                      help="plot against epochs instead of steps")
  args = parser.parse_args(argv)
  runs = {}
  for item in args.workdirs:
    label, _, workdir = item.rpartition("=")
    runs[label or os.path.basename(os.path.normpath(workdir))] = workdir
  try:
    plot_curves(runs, args.out, steps_per_epoch=args.steps_per_epoch)
  except WorkdirError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
