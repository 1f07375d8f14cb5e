"""Looking inside a trained CapsNet: the figures of --mode=visualize.

Synopsis::

  python main.py --config=configs/mnist.py --workdir=runs/mnist --mode=visualize

reads the latest checkpoint of WORKDIR (``--config.checkpoint=best`` or a
step for another) and writes into WORKDIR/figures/:

  reconstructions.png   test inputs beside their reconstructions (predicted class)
  rotation.png          accuracy and mean true-class capsule length against the
                        rotation angle over the test set, and one test image
                        rotated step by step with its prediction, confidence
                        and reconstruction (also rotation.gif)
  perturbation.png      each of the 16 dimensions of the predicted capsule
                        varied over [-0.25, 0.25] in steps of 0.05, decoded
  primary_caps.png      reconstructions from single primary capsules scaled by
                        a growing routing coefficient, through a decoder
                        trained on the frozen network's primary capsules
                        (cached in figures/primary_decoder.msgpack)
  confusion_matrix.png  test-set confusion matrix (counts in confusion_matrix.json)
  misclassified.png     the misclassified test images, the most confident
                        mistakes first, with the reconstructions from the
                        predicted and from the true class's capsule (every
                        one listed in misclassified.json)
  summary.json          the numbers behind the figures

``--out=DIR`` writes them into DIR instead. Bundled weights
(``--workdir=bundled:NAME``) are read-only: they need ``--out``. Weights
without a reconstruction decoder (a bundle exported without it) skip
reconstructions.png and perturbation.png (the rotation strip shows the
inputs alone; primary_caps.png trains its own decoder), with the reasons in
the log and in summary.json's ``skipped``.

For MultiMNIST workdirs (two digits per image) it writes multimnist.png
instead (the paper's Figure 5: each input, the reconstructions from the two
longest capsules in red and green, and those from the true labels' capsules;
the first test pairs, then failures) and perturbation.png, and logs why the
single-digit figures (reconstructions, rotation, primary_caps,
confusion_matrix, misclassified) are skipped. The same images go to TensorBoard.

Each figure is one function here: it computes its arrays with
capsnet_jax.analysis.arrays, draws them with capsnet_jax.analysis.plots (process 0 only)
and returns the arrays; make_figures runs a list of them. With several
processes every process reads the whole test set and runs the same
inference (sharded over every device, gathered on every process): the
arrays are those of one process, and only process 0 writes files.
"""

import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable

from absl import logging
import jax
import numpy as np

from capsnet_jax import errors
from capsnet_jax import experiment
from capsnet_jax import processes
from capsnet_jax.analysis import arrays
from capsnet_jax.analysis import plots
from capsnet_jax.data import augment
from capsnet_jax.data import input_pipeline
from capsnet_jax.inference import bundled
from capsnet_jax.inference import trained
from capsnet_jax.training import progress
from capsnet_jax.workdir import files
from capsnet_jax.workdir import lock
from capsnet_jax.workdir import metric_logging

PRIMARY_DECODER_FILE = "primary_decoder.msgpack"
# The rotation strip's angles and the primary-capsule figure's coefficients.
STRIP_ANGLES = np.arange(-180, 181, 30)
PRIMARY_COEFFICIENTS = np.linspace(0.0, 1.0, 8)
PRIMARY_ROWS = 8
PERTURBED_EXAMPLES = 3
MULTIMNIST_SKIPPED = {
    "reconstructions": "multimnist.png shows the reconstructions of both digits",
    "rotation": "its accuracy is that of one digit per image",
    "primary_caps": "its decoder reconstructs one digit per image from one "
                    "class's coupling",
    "confusion_matrix": "it counts one label per image",
    "misclassified": "multimnist.png shows failures",
}
NO_DECODER_SKIPPED = {
    "reconstructions": "the weights have no reconstruction decoder (a bundle "
                       "exported without it)",
    "perturbation": "it decodes perturbed capsules, and the weights have no "
                    "reconstruction decoder (a bundle exported without it)",
    "multimnist": "it shows each digit's reconstruction, and the weights "
                  "have no reconstruction decoder (a bundle exported "
                  "without it)",
}
# Misclassified images drawn at most (in rows of ten); the JSON lists all.
MISCLASSIFIED_SHOWN = 40
# MultiMNIST figure: pairs searched for failures (the paper's 10M test set
# need not be predicted whole for a picture).
MAX_FIGURE_PAIRS = 10000


@dataclasses.dataclass
class Context:
  """What the figure functions read: the model, the whole (unsharded) data
  and where process 0 writes."""
  config: Any
  model: trained.TrainedModel
  train: input_pipeline.Split
  test: input_pipeline.Split
  out_dir: str

  @property
  def class_names(self) -> tuple[str, ...]:
    return self.model.info.class_names

  @property
  def num_shown(self) -> int:
    return self.config.visualize_num_images

  @functools.cached_property
  def test_outputs(self) -> dict[str, np.ndarray]:
    """Predictions and capsule lengths of the whole test set."""
    return self.model.predict(self.test.images,
                                     ("predictions", "lengths"))

  @functools.cached_property
  def shown(self) -> dict[str, np.ndarray]:
    """predict's default outputs for the first num_shown test images."""
    return self.model.predict(self.test.images[:self.num_shown])

  def display(self, images: np.ndarray) -> np.ndarray:
    """Stored uint8 images as the figures show them, in [0, 1]."""
    return self.model.display(self.model.preprocess(images))


# A figure: (context, path of its PNG or None on processes other than 0)
# -> its arrays.
FigureFn = Callable[[Context, str | None], dict[str, Any]]


# --------------------------------------------------------------------------
# One function per figure.


def reconstructions_figure(ctx: Context, path: str | None) -> dict[str, Any]:
  """The first test images and their reconstructions."""
  n = ctx.num_shown
  arrays = dict(inputs=ctx.display(ctx.test.images[:n]),
                reconstructions=ctx.shown["reconstructions"],
                predictions=ctx.shown["predictions"], labels=ctx.test.labels[:n])
  if path:
    plots.plot_reconstructions(arrays["inputs"], arrays["reconstructions"],
                               arrays["predictions"], arrays["labels"],
                               ctx.class_names, path)
  return arrays


def rotation_figure(ctx: Context, path: str | None) -> dict[str, Any]:
  """The rotation sweep over the test set (or its first
  visualize_rotation_examples) and one image's strip; also rotation.gif."""
  config, test = ctx.config, ctx.test
  limit = config.visualize_rotation_examples or len(test)
  angles = np.arange(-180, 180 + 1e-6, config.visualize_rotation_step)
  pick = config.visualize_example
  sweep = arrays.rotation_sweep(ctx.model, test.images[:limit],
                                  test.labels[:limit], angles)
  strip = arrays.rotation_strip(ctx.model, test.images[pick], STRIP_ANGLES)
  if path:
    plots.plot_rotation_robustness(
        sweep, strip, ctx.class_names, int(test.labels[pick]), path,
        augment.TRAINING_ROTATION_DEGREES.get(ctx.model.info.setup, 0))
    plots.save_rotation_gif(strip, os.path.splitext(path)[0] + ".gif")
  return dict(sweep=sweep, strip=strip)


def perturbation_figure(ctx: Context, path: str | None) -> dict[str, Any]:
  """Each dimension of the longest capsule of the first test images moved."""
  k = min(PERTURBED_EXAMPLES, ctx.num_shown)
  capsules = ctx.shown["predictions"][:k]  # the longest capsules
  grids = np.stack([arrays.perturbation_grid(
      ctx.model, ctx.shown["class_caps"][i], int(capsules[i])) for i in range(k)])
  if path:
    plots.plot_perturbations(grids, capsules, arrays.PERTURBATION_OFFSETS,
                             ctx.class_names, path)
  return dict(grids=grids, capsules=capsules)


def primary_caps_figure(ctx: Context, path: str | None) -> dict[str, Any]:
  """One test image reconstructed from single primary capsules, through a
  decoder trained on the training images (cached per checkpoint step)."""
  params, trained_now = _primary_decoder(ctx)
  pick = ctx.config.visualize_example
  rows = arrays.primary_capsule_rows(ctx.model, params, ctx.test.images[pick],
                                       PRIMARY_ROWS, PRIMARY_COEFFICIENTS)
  image = ctx.display(ctx.test.images[pick:pick + 1])[0]
  if path:
    grid = arrays.primary_grid_shape(ctx.model.experiment.primary_types,
                                     ctx.config.get("conv_padding", "valid"),
                                     ctx.model.info.image_shape,
                                     rows["num_primary"])
    labels = [arrays.primary_capsule_label(
        int(cap), grid, ctx.model.experiment.primary_grouping,
        ctx.config.get("primary_dim", 8)) for cap in rows["capsules"]]
    plots.plot_primary_caps(rows, image, PRIMARY_COEFFICIENTS, labels,
                            ctx.class_names, path)
  return dict(rows, input=image, trained_now=trained_now)


def _primary_decoder(ctx: Context) -> tuple[Any, bool]:
  """(params, trained now): process 0's cached decoder of this checkpoint,
  given to every process, or one trained now by every process alike (and
  cached by process 0)."""
  model, config = ctx.model, ctx.config
  cache = os.path.join(ctx.out_dir, PRIMARY_DECODER_FILE)
  template = arrays.init_primary_decoder(model)
  lead = jax.process_index() == 0
  # The cache holds for this run's checkpoint and this way of training.
  recipe = dict(workdir=os.path.abspath(str(model.workdir)),
                steps=int(config.visualize_primary_steps),
                examples=int(config.visualize_primary_examples),
                batch_size=int(config.batch_size))
  params = (arrays.read_primary_decoder(cache, template, model.step, recipe)
            if lead else None)
  if jax.process_count() > 1:  # process 0's file decides, on every process
    found = processes.broadcast_one_to_all(
        np.int32(params is not None), "process 0's primary-decoder cache")
    params = processes.broadcast_one_to_all(
        params if params is not None else template,
        "the cached primary-capsule decoder") if found else None
  if params is not None:
    return params, False
  pool = ctx.train.images[:config.visualize_primary_examples]
  params, history = arrays.train_primary_decoder(
      model, pool, config.visualize_primary_steps, config.batch_size)
  logging.info("primary-capsule decoder: SSE %.2f -> %.2f in %d steps",
               history[0], history[-1], len(history))
  if lead:
    arrays.write_primary_decoder(cache, params, model.step, recipe)
  return params, True


def confusion_matrix_figure(ctx: Context, path: str | None) -> dict[str, Any]:
  """The test set's confusion matrix; also confusion_matrix.json."""
  predictions = ctx.test_outputs["predictions"]
  matrix = arrays.confusion_matrix(predictions, ctx.test.labels,
                                     ctx.model.info.num_classes)
  if path:
    plots.plot_confusion(matrix, ctx.class_names, path)
    files.atomic_write_text(
        os.path.join(os.path.dirname(path), "confusion_matrix.json"),
        json.dumps({"class_names": list(ctx.class_names),
                    "rows_true_columns_predicted": matrix.tolist()}, indent=1))
  return dict(matrix=matrix, predictions=predictions)


def misclassified_figure(ctx: Context, path: str | None) -> dict[str, Any]:
  """The misclassified test images, most confident mistakes first (the first
  MISCLASSIFIED_SHOWN drawn); also misclassified.json with every one."""
  errors = arrays.misclassified(ctx.test_outputs["lengths"], ctx.test.labels)
  shown = {k: v[:MISCLASSIFIED_SHOWN] for k, v in errors.items()}
  shown = arrays.misclassified_examples(
      ctx.model, ctx.test.images[shown["index"]], shown)
  if path:
    plots.plot_misclassified(shown, len(errors["index"]), len(ctx.test),
                             ctx.class_names, path)
    keys = ("index", "label", "prediction", "predicted_length", "true_length")
    files.atomic_write_text(
        os.path.join(os.path.dirname(path), "misclassified.json"),
        json.dumps({"num_test": len(ctx.test), "order": "most confident first",
                    "errors": [{k: errors[k][i].item() for k in keys}
                               for i in range(len(errors["index"]))]},
                   indent=1))
  return dict(errors=errors, shown=shown)


def _first_pairs(ctx: Context):
  """(images, labels, lengths, right) of the first MAX_FIGURE_PAIRS test
  pairs; right: the paper's rule, per pair."""
  num = min(len(ctx.test), MAX_FIGURE_PAIRS)
  images, labels = ctx.test.images[:num], ctx.test.labels[:num]
  lengths = ctx.model.predict(images, ("lengths",))["lengths"]
  return images, labels, lengths, arrays.two_digits_right(lengths, labels)


def multimnist_figure(ctx: Context, path: str | None) -> dict[str, Any]:
  """The paper's Figure 5: the first test pairs, then failures among the
  first MAX_FIGURE_PAIRS."""
  images, labels, lengths, right = _first_pairs(ctx)
  num = len(right)
  n = ctx.num_shown
  wrong = np.flatnonzero(~right)[:n]
  shown = arrays.two_digit_examples(ctx.model, images[:n], labels[:n],
                                      lengths[:n])
  failures = arrays.two_digit_examples(ctx.model, images[wrong],
                                         labels[wrong], lengths[wrong])
  if path:
    plots.plot_two_digits(shown, failures, float(np.mean(right)), num, path)
  return dict(shown=shown, failures=failures, right=right,
              failures_shown=wrong)


SINGLE_DIGIT_FIGURES: tuple[tuple[str, FigureFn], ...] = (
    ("reconstructions", reconstructions_figure),
    ("rotation", rotation_figure),
    ("perturbation", perturbation_figure),
    ("primary_caps", primary_caps_figure),
    ("confusion_matrix", confusion_matrix_figure),
    ("misclassified", misclassified_figure),
)
TWO_DIGIT_FIGURES: tuple[tuple[str, FigureFn], ...] = (
    ("multimnist", multimnist_figure),
    ("perturbation", perturbation_figure),
)


# --------------------------------------------------------------------------
# The command.


def _single_digit_summary(ctx: Context, arrays) -> dict[str, Any]:
  matrix, sweep = arrays["confusion_matrix"]["matrix"], arrays["rotation"]["sweep"]
  return dict(
      test_accuracy=float(np.trace(matrix) / matrix.sum()),
      num_test=len(ctx.test),
      rotation_angles=sweep["angles"].tolist(),
      rotation_accuracy=sweep["accuracy"].tolist(),
      rotation_mean_true_length=sweep["mean_true_length"].tolist(),
      rotation_examples=sweep["num_examples"],
      confusion_trace=int(np.trace(matrix)),
      num_misclassified=len(arrays["misclassified"]["errors"]["index"]),
      primary_decoder_trained_now=arrays["primary_caps"]["trained_now"])


def _two_digit_summary(ctx: Context, arrays) -> dict[str, Any]:
  if "multimnist" in arrays:
    right = arrays["multimnist"]["right"]
    shown = arrays["multimnist"]["failures_shown"]
  else:  # Its figure skipped (no decoder): the numbers alone.
    right, shown = _first_pairs(ctx)[3], []
  return dict(
      test_accuracy=float(np.mean(right)), num_test=len(right),
      num_failures=int(np.sum(~right)),
      failures_shown=[int(i) for i in shown],
      skipped={k + ".png": v for k, v in MULTIMNIST_SKIPPED.items()})


def _tensorboard_image(path) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return np.asarray(Image.open(path).convert("RGB"), np.float32)[None] / 255.0


def make_figures(config, workdir: str, out: str | None = None
                 ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
  """--mode=visualize: every figure of config.checkpoint (default the
  latest), written into ``out`` (default WORKDIR/figures; bundled weights
  need one).

  Returns:
    (summary, arrays): summary.json's numbers, and each figure's arrays by
    figure name. Every process returns the same; process 0 writes the files.
  """
  exp = experiment.ensure(config, "visualize")
  is_bundle = bundled.is_bundle(workdir)
  if is_bundle and not out:
    raise errors.ConfigError(
        f"--workdir={workdir} is bundled weights, which are read-only: give "
        "--out=DIR for the figures")
  model = trained.load(workdir, which=trained.which_checkpoint(exp.config),
                       config=exp)
  # Every process reads the whole data (not its shard): the inputs of the
  # sharded inference must agree across processes, and the figures are of
  # the whole test set.
  splits = exp.load_splits(0, 1)
  train_split, test = splits.train, splits.test
  if exp.config.get("visualize_example", 0) >= len(test):
    raise errors.ConfigError(
        f"visualize_example={exp.config.visualize_example} is not a test "
        f"image: the test set has {len(test)} (0 to {len(test) - 1})")
  lead = jax.process_index() == 0
  ctx = Context(config=exp.config, model=model, train=train_split, test=test,
                out_dir=out or os.path.join(workdir, "figures"))
  if lead:
    os.makedirs(ctx.out_dir, exist_ok=True)
  t0 = time.time()
  two_digits = test.labels.ndim == 2  # several digits per image
  if two_digits:
    for name, why in MULTIMNIST_SKIPPED.items():
      logging.info("visualize: %s.png skipped for %s: %s", name,
                   model.info.name, why)
  figures = TWO_DIGIT_FIGURES if two_digits else SINGLE_DIGIT_FIGURES
  skipped = {} if model.has_decoder else {
      k: v for k, v in NO_DECODER_SKIPPED.items() if k in dict(figures)}
  for name, why in skipped.items():
    logging.info("visualize: %s.png skipped for %s: %s", name,
                 model.info.name, why)
  figures = tuple((n, f) for n, f in figures if n not in skipped)
  paths = {name: os.path.join(ctx.out_dir, f"{name}.png") for name, _ in figures}
  arrays = {}
  # Process 0 shows the figures done (a bar on a terminal).
  with progress.Progress("figures", len(figures), "figure",
                         enabled=lead) as shown:
    for name, figure in figures:
      shown.desc = f"figures, drawing {name}"
      shown.show(force=True)
      arrays[name] = figure(ctx, paths[name] if lead else None)
      shown.desc = "figures"
      shown.update()
  summary = dict(checkpoint_step=model.step, **(
      _two_digit_summary if two_digits else _single_digit_summary)(ctx, arrays),
                 seconds=time.time() - t0)
  if skipped:
    summary.setdefault("skipped", {}).update(
        {k + ".png": v for k, v in skipped.items()})
  if lead:
    files.atomic_write_json(os.path.join(ctx.out_dir, "summary.json"), summary)
    # The figures also go to TensorBoard: the workdir's, or beside the
    # figures for read-only bundled weights.
    writer = metric_logging.create_writer(ctx.out_dir if is_bundle else workdir,
                                          lead=True)
    writer.write_images(model.step, {f"figures/{k}": _tensorboard_image(p)
                                     for k, p in paths.items()})
    writer.flush()
    logging.info("Figures of step %d written to %s in %.0f s", model.step,
                 ctx.out_dir, summary["seconds"])
  return summary, arrays


def visualize(config, workdir: str, out: str | None = None) -> dict[str, Any]:
  """--mode=visualize: make_figures; returns the summary.

  On a training workdir (not bundled weights) it holds the workdir's lock
  (capsnet_jax.workdir.lock): it writes the figures, the primary-capsule
  decoder's cache and TensorBoard images there, so it refuses a workdir in
  use, and a run started meanwhile refuses it.
  """
  if bundled.is_bundle(workdir) or not os.path.isdir(workdir):
    return make_figures(config, workdir, out)[0]
  with lock.hold(workdir, "--mode=visualize", create=False):
    return make_figures(config, workdir, out)[0]
