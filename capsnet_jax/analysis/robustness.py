"""Robustness to affine transformations: --mode=robustness.

Synopsis::

  python main.py --config=configs/mnist_efficient.py --mode=robustness \\
      --workdir=bundled:mnist_efficient [--out=DIR] [--config.idx_dir=DIR]

  from capsnet_jax.analysis import robustness
  records = robustness.measure(model, images, labels)   # a trained.TrainedModel

evaluates a trained model (any model family: only its predicted classes
are used) on transformed copies of the MNIST test set and prints one JSON
line per setting as it is done::

  {"transform": "rotation", "value": -90, "accuracy": 0.1234, "n": 10000}

``transform`` is one of SWEEPS' names (rotation in degrees counter-clockwise;
shear, the factor of capsnet_jax.data.affine.shear; scale, a factor on both
axes; translation, pixels to the right and down at once) or ``affnist``, the
affNIST-style set (``value`` null). ``rotation`` 0 is the untransformed
test set. The same lines go to OUT/robustness.json (one JSON object a
line) and the curves to OUT/robustness.png; OUT is --out, default
WORKDIR/figures; bundled weights, which are read-only, print the lines and
write files only with --out.

Every transform is applied once, on the host, before the model sees the
images (capsnet_jax.data.affine: about the image centre, inverse mapping,
bilinear, zero fill, rounded to uint8), at the model's stored input size:
a model of 28x28 inputs gets the 28x28 test digits, one of 40x40 inputs the
digits centred in 40x40 (affine.fit). The affNIST-style set is 40x40: a
28x28 model sees its central 28x28 (rows and columns 6..33), a 40x40 model
all of it. With --config.affnist_dir the real affNIST test files are read
instead of the generated set (capsnet_jax.data.affnist).

Config fields: robustness_examples (the first N test images; 0: all),
affnist_seed (the generated set's seed), affnist_dir.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, TextIO

from absl import logging
import jax
import numpy as np

from capsnet_jax import errors
from capsnet_jax.data import affine
from capsnet_jax.data import affnist
from capsnet_jax.inference import bundled
from capsnet_jax.inference import trained
from capsnet_jax.workdir import files
from capsnet_jax.workdir import lock

RESULTS_FILE = "robustness.json"
FIGURE_FILE = "robustness.png"
# Each sweep's settings, chosen on the bundled Efficient-CapsNet to go from
# no effect to mostly wrong (docs/results.md, "Robustness"). The identity
# (shear 0, scale 1, translation 0) is rotation 0, measured once.
SWEEPS = {
    "rotation": tuple(range(-90, 91, 15)),
    "shear": (0.3, 0.6, 1.0, 1.5, 2.0),
    "scale": (0.3, 0.5, 0.7, 1.5, 2.0, 2.5),
    "translation": (2, 3, 4, 5, 6, 8),
}
# The value of each sweep at which it is the identity.
IDENTITY = {"rotation": 0, "shear": 0, "scale": 1, "translation": 0}
TRANSFORMS = tuple(SWEEPS) + ("affnist",)
# How each sweep's value becomes (matrix, shift) for capsnet_jax.data.affine.
_MAPS = {
    "rotation": lambda v: (affine.rotation(v), (0.0, 0.0)),
    "shear": lambda v: (affine.shear(v), (0.0, 0.0)),
    "scale": lambda v: (affine.scale(v), (0.0, 0.0)),
    "translation": lambda v: (affine.identity(), (v, v)),
}
UNITS = {"rotation": "degrees, counter-clockwise", "shear": "shear factor",
         "scale": "scale factor", "translation": "pixels right and down"}


def transformed(images: np.ndarray, transform: str, value) -> np.ndarray:
  """``images`` (uint8 [N, H, W] or [N, H, W, C]) under one sweep setting."""
  matrix, shift = _MAPS[transform](value)
  return affine.warp(images, matrix, shift)


def predicted_classes(model: trained.TrainedModel, images) -> np.ndarray:
  """int [N]: each image's predicted class. Every model family has this
  output (capsule networks: the longest class capsule; a CNN: its largest
  score), so nothing here depends on the family."""
  return np.asarray(model.predict(images, ("predictions",)).predictions)


def record(transform: str, value, predictions, labels) -> dict[str, Any]:
  """One setting's line: {"transform", "value", "accuracy", "n"}."""
  labels = np.asarray(labels).reshape(-1)
  correct = int(np.sum(np.asarray(predictions).reshape(-1) == labels))
  if value is not None:
    value = int(value) if float(value).is_integer() else float(value)
  return {"transform": transform, "value": value,
          "accuracy": correct / len(labels), "n": len(labels)}


def at_size(images: np.ndarray, size: int) -> np.ndarray:
  """Square images centred in (padded to, or centre-cropped to) ``size``."""
  return images if images.shape[1] == size else affine.fit(images, size)


def settings() -> list[tuple[str, Any]]:
  """Every (transform, value) measured, in order; affnist last."""
  return [(t, v) for t, values in SWEEPS.items() for v in values] + [
      ("affnist", None)]


def measure(model: trained.TrainedModel, images: np.ndarray,
            labels: np.ndarray, affnist_set: tuple | None = None,
            emit=None) -> list[dict[str, Any]]:
  """Every setting's record, in the order of ``settings()``.

  Args:
    model: a trained model of any family.
    images: uint8 [N, h, w(, 1)] test images (MNIST: 28x28); they are
      centred in the model's stored size first.
    labels: [N].
    affnist_set: (uint8 [M, 40, 40], labels [M]), or None to leave the
      affnist line out.
    emit: called with each record as it is done (printing).
  """
  size = int(model.info.stored_shape[0])
  channel = model.info.stored_shape[-1]
  x = at_size(images, size)
  if x.ndim == 3:
    x = x[..., None]
  if x.shape[-1] != channel:
    raise errors.ConfigError(
        f"--mode=robustness is for single-channel digits; this model takes "
        f"{channel} channels")
  records = []
  for transform, value in settings():
    t0 = time.monotonic()
    if transform == "affnist":
      if affnist_set is None:
        continue
      images_t, labels_t = at_size(affnist_set[0], size), affnist_set[1]
      images_t = images_t[..., None] if images_t.ndim == 3 else images_t
    else:
      images_t, labels_t = transformed(x, transform, value), labels
    r = record(transform, value, predicted_classes(model, images_t), labels_t)
    logging.info("robustness %s %s: accuracy %.4f (%.1f s)", transform, value,
                 r["accuracy"], time.monotonic() - t0)
    records.append(r)
    if emit is not None:
      emit(r)
  return records


def line(r: dict[str, Any]) -> str:
  """A record as its JSON line (INTERFACE.md's key order)."""
  return json.dumps({k: r[k] for k in ("transform", "value", "accuracy", "n")})


def read(path: str) -> list[dict[str, Any]]:
  """The records of a robustness.json (one JSON object a line)."""
  with open(path) as f:
    records = [json.loads(l) for l in f if l.strip()]
  for r in records:
    if not {"transform", "value", "accuracy", "n"} <= set(r):
      raise errors.WorkdirError(f"{path}: a line without transform, value, "
                                f"accuracy and n: {r}")
  return records


def _check_dataset(exp) -> None:
  if exp.spec.num_targets > 1 or exp.info.name != "mnist":
    raise errors.ConfigError(
        f"--mode=robustness measures MNIST digits (and affNIST); dataset "
        f"{exp.info.name!r} is not MNIST")


def _test_set(exp, config) -> tuple[np.ndarray, np.ndarray]:
  """The (first robustness_examples of the) MNIST test images and labels."""
  test = exp.load_splits(0, 1).test
  limit = int(config.get("robustness_examples", 0) or 0) or len(test.labels)
  return test.images[:limit], np.asarray(test.labels[:limit]).reshape(-1)


def _affnist_set(config, images, labels) -> tuple[np.ndarray, np.ndarray]:
  folder = config.get("affnist_dir", "") or ""
  limit = int(config.get("robustness_examples", 0) or 0)
  if folder:
    x, y = affnist.read(folder)
    logging.info("affnist: the real test set, %d images from %s", len(y),
                 folder)
    return (x[:limit], y[:limit]) if limit else (x, y)
  seed = int(config.get("affnist_seed", affnist.DEFAULT_SEED))
  x, y = affnist.generate(images, labels, seed=seed)
  logging.info("affnist: %d images generated from the MNIST test digits "
               "(seed %d)", len(y), seed)
  return x, y


def run(exp, workdir: str, out: str | None = None,
        stdout: TextIO | None = None) -> list[dict[str, Any]]:
  """--mode=robustness: loads config.checkpoint of ``workdir``, prints a
  JSON line per setting on ``stdout`` (default sys.stdout), writes
  robustness.json and robustness.png into ``out`` (default
  WORKDIR/figures; bundled weights: only with ``out``). Only process 0
  prints and writes. Returns the records."""
  is_bundle = bundled.is_bundle(workdir)
  out_dir = out or (None if is_bundle else os.path.join(workdir, "figures"))
  if out_dir and os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise errors.ConfigError(f"--out={out_dir} is a file, not a folder")
  if is_bundle or not os.path.isdir(workdir) or out_dir != os.path.join(
      workdir, "figures"):
    return _run(exp, workdir, out_dir, stdout)
  # Writes into the workdir: refuse one in use, as --mode=visualize does.
  with lock.hold(workdir, "--mode=robustness", create=False):
    return _run(exp, workdir, out_dir, stdout)


def _run(exp, workdir, out_dir, stdout) -> list[dict[str, Any]]:
  stdout = stdout or sys.stdout
  config = exp.config
  lead = jax.process_index() == 0
  _check_dataset(exp)  # before the model is loaded
  model = trained.load(workdir, which=trained.which_checkpoint(config),
                       config=exp)
  images, labels = _test_set(exp, config)
  affnist_set = _affnist_set(config, images, labels)
  t0 = time.monotonic()

  def emit(r):
    if lead:
      print(line(r), file=stdout, flush=True)

  records = measure(model, images, labels, affnist_set, emit=emit)
  seconds = time.monotonic() - t0
  if lead and out_dir:
    os.makedirs(out_dir, exist_ok=True)
    files.atomic_write_text(os.path.join(out_dir, RESULTS_FILE),
                            "".join(line(r) + "\n" for r in records))
    from capsnet_jax.analysis import plots  # pylint: disable=g-import-not-at-top
    plots.plot_robustness({_label(workdir): records},
                          os.path.join(out_dir, FIGURE_FILE), IDENTITY)
    logging.info("robustness of step %d: %d settings in %.0f s, written to "
                 "%s", model.step, len(records), seconds, out_dir)
  elif lead:
    logging.info("robustness of step %d: %d settings in %.0f s (bundled "
                 "weights: --out=DIR writes %s and %s)", model.step,
                 len(records), seconds, RESULTS_FILE, FIGURE_FILE)
  return records


def _label(workdir: str) -> str:
  return os.path.basename(os.path.normpath(bundled.resolve(workdir)))

