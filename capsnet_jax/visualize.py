"""Looking inside a trained CapsNet: the figures of --mode=visualize.

Synopsis::

  python main.py --config=configs/mnist.py --workdir=runs/mnist --mode=visualize

reads the latest checkpoint of WORKDIR and writes into WORKDIR/figures/:

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
  summary.json          the numbers behind the figures

For MultiMNIST workdirs (two digits per image) it writes multimnist.png
instead (the paper's Figure 5: each input, the reconstructions from the two
longest capsules in red and green, and those from the true labels' capsules;
the first test pairs, then failures) and perturbation.png, and logs why the
single-digit figures (reconstructions, rotation, primary_caps,
confusion_matrix) are skipped.

and the same images to TensorBoard. The array-producing functions
(rotation_sweep, perturbation_grid, confusion_matrix, ...) are separate from
the plotting so that their results can be checked.
"""

import json
import os
import time
from typing import Any, Callable

from absl import logging
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import optax  # pylint: disable=g-import-not-at-top,wrong-import-position
from scipy import ndimage  # pylint: disable=g-import-not-at-top,wrong-import-position

# pylint: disable=g-import-not-at-top,wrong-import-position
from capsnet_jax import conv
from capsnet_jax import decoders
from capsnet_jax import input_pipeline
from capsnet_jax import metric_logging
from capsnet_jax import models
from capsnet_jax import trained
from capsnet_jax import validation
from capsnet_jax import workdirs
# pylint: enable=g-import-not-at-top,wrong-import-position

PERTURBATION_OFFSETS = np.round(np.arange(-0.25, 0.2501, 0.05), 2) + 0.0  # 11 values
PRIMARY_DECODER_FILE = "primary_decoder.msgpack"
PRIMARY_KEYS = ("primary_caps", "coupling", "predictions")


# --------------------------------------------------------------------------
# The arrays behind the figures.


def rotate(images: np.ndarray, angle: float) -> np.ndarray:
  """uint8 [N, H, W, C] rotated by ``angle`` degrees counter-clockwise about
  the centre (bilinear, zero fill, same size), with scipy.ndimage.rotate."""
  if angle % 360 == 0:
    return images
  out = ndimage.rotate(images.astype(np.float32), angle, axes=(2, 1),
                       reshape=False, order=1, mode="constant", cval=0.0)
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def rotation_sweep(model: trained.TrainedModel, images: np.ndarray, labels: np.ndarray,
                   angles) -> dict[str, np.ndarray]:
  """Accuracy and mean true-class capsule length at every angle.

  Returns:
    angles [A], accuracy [A], mean_true_length [A].
  """
  accuracy, mean_length = [], []
  for angle in angles:
    out = model.predict_stored(rotate(images, angle), ("lengths", "predictions"))
    accuracy.append(np.mean(out["predictions"] == labels))
    mean_length.append(np.mean(out["lengths"][np.arange(len(labels)), labels]))
    logging.info("rotation %+.0f deg: accuracy %.4f", angle, accuracy[-1])
  return dict(angles=np.asarray(angles, np.float32),
              accuracy=np.asarray(accuracy), mean_true_length=np.asarray(mean_length))


def rotation_strip(model: trained.TrainedModel, image: np.ndarray, angles
                   ) -> dict[str, np.ndarray]:
  """One stored uint8 image [H, W, C] rotated through ``angles``: inputs,
  reconstructions, predictions and confidences (predicted capsule length)."""
  rotated = np.stack([rotate(image[None], a)[0] for a in angles])
  out = model.predict_stored(rotated, ("lengths", "predictions", "reconstructions"))
  return dict(angles=np.asarray(angles), inputs=model.display(
      model.preprocess(rotated)), reconstructions=out["reconstructions"],
              predictions=out["predictions"],
              confidence=out["lengths"][np.arange(len(angles)), out["predictions"]])


def perturbation_grid(model: trained.TrainedModel, class_caps: np.ndarray, label: int,
                      offsets=PERTURBATION_OFFSETS) -> np.ndarray:
  """Decodings of one example's capsule ``label`` with each dimension moved.

  Args:
    class_caps: [K, D] class capsules of one example.
    label: the capsule to perturb and decode (the predicted class).

  Returns:
    [D, len(offsets), H, W, C]: row d adds offsets to dimension d only.
  """
  k, d = class_caps.shape
  grid = np.repeat(class_caps[None, None], d, 0).repeat(len(offsets), 1)
  grid[np.arange(d), :, label, np.arange(d)] += np.asarray(offsets)[None]
  flat = grid.reshape(-1, k, d)
  images = model.decode(flat, np.full(len(flat), label, np.int32))
  return images.reshape(d, len(offsets), *images.shape[1:])


def confusion_matrix(predictions: np.ndarray, labels: np.ndarray,
                     num_classes: int) -> np.ndarray:
  """[K, K] counts: row = true class, column = predicted class."""
  matrix = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(matrix, (labels, predictions), 1)
  return matrix


class PrimaryDecoder(nn.Module):
  """FC decoder from primary capsules scaled by their coupling: [B, N, 8] -> image."""
  image_shape: tuple[int, int, int]

  @nn.compact
  def __call__(self, weighted_caps: jax.Array) -> jax.Array:
    x = weighted_caps.reshape(weighted_caps.shape[0], -1)
    return decoders.FCDecoder(self.image_shape, name="fc")(x)


def weighted_primary_caps(out: dict[str, np.ndarray]) -> np.ndarray:
  """Primary capsules [B, N, 8] scaled by their coupling to the predicted class."""
  coupling = out["coupling"][np.arange(len(out["predictions"])), :,
                             out["predictions"]]  # [B, N]
  return out["primary_caps"] * coupling[..., None]


def train_primary_decoder(model: trained.TrainedModel, images: np.ndarray, steps: int,
                          batch_size: int, seed: int = 0) -> tuple[Any, list[float]]:
  """Fits a PrimaryDecoder to reconstruct ``images`` (uint8) from the frozen
  network's coupling-weighted primary capsules. Returns (params, losses)."""
  out = model.predict_stored(images, PRIMARY_KEYS)
  inputs = weighted_primary_caps(out)
  targets = model.display(model.preprocess(images))
  module = PrimaryDecoder(model.info.image_shape)
  params = module.init(jax.random.key(seed), jnp.asarray(inputs[:1]))["params"]
  tx = optax.adam(1e-3)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss_fn(p):
      recon = module.apply({"params": p}, x)
      return jnp.mean(jnp.sum(jnp.square(recon - y), axis=(1, 2, 3)))
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(seed)
  history = []
  for _ in range(steps):
    idx = rng.choice(len(inputs), size=min(batch_size, len(inputs)), replace=False)
    params, opt_state, loss = step(params, opt_state, jnp.asarray(inputs[idx]),
                                   jnp.asarray(targets[idx]))
    history.append(float(loss))
  return params, history


def primary_capsule_rows(model: trained.TrainedModel, params, image: np.ndarray,
                         num_rows: int, coefficients) -> dict[str, np.ndarray]:
  """Reconstructions of one image from single primary capsules.

  The ``num_rows`` capsules with the largest coupling-weighted length towards
  the predicted class are shown; row r decodes capsule r alone (all others
  zero), scaled by each of ``coefficients``.

  Returns:
    capsules [R] (indices), coupling [R], images [R, len(coefficients), H, W, C],
    full [H, W, C] (reconstruction from every capsule with its coupling).
  """
  out = model.predict_stored(image[None], PRIMARY_KEYS)
  weighted = weighted_primary_caps(out)[0]  # [N, 8]
  pred = int(out["predictions"][0])
  coupling = out["coupling"][0, :, pred]
  top = np.argsort(-np.linalg.norm(weighted, axis=-1))[:num_rows]
  n, dim = weighted.shape
  batch = np.zeros((len(top), len(coefficients), n, dim), np.float32)
  for r, i in enumerate(top):
    batch[r, :, i] = np.asarray(coefficients)[:, None] * out["primary_caps"][0, i]
  module = PrimaryDecoder(model.info.image_shape)
  decode = jax.jit(lambda p, x: module.apply({"params": p}, x))
  images = np.asarray(decode(params, jnp.asarray(batch.reshape(-1, n, dim))))
  full = np.asarray(decode(params, jnp.asarray(weighted[None])))[0]
  return dict(capsules=top, coupling=coupling[top], prediction=pred, full=full,
              images=images.reshape(len(top), len(coefficients), *images.shape[1:]))


def two_digit_examples(model: trained.TrainedModel, images: np.ndarray,
                       labels: np.ndarray, lengths: np.ndarray
                       ) -> dict[str, np.ndarray]:
  """What the MultiMNIST figure shows of some test pairs.

  Args:
    images: stored uint8 [N, H, W, C] overlays; labels: [N, 2];
    lengths: their capsule lengths [N, K].

  Returns:
    inputs [N, H, W, C]; predicted [N, 2] (the two longest capsules, longest
    first); predicted_recons and true_recons [N, 2, H, W, C], decoded from
    the capsules of predicted / labels; correct [N] (the paper's rule).
  """
  out = model.predict_stored(images, ("class_caps",))
  predicted = np.argsort(-lengths, axis=1, kind="stable")[:, :2]
  decode = lambda which: np.stack(
      [model.decode(out["class_caps"], which[:, t]) for t in range(2)], axis=1)
  correct = np.all(np.sort(predicted, 1) == np.sort(labels, 1), axis=1)
  return dict(inputs=model.display(model.preprocess(images)),
              labels=np.asarray(labels), predicted=predicted,
              predicted_recons=decode(predicted), true_recons=decode(labels),
              correct=correct)


def red_green(pair: np.ndarray) -> np.ndarray:
  """Two single-channel images [2, H, W, 1] as one RGB image: the first in
  red, the second in green (yellow where they overlap)."""
  rgb = np.zeros((*pair.shape[1:3], 3), np.float32)
  rgb[..., 0], rgb[..., 1] = pair[0, ..., 0], pair[1, ..., 0]
  return np.clip(rgb, 0, 1)


# --------------------------------------------------------------------------
# Plotting.


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
  fig.savefig(path, dpi=100, bbox_inches="tight")
  plt.close(fig)


def plot_reconstructions(inputs, recons, predictions, labels, class_names, path):
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


def plot_rotation(sweep, strip, class_names, true_label, path):
  cols = len(strip["angles"])
  fig = plt.figure(figsize=(max(8, 0.75 * cols), 6.2))
  grid = fig.add_gridspec(3, cols, height_ratios=[2.4, 1, 1], hspace=0.5)
  ax = fig.add_subplot(grid[0, :])
  ax.plot(sweep["angles"], sweep["accuracy"], "o-", label="test accuracy")
  ax.plot(sweep["angles"], sweep["mean_true_length"], "s--",
          label="mean true-class capsule length")
  ax.set_xlabel("rotation angle (degrees)")
  ax.set_ylim(0, 1.02)
  ax.set_xticks(np.arange(-180, 181, 45))
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="lower center")
  ax.set_title(f"Robustness to rotation ({sweep['num_examples']} test images, "
               "trained without rotations)", fontsize=9)
  for j in range(cols):
    pred = strip["predictions"][j]
    top = fig.add_subplot(grid[1, j])
    bottom = fig.add_subplot(grid[2, j])
    _show(top, strip["inputs"][j], f"{strip['angles'][j]:+.0f}°")
    _show(bottom, strip["reconstructions"][j],
          f"{class_names[pred]} {strip['confidence'][j]:.2f}")
    if j == 0:
      top.set_ylabel(f"input\n(true {class_names[true_label]})", fontsize=7)
      bottom.set_ylabel("recon.\n(pred, |v|)", fontsize=7)
  _save(fig, path)


def save_rotation_gif(strip, path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  frames = []
  for inp, rec in zip(strip["inputs"], strip["reconstructions"]):
    pair = np.concatenate([inp, rec], axis=1)
    if pair.shape[-1] != 3:
      pair = np.repeat(pair[..., :1], 3, axis=-1)
    pair = (np.clip(pair, 0, 1) * 255).astype(np.uint8)
    frames.append(Image.fromarray(pair).resize((pair.shape[1] * 4, pair.shape[0] * 4),
                                               Image.NEAREST))
  frames[0].save(path, save_all=True, append_images=frames[1:], duration=150,
                 loop=0)


def plot_perturbations(grids, predictions, class_names, path):
  n, (d, m) = len(grids), grids[0].shape[:2]
  fig, axes = plt.subplots(d, n * m, figsize=(0.42 * n * m + 0.6, 0.42 * d + 0.8))
  for g, grid in enumerate(grids):
    for r in range(d):
      for c in range(m):
        ax = axes[r, g * m + c]
        _show(ax, grid[r, c])
        if r == 0:
          ax.set_title(f"{PERTURBATION_OFFSETS[c]:+.2f}", fontsize=5)
        if c == 0 and g == 0:
          ax.set_ylabel(f"dim {r}", fontsize=6)
    axes[0, g * m + m // 2].annotate(
        f"capsule {class_names[predictions[g]]}", (0.5, 1.9),
        xycoords="axes fraction", ha="center", fontsize=8)
  fig.suptitle("Perturbing each dimension of the predicted class capsule "
               "(offsets -0.25 ... +0.25)", fontsize=9, y=1.02)
  plt.subplots_adjust(wspace=0.05, hspace=0.05)
  _save(fig, path)


def plot_primary_caps(rows, input_image, coefficients, primary_shape, class_names,
                      path):
  """Rows: one capsule each; columns: its coefficient. Shown is what the
  capsule adds to the reconstruction from no capsule at all (red: brighter,
  blue: darker), scaled per row."""
  r, m = rows["images"].shape[:2]
  fig, axes = plt.subplots(r, m + 2, figsize=(0.8 * (m + 2), 0.85 * r + 0.6))
  axes = np.asarray(axes).reshape(r, m + 2)
  _, w, types = primary_shape
  for i in range(r):
    cap = int(rows["capsules"][i])
    pos, t = divmod(cap, types)
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
    axes[i, -1].set_ylabel(f"type {t} @({pos // w},{pos % w})\n"
                           f"c={rows['coupling'][i]:.3f}", fontsize=6)
  fig.suptitle(f"Primary-capsule reconstructions (predicted "
               f"{class_names[rows['prediction']]}): one capsule per row, its "
               "coefficient c growing left to right;\nshown: change from the "
               "reconstruction without capsules (red brighter, blue darker)",
               fontsize=8)
  _save(fig, path)


def plot_confusion(matrix, class_names, path):
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


# --------------------------------------------------------------------------
# The command.


def _tensorboard_image(path) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return np.asarray(Image.open(path).convert("RGB"), np.float32)[None] / 255.0


def visualize(config, workdir: str) -> dict[str, Any]:
  """--mode=visualize: every figure of the latest checkpoint; returns summary."""
  validation.validate_config(config, "visualize", jax.device_count())
  workdirs.check_compatible(workdir, config)
  model = trained.load(workdir, config=config)
  # Every process predicts the same (whole) test set: the inputs of the
  # sharded inference must agree across processes.
  _, test, info = input_pipeline.load_datasets(config, 0, 1)
  step = model.step
  lead = jax.process_index() == 0
  out_dir = os.path.join(workdir, "figures")
  if lead:
    os.makedirs(out_dir, exist_ok=True)
  names = info.class_names
  t0 = time.time()
  if test.labels.ndim == 2:  # several digits per image
    return _visualize_two_digits(config, workdir, model, test, out_dir, lead,
                                 t0)

  # Plain predictions on the test set, and the confusion matrix.
  out = model.predict_stored(test.images, ("lengths", "predictions"))
  accuracy = float(np.mean(out["predictions"] == test.labels))
  matrix = confusion_matrix(out["predictions"], test.labels, info.num_classes)
  n = config.visualize_num_images
  shown = model.predict_stored(test.images[:n])
  inputs = model.display(model.preprocess(test.images[:n]))

  # Rotation over the test set (or its first visualize_rotation_examples).
  limit = config.visualize_rotation_examples or len(test)
  angles = np.arange(-180, 180 + 1e-6, config.visualize_rotation_step)
  sweep = rotation_sweep(model, test.images[:limit], test.labels[:limit], angles)
  sweep["num_examples"] = min(limit, len(test))
  pick = config.visualize_example
  strip = rotation_strip(model, test.images[pick], np.arange(-180, 181, 30))

  grids = [perturbation_grid(model, shown["class_caps"][i],
                             int(shown["predictions"][i]))
           for i in range(min(3, n))]

  # Primary-capsule decoder: cached per checkpoint step.
  cache = os.path.join(out_dir, PRIMARY_DECODER_FILE)
  module = PrimaryDecoder(info.image_shape)
  template = module.init(jax.random.key(0), jnp.zeros(
      (1, *model.predict_stored(test.images[:1], PRIMARY_KEYS)["primary_caps"].shape[1:])))["params"]
  cached = None
  if os.path.exists(cache):
    with open(cache, "rb") as f:
      saved = flax.serialization.msgpack_restore(f.read())
    if int(saved.get("step", -1)) == step:
      cached = flax.serialization.from_state_dict(template, saved["params"])
  primary_trained = cached is None
  if cached is None:
    train_split, _, _ = input_pipeline.load_datasets(config, 0, 1)
    pool = train_split.images[:config.visualize_primary_examples]
    cached, history = train_primary_decoder(
        model, pool, config.visualize_primary_steps, config.batch_size)
    logging.info("primary-capsule decoder: SSE %.2f -> %.2f in %d steps",
                 history[0], history[-1], len(history))
    if lead:
      with open(cache, "wb") as f:
        f.write(flax.serialization.msgpack_serialize(
            {"step": step, "params": flax.serialization.to_state_dict(cached)}))
  coefficients = np.linspace(0.0, 1.0, 8)
  rows = primary_capsule_rows(model, cached, test.images[pick], 8, coefficients)
  primary_shape = (*[conv.output_size(conv.output_size(s, 9, 1), 9, 2)
                     for s in info.image_shape[:2]], models.primary_types(config))

  summary = dict(
      checkpoint_step=step, test_accuracy=accuracy, num_test=len(test),
      rotation_angles=sweep["angles"].tolist(),
      rotation_accuracy=sweep["accuracy"].tolist(),
      rotation_mean_true_length=sweep["mean_true_length"].tolist(),
      rotation_examples=sweep["num_examples"],
      confusion_trace=int(np.trace(matrix)),
      primary_decoder_trained_now=primary_trained,
      seconds=time.time() - t0)
  if lead:
    paths = {name: os.path.join(out_dir, f"{name}.png") for name in (
        "reconstructions", "rotation", "perturbation", "primary_caps",
        "confusion_matrix")}
    plot_reconstructions(inputs, shown["reconstructions"], shown["predictions"],
                         test.labels[:n], names, paths["reconstructions"])
    plot_rotation(sweep, strip, names, int(test.labels[pick]), paths["rotation"])
    save_rotation_gif(strip, os.path.join(out_dir, "rotation.gif"))
    plot_perturbations(grids, shown["predictions"], names, paths["perturbation"])
    plot_primary_caps(rows, inputs[pick] if pick < n else model.display(
        model.preprocess(test.images[pick:pick + 1]))[0], coefficients,
                      primary_shape, names, paths["primary_caps"])
    plot_confusion(matrix, names, paths["confusion_matrix"])
    with open(os.path.join(out_dir, "confusion_matrix.json"), "w") as f:
      json.dump({"class_names": list(names), "rows_true_columns_predicted":
                 matrix.tolist()}, f, indent=1)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
    writer = metric_logging.create_writer(workdir, lead=True)
    writer.write_images(step, {f"figures/{k}": _tensorboard_image(p)
                               for k, p in paths.items()})
    writer.flush()
    logging.info("Figures of step %d written to %s in %.0f s", step, out_dir,
                 summary["seconds"])
  return summary


MULTIMNIST_SKIPPED = {
    "reconstructions": "multimnist.png shows the reconstructions of both digits",
    "rotation": "its accuracy is that of one digit per image",
    "primary_caps": "its decoder reconstructs one digit per image from one "
                    "class's coupling",
    "confusion_matrix": "it counts one label per image",
}
# MultiMNIST figure: pairs searched for failures (the paper's 10M test set
# need not be predicted whole for a picture).
MAX_FIGURE_PAIRS = 10000


def _visualize_two_digits(config, workdir: str, model: trained.TrainedModel,
                          test, out_dir: str, lead: bool, t0: float
                          ) -> dict[str, Any]:
  """visualize() for MultiMNIST: multimnist.png, perturbation.png and
  summary.json; the single-digit figures are skipped with a log line."""
  for name, why in MULTIMNIST_SKIPPED.items():
    logging.info("visualize: %s.png skipped for %s: %s", name,
                 model.info.name, why)
  step = model.step
  num = min(len(test), MAX_FIGURE_PAIRS)
  images, labels = test.images[:num], test.labels[:num]
  lengths = model.predict_stored(images, ("lengths",))["lengths"]
  top2 = np.sort(np.argsort(-lengths, axis=1, kind="stable")[:, :2], 1)
  right = np.all(top2 == np.sort(labels, 1), axis=1)
  n = config.visualize_num_images
  wrong = np.flatnonzero(~right)[:n]
  shown = two_digit_examples(model, images[:n], labels[:n], lengths[:n])
  failures = two_digit_examples(model, images[wrong], labels[wrong],
                                lengths[wrong])
  order = np.argsort(-lengths[:min(3, n)], axis=1)[:, 0]
  caps = model.predict_stored(images[:min(3, n)], ("class_caps",))["class_caps"]
  grids = [perturbation_grid(model, caps[i], int(order[i]))
           for i in range(len(order))]
  summary = dict(
      checkpoint_step=step, test_accuracy=float(np.mean(right)),
      num_test=int(num), num_failures=int(np.sum(~right)),
      failures_shown=[int(i) for i in wrong],
      skipped={k + ".png": v for k, v in MULTIMNIST_SKIPPED.items()},
      seconds=time.time() - t0)
  if lead:
    paths = {name: os.path.join(out_dir, f"{name}.png")
             for name in ("multimnist", "perturbation")}
    plot_two_digits(shown, failures, summary["test_accuracy"], num,
                    paths["multimnist"])
    plot_perturbations(grids, order, model.info.class_names,
                       paths["perturbation"])
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
    writer = metric_logging.create_writer(workdir, lead=True)
    writer.write_images(step, {f"figures/{k}": _tensorboard_image(p)
                               for k, p in paths.items()})
    writer.flush()
    logging.info("Figures of step %d written to %s in %.0f s", step, out_dir,
                 summary["seconds"])
  return summary
