"""Every figure, drawn with matplotlib (no model here): --mode=visualize's,
the training curves and the report's rotation comparison.

Synopsis::

  from capsnet_jax.analysis import arrays
  from capsnet_jax.analysis import plots
  plots.plot_confusion(arrays.confusion_matrix(pred, labels, 10),
                       class_names, "confusion_matrix.png")

Every function takes numpy arrays (those of capsnet_jax.analysis.arrays) and the
path of the file to write; images are floats in [0, 1], [H, W, C] with one
channel (gray), two (the first shown) or three (RGB). Each file is written
atomically (capsnet_jax.workdir.files): the old figure or the new one,
never a part.
"""

import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position


def red_green(pair: np.ndarray) -> np.ndarray:
  """Two single-channel images [2, H, W, 1] as one RGB image: the first in
  red, the second in green (yellow where they overlap)."""
  rgb = np.zeros((*pair.shape[1:3], 3), np.float32)
  rgb[..., 0], rgb[..., 1] = pair[0, ..., 0], pair[1, ..., 0]
  return np.clip(rgb, 0, 1)


def _show(ax, image, title=None):
  image = np.clip(image, 0, 1)
  if image.shape[-1] == 1:
    ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
  elif image.shape[-1] == 2:  # two cameras: show the first
    ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
  else:
    ax.imshow(image)
  ax.set_xticks([])
  ax.set_yticks([])
  if title:
    ax.set_title(title, fontsize=7)


def _save(fig, path):
  """Writes ``fig`` to ``path`` (its format from the extension) atomically."""
  from capsnet_jax.workdir import files  # pylint: disable=g-import-not-at-top
  try:
    with files.atomic_open(path, "wb") as f:
      fig.savefig(f, format=os.path.splitext(path)[1][1:] or "png", dpi=100,
                  bbox_inches="tight")
  finally:
    plt.close(fig)


def plot_reconstructions(inputs, recons, predictions, labels, class_names, path):
  """Inputs [N, H, W, C] above their reconstructions, with true and
  predicted classes."""
  n = len(inputs)
  fig, axes = plt.subplots(2, n, figsize=(1.1 * n, 2.6))
  axes = np.asarray(axes).reshape(2, n)
  for i in range(n):
    ok = "" if predictions[i] == labels[i] else " (wrong)"
    _show(axes[0, i], inputs[i], f"true {class_names[labels[i]]}")
    _show(axes[1, i], recons[i], f"pred {class_names[predictions[i]]}{ok}")
  axes[0, 0].set_ylabel("input", fontsize=8)
  axes[1, 0].set_ylabel("reconstruction", fontsize=8)
  fig.suptitle("Test inputs and reconstructions from the predicted capsule", fontsize=9)
  _save(fig, path)


def plot_rotation_robustness(sweep, strip, class_names, true_label, path,
                             trained_rotation: int = 0):
  """arrays.rotation_sweep's curves above arrays.rotation_strip's
  inputs and reconstructions (the inputs alone, titled with the prediction,
  for a strip without reconstructions). trained_rotation: the largest
  rotation of the training augmentation, in degrees (0: none), for the title."""
  cols = len(strip["angles"])
  recons = strip.get("reconstructions")
  rows = 3 if recons is not None else 2
  fig = plt.figure(figsize=(max(8, 0.75 * cols), 6.2 if rows == 3 else 4.9))
  grid = fig.add_gridspec(rows, cols, height_ratios=[2.4] + [1] * (rows - 1),
                          hspace=0.5)
  ax = fig.add_subplot(grid[0, :])
  ax.plot(sweep["angles"], sweep["accuracy"], "o-", label="test accuracy")
  ax.plot(sweep["angles"], sweep["mean_true_length"], "s--",
          label="mean true-class capsule length")
  ax.set_xlabel("rotation angle (degrees)")
  ax.set_ylim(0, 1.02)
  ax.set_xticks(np.arange(-180, 181, 45))
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="lower center")
  trained = (f"trained with rotations up to {trained_rotation}°"
             if trained_rotation else "trained without rotations")
  ax.set_title(f"Robustness to rotation ({sweep['num_examples']} test images, "
               f"{trained})", fontsize=9)
  for j in range(cols):
    pred = f"{class_names[strip['predictions'][j]]} {strip['confidence'][j]:.2f}"
    angle = f"{strip['angles'][j]:+.0f}°"
    top = fig.add_subplot(grid[1, j])
    _show(top, strip["inputs"][j], angle if rows == 3 else f"{angle}\n{pred}")
    if j == 0:
      top.set_ylabel(f"input\n(true {class_names[true_label]})"
                     + ("" if rows == 3 else "\n(pred, |v|)"), fontsize=7)
    if rows == 3:
      bottom = fig.add_subplot(grid[2, j])
      _show(bottom, recons[j], pred)
      if j == 0:
        bottom.set_ylabel("recon.\n(pred, |v|)", fontsize=7)
  _save(fig, path)


def save_rotation_gif(strip, path):
  """The strip's input beside its reconstruction (the input alone without
  one), one frame per angle, 4x enlarged (nearest neighbour), 150 ms a frame."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from capsnet_jax.workdir import files  # pylint: disable=g-import-not-at-top
  frames = []
  recons = strip.get("reconstructions")
  for j, inp in enumerate(strip["inputs"]):
    pair = inp if recons is None else np.concatenate([inp, recons[j]], axis=1)
    if pair.shape[-1] != 3:
      pair = np.repeat(pair[..., :1], 3, axis=-1)
    pair = (np.clip(pair, 0, 1) * 255).astype(np.uint8)
    frames.append(Image.fromarray(pair).resize((pair.shape[1] * 4, pair.shape[0] * 4),
                                               Image.NEAREST))
  with files.atomic_open(path, "wb") as f:
    frames[0].save(f, format="GIF", save_all=True, append_images=frames[1:],
                   duration=150, loop=0)


def plot_perturbations(grids, capsules, offsets, class_names, path):
  """grids: per example [D, len(offsets), H, W, C] (arrays.perturbation_grid)
  of its capsule ``capsules[i]``; one block of columns per example."""
  n, (d, m) = len(grids), grids[0].shape[:2]
  fig, axes = plt.subplots(d, n * m, figsize=(0.42 * n * m + 0.6, 0.42 * d + 0.8))
  for g, grid in enumerate(grids):
    for r in range(d):
      for c in range(m):
        ax = axes[r, g * m + c]
        _show(ax, grid[r, c])
        if r == 0:
          ax.set_title(f"{offsets[c]:+.2f}", fontsize=5)
        if c == 0 and g == 0:
          ax.set_ylabel(f"dim {r}", fontsize=6)
    axes[0, g * m + m // 2].annotate(
        f"capsule {class_names[capsules[g]]}", (0.5, 1.9),
        xycoords="axes fraction", ha="center", fontsize=8)
  fig.suptitle("Perturbing each dimension of the predicted class capsule "
               f"(offsets {offsets[0]:.2f} ... {offsets[-1]:+.2f})", fontsize=9,
               y=1.02)
  plt.subplots_adjust(wspace=0.05, hspace=0.05)
  _save(fig, path)


def plot_primary_caps(rows, input_image, coefficients, labels, class_names,
                      path):
  """Rows: one capsule each (``labels``: where each comes from,
  arrays.primary_capsule_label); columns: its coefficient. Shown is what the
  capsule adds to the reconstruction from no capsule at all (red: brighter,
  blue: darker), scaled per row."""
  r, m = rows["images"].shape[:2]
  fig, axes = plt.subplots(r, m + 2, figsize=(0.8 * (m + 2), 0.85 * r + 0.6))
  axes = np.asarray(axes).reshape(r, m + 2)
  for i in range(r):
    if i == 0:
      _show(axes[i, 0], input_image, "input")
      _show(axes[i, 1], rows["full"], "all capsules")
    else:
      axes[i, 0].axis("off")
      axes[i, 1].axis("off")
    change = (rows["images"][i] - rows["images"][i, :1]).mean(axis=-1)
    scale = max(float(np.abs(change).max()), 1e-6)
    for j in range(m):
      ax = axes[i, j + 2]
      ax.imshow(change[j], cmap="RdBu_r", vmin=-scale, vmax=scale)
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_title(f"c={coefficients[j]:.2f}", fontsize=7)
    axes[i, -1].yaxis.set_label_position("right")
    axes[i, -1].set_ylabel(f"{labels[i]}\nc={rows['coupling'][i]:.3f}",
                           fontsize=6)
  fig.suptitle(f"Primary-capsule reconstructions (predicted "
               f"{class_names[rows['prediction']]}): one capsule per row, its "
               "coefficient c growing left to right;\nshown: change from the "
               "reconstruction without capsules (red brighter, blue darker)",
               fontsize=8)
  _save(fig, path)


def plot_confusion(matrix, class_names, path):
  """A [K, K] count matrix (rows true, columns predicted) with its counts."""
  k = len(matrix)
  fig, ax = plt.subplots(figsize=(0.5 * k + 2.5, 0.5 * k + 2))
  im = ax.imshow(matrix, cmap="Blues")
  fig.colorbar(im, ax=ax, fraction=0.046)
  ax.set_xticks(range(k))
  ax.set_yticks(range(k))
  ax.set_xticklabels(class_names, rotation=45, ha="right", fontsize=7)
  ax.set_yticklabels(class_names, fontsize=7)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  for i in range(k):
    for j in range(k):
      ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=6,
              color="white" if matrix[i, j] > matrix.max() / 2 else "black")
  acc = np.trace(matrix) / matrix.sum()
  ax.set_title(f"Confusion matrix ({int(matrix.sum())} test images, "
               f"accuracy {acc:.4f})", fontsize=9)
  _save(fig, path)


def plot_misclassified(shown, num_errors, num_test, class_names, path):
  """Misclassified images (the first of ``num_errors``) in rows of ten: each
  input titled "true > predicted" with the two capsule lengths, above the
  reconstructions from the predicted and from the true class's capsule (when
  ``shown`` has them)."""
  n = len(shown["inputs"])
  if not n:
    fig, ax = plt.subplots(figsize=(4.5, 1.5))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.5, 0.5, f"No misclassified images among {num_test} test images",
            ha="center", va="center", fontsize=9)
    _save(fig, path)
    return
  recons = [k for k in ("predicted_recons", "true_recons") if k in shown]
  cols = min(n, 10)
  blocks = -(-n // cols)
  per = 1 + len(recons)
  height = 1.2 * per * blocks + 0.5
  fig, axes = plt.subplots(per * blocks, cols, figsize=(1.1 * cols, height),
                           squeeze=False)
  fig.subplots_adjust(top=1 - 0.8 / height, hspace=0.3)
  for ax in axes.flat:
    ax.axis("off")
  for i in range(n):
    b, j = divmod(i, cols)
    top = axes[per * b, j]
    top.axis("on")
    _show(top, shown["inputs"][i],
          f"{class_names[shown['label'][i]]} > "
          f"{class_names[shown['prediction'][i]]}\n"
          f"{shown['predicted_length'][i]:.2f} vs {shown['true_length'][i]:.2f}")
    for r, key in enumerate(recons, 1):
      axes[per * b + r, j].axis("on")
      _show(axes[per * b + r, j], shown[key][i])
  for b in range(blocks):
    axes[per * b, 0].set_ylabel("input", fontsize=7)
    for r, label in enumerate(("from predicted", "from true")[:len(recons)], 1):
      axes[per * b + r, 0].set_ylabel(label, fontsize=7)
  fig.suptitle(f"Misclassified: {n} of {num_errors} errors in {num_test} test "
               "images, most confident first (true > predicted; capsule "
               "lengths predicted vs true)", fontsize=8, y=1 - 0.2 / height)
  _save(fig, path)


def plot_two_digits(shown, failures, accuracy, num_test, path):
  """The paper's Figure 5: per column the input with its labels (L), the
  reconstructions from the two longest capsules (R, red = longest, green =
  second) and from the labels' capsules (red = first label)."""
  blocks = [("test pairs", shown)] + ([("failures", failures)]
                                      if len(failures["inputs"]) else [])
  cols = max(len(b["inputs"]) for _, b in blocks)
  fig, axes = plt.subplots(3 * len(blocks), cols,
                           figsize=(1.15 * cols, 3.7 * len(blocks)),
                           squeeze=False)
  for bi, (title, b) in enumerate(blocks):
    for j in range(cols):
      top, mid, bottom = (axes[3 * bi + r, j] for r in range(3))
      if j >= len(b["inputs"]):
        for ax in (top, mid, bottom):
          ax.axis("off")
        continue
      (l1, l2), (p1, p2) = b["labels"][j], b["predicted"][j]
      _show(top, b["inputs"][j], f"L:({l1},{l2})")
      _show(mid, red_green(b["predicted_recons"][j]),
            f"R:({p1},{p2})" + ("" if b["correct"][j] else " wrong"))
      _show(bottom, red_green(b["true_recons"][j]), f"L:({l1},{l2})")
    axes[3 * bi, 0].set_ylabel(f"{title}\ninput", fontsize=7)
    axes[3 * bi + 1, 0].set_ylabel("two longest\ncapsules", fontsize=7)
    axes[3 * bi + 2, 0].set_ylabel("true labels'\ncapsules", fontsize=7)
  fig.suptitle(f"MultiMNIST: inputs and reconstructions (red: first, green: "
               f"second capsule); both labels right on {100 * accuracy:.2f}% "
               f"of {num_test} test pairs", fontsize=8)
  _save(fig, path)


def plot_training_curves(runs: dict, panels, axis: str, path: str) -> None:
  """One panel per (metric, title, log scale) of ``panels``, one line per
  run of ``runs`` ({label: {metric: (x, values)}}), x in ``axis`` units."""
  fig, axes = plt.subplots(1, len(panels), figsize=(3.5 * len(panels), 3.0))
  axes = np.atleast_1d(axes)
  for label, curves in runs.items():
    for ax, (key, _, _) in zip(axes, panels):
      if key in curves:
        x, y = curves[key]
        ax.plot(x, y, label=label, lw=1.2,
                marker="o" if len(x) < 30 else None, ms=3)
  for ax, (key, title, log) in zip(axes, panels):
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(axis, fontsize=8)
    ax.tick_params(which="both", labelsize=7)
    ax.grid(alpha=0.3)
    if log:
      ax.set_yscale("log")
    if key == "test_accuracy":
      values = [v for c in runs.values() if key in c for v in c[key][1]]
      if values and min(values) > 0.9:  # zoomed in, every point shown
        ax.set_ylim(min(values) - 0.001, 1.0)
  if len(runs) > 1:
    axes[0].legend(fontsize=7)
  fig.tight_layout()
  _save(fig, path)


def plot_rotation_accuracy(runs: dict, path: str) -> None:
  """Test accuracy against the rotation angle, one curve per run
  ({label: (angles, accuracy, number of test images)})."""
  fig, ax = plt.subplots(figsize=(9.5, 3.2))
  for label, (angles, accuracy, count) in runs.items():
    ax.plot(angles, accuracy, marker="o", ms=3, lw=1.2,
            label=f"{label}, {count:,} test images")
  ax.set_xticks(range(-180, 181, 45))
  ax.set_xlabel("rotation angle (degrees)", fontsize=8)
  ax.set_ylabel("test accuracy", fontsize=8)
  ax.set_ylim(0, 1.0)
  ax.tick_params(labelsize=7)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
  fig.tight_layout()
  _save(fig, path)



# The robustness figure's panels: (transform, x-axis label).
ROBUSTNESS_PANELS = (("rotation", "rotation (degrees, counter-clockwise)"),
                     ("shear", "shear factor (x' = x - s y)"),
                     ("scale", "scale factor"),
                     ("translation", "translation (px right and px down)"))


def plot_robustness(runs: dict, path: str, identity: dict | None = None
                    ) -> None:
  """Accuracy against each transform's size (one panel per sweep), and on
  the affNIST-style set (bars), one colour per run ({label: the records of
  capsnet_jax.analysis.robustness, dicts with transform, value, accuracy,
  n}). ``identity``: {transform: value} where a sweep is the identity; its
  point is the run's rotation-0 accuracy (the clean test set)."""
  identity = identity or {}
  fig, axes = plt.subplots(1, len(ROBUSTNESS_PANELS) + 1,
                           figsize=(3.2 * (len(ROBUSTNESS_PANELS) + 1), 3.0))
  colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  affnist = []
  for i, (label, records) in enumerate(runs.items()):
    colour = colours[i % len(colours)]
    clean = next((r["accuracy"] for r in records
                  if r["transform"] == "rotation" and r["value"] == 0), None)
    n = max((r["n"] for r in records if r["transform"] != "affnist"),
            default=0)
    for ax, (transform, _) in zip(axes, ROBUSTNESS_PANELS):
      points = {r["value"]: r["accuracy"] for r in records
                if r["transform"] == transform}
      if transform in identity and clean is not None:
        points.setdefault(identity[transform], clean)
      if points:
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], marker="o", ms=3, lw=1.2,
                color=colour, label=f"{label} ({n:,} images)")
    aff = next((r for r in records if r["transform"] == "affnist"), None)
    affnist.append((label, None if aff is None else aff["accuracy"], colour))
  for ax, (_, xlabel) in zip(axes, ROBUSTNESS_PANELS):
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylim(0, 1.0)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("test accuracy", fontsize=8)
  axes[0].legend(fontsize=6, loc="lower center")
  ax = axes[-1]
  for k, (label, acc, colour) in enumerate(affnist):
    if acc is not None:
      ax.bar(k, acc, color=colour)
      ax.text(k, acc + 0.02, f"{100 * acc:.1f}%", ha="center", fontsize=7)
  ax.set_xticks(range(len(affnist)))
  ax.set_xticklabels([a[0] for a in affnist], rotation=30, ha="right",
                     fontsize=7)
  ax.set_xlabel("affNIST-style set", fontsize=8)
  ax.set_ylim(0, 1.0)
  ax.tick_params(labelsize=7)
  ax.grid(alpha=0.3, axis="y")
  fig.tight_layout()
  _save(fig, path)
