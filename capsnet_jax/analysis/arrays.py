"""The arrays behind the figures of --mode=visualize (no plotting here).

Synopsis::

  from capsnet_jax.analysis import arrays
  from capsnet_jax.inference import trained
  model = trained.load("runs/mnist")
  sweep = arrays.rotation_sweep(model, images, labels, angles)
  grid = arrays.perturbation_grid(model, class_caps, label)  # [D, 11, H, W, C]
  matrix = arrays.confusion_matrix(predictions, labels, num_classes)
  params, losses = arrays.train_primary_decoder(model, images, steps, batch)
  rows = arrays.primary_capsule_rows(model, params, image, 8, coefficients)

Every function takes a trained.TrainedModel (whose inference is sharded over
every device of every process and gathered: each process gets the whole
result) and numpy arrays, and returns numpy arrays; capsnet_jax.analysis.plots draws
them and capsnet_jax.analysis.visualize is the command.
"""

from typing import Any

from absl import logging
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import ndimage

from capsnet_jax.model import conv
from capsnet_jax.model import decoders
from capsnet_jax.inference import trained
from capsnet_jax.workdir import files

PERTURBATION_OFFSETS = np.round(np.arange(-0.25, 0.2501, 0.05), 2) + 0.0  # 11 values
PRIMARY_KEYS = ("primary_caps", "coupling", "predictions")


# --------------------------------------------------------------------------
# Rotation, perturbation, confusion.


def rotate(images: np.ndarray, angle: float) -> np.ndarray:
  """uint8 [N, H, W, C] rotated by ``angle`` degrees counter-clockwise about
  the centre (bilinear, zero fill, same size), with scipy.ndimage.rotate."""
  if angle % 360 == 0:
    return images
  out = ndimage.rotate(images.astype(np.float32), angle, axes=(2, 1),
                       reshape=False, order=1, mode="constant", cval=0.0)
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def rotation_sweep(model: trained.TrainedModel, images: np.ndarray,
                   labels: np.ndarray, angles) -> dict[str, np.ndarray]:
  """Accuracy and mean true-class capsule length at every angle.

  Returns:
    angles [A], accuracy [A], mean_true_length [A], num_examples (N).
  """
  accuracy, mean_length = [], []
  for angle in angles:
    out = model.predict(rotate(images, angle), ("lengths", "predictions"))
    accuracy.append(np.mean(out["predictions"] == labels))
    mean_length.append(np.mean(out["lengths"][np.arange(len(labels)), labels]))
    logging.info("rotation %+.0f deg: accuracy %.4f", angle, accuracy[-1])
  return dict(angles=np.asarray(angles, np.float32),
              accuracy=np.asarray(accuracy),
              mean_true_length=np.asarray(mean_length),
              num_examples=len(labels))


def rotation_strip(model: trained.TrainedModel, image: np.ndarray, angles
                   ) -> dict[str, np.ndarray]:
  """One stored uint8 image [H, W, C] rotated through ``angles``: inputs,
  reconstructions (if the model has a decoder), predictions and confidences
  (predicted capsule length)."""
  rotated = np.stack([rotate(image[None], a)[0] for a in angles])
  keys = ("lengths", "predictions") + (
      ("reconstructions",) if model.has_decoder else ())
  out = model.predict(rotated, keys)
  strip = dict(angles=np.asarray(angles),
               inputs=model.display(model.preprocess(rotated)),
               predictions=out["predictions"],
               confidence=out["lengths"][np.arange(len(angles)),
                                         out["predictions"]])
  if model.has_decoder:
    strip["reconstructions"] = out["reconstructions"]
  return strip


def perturbation_grid(model: trained.TrainedModel, class_caps: np.ndarray,
                      label: int, offsets=PERTURBATION_OFFSETS) -> np.ndarray:
  """Decodings of one example's capsule ``label`` with each dimension moved.

  Args:
    model: the trained model.
    class_caps: [K, D] class capsules of one example.
    label: the capsule to perturb and decode (the predicted class).
    offsets: added to each dimension in turn.

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


def misclassified(lengths: np.ndarray, labels: np.ndarray
                  ) -> dict[str, np.ndarray]:
  """The misclassified images, the most confident mistakes first.

  Args:
    lengths: capsule lengths [N, K]; the longest capsule is the prediction.
    labels: [N] true classes.

  Returns:
    index [E] (into the N images), label [E], prediction [E],
    predicted_length and true_length [E] (the lengths of the predicted and of
    the true class's capsule), ordered by predicted_length - true_length,
    largest first (ties: lower index first).
  """
  lengths, labels = np.asarray(lengths), np.asarray(labels)
  predictions = np.argmax(lengths, axis=1)
  index = np.flatnonzero(predictions != labels)
  predicted_length = lengths[index, predictions[index]]
  true_length = lengths[index, labels[index]]
  order = np.argsort(true_length - predicted_length, kind="stable")
  return dict(index=index[order], label=labels[index][order],
              prediction=predictions[index][order],
              predicted_length=predicted_length[order],
              true_length=true_length[order])


def misclassified_examples(model: trained.TrainedModel, images: np.ndarray,
                           errors: dict[str, np.ndarray]
                           ) -> dict[str, np.ndarray]:
  """What the misclassified figure shows of some of ``errors``' images.

  Args:
    model: the trained model.
    images: the stored uint8 [E, H, W, C] images of ``errors["index"]``.
    errors: ``misclassified``'s arrays, cut to those images.

  Returns:
    ``errors`` with inputs [E, H, W, C] and, when the model has a decoder,
    predicted_recons and true_recons [E, H, W, C]: the decodings of the
    predicted and of the true class's capsule.
  """
  if not len(images):
    shape = (0, *model.info.image_shape)
    return dict(errors, inputs=np.zeros(shape, np.float32))
  out = dict(errors, inputs=model.display(model.preprocess(images)))
  if model.has_decoder:
    caps = model.predict(images, ("class_caps",))["class_caps"]
    out["predicted_recons"] = model.decode(caps, errors["prediction"])
    out["true_recons"] = model.decode(caps, errors["label"])
  return out


# --------------------------------------------------------------------------
# Primary capsules: a decoder of the frozen network's primary capsules.


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


def init_primary_decoder(model: trained.TrainedModel, seed: int = 0) -> Any:
  """Initial PrimaryDecoder parameters for ``model``'s primary capsules."""
  shape = jax.eval_shape(
      lambda v, x: model.model.apply(v, x, train=False),
      model.variables, jax.ShapeDtypeStruct((1, *model.info.image_shape),
                                            jnp.float32))["primary_caps"].shape
  module = PrimaryDecoder(model.info.image_shape)
  return module.init(jax.random.key(seed), jnp.zeros(shape))["params"]


def train_primary_decoder(model: trained.TrainedModel, images: np.ndarray,
                          steps: int, batch_size: int, seed: int = 0
                          ) -> tuple[Any, list[float]]:
  """Fits a PrimaryDecoder to reconstruct ``images`` (uint8) from the frozen
  network's coupling-weighted primary capsules. Returns (params, losses).

  The training runs on this process's first device (the same on every
  process: the inputs and the seed are the same).
  """
  out = model.predict(images, PRIMARY_KEYS)
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


def read_primary_decoder(path: str, template, step: int,
                         recipe: dict[str, Any] | None = None) -> Any | None:
  """Parameters saved by write_primary_decoder for checkpoint ``step`` and
  the same ``recipe`` (how the decoder was trained: its steps, examples,
  the run), in the structure of ``template``; None if there are none, of
  another step or recipe, or a cache that cannot be used (truncated,
  damaged, of another shape: it is then recomputed, with a warning)."""
  try:
    with open(path, "rb") as f:
      saved = flax.serialization.msgpack_restore(f.read())
  except FileNotFoundError:
    return None
  except Exception as e:  # pylint: disable=broad-except  # msgpack's errors
    logging.warning("the primary-capsule decoder cache %s cannot be read "
                    "(%s: %s); training the decoder again", path,
                    type(e).__name__, e)
    return None
  try:
    if not isinstance(saved, dict) or int(saved.get("step", -1)) != step:
      return None
    if saved.get("recipe") != recipe:
      return None
    params = flax.serialization.from_state_dict(template, saved["params"])
    same = jax.tree.map(lambda a, b: np.shape(a) == np.shape(b),
                        template, params)
    if not all(jax.tree.leaves(same)):
      raise ValueError("its parameters have other shapes")
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("the primary-capsule decoder cache %s does not fit this "
                    "model (%s: %s); training the decoder again", path,
                    type(e).__name__, e)
    return None
  return params


def write_primary_decoder(path: str, params, step: int,
                          recipe: dict[str, Any] | None = None) -> None:
  """Saves ``params`` for checkpoint ``step`` and ``recipe`` atomically (a
  reader sees the old cache or the new one, never a part)."""
  saved = {"step": step, "params": flax.serialization.to_state_dict(params)}
  if recipe is not None:
    saved["recipe"] = recipe
  files.atomic_write_bytes(path, flax.serialization.msgpack_serialize(saved))


def primary_capsule_rows(model: trained.TrainedModel, params, image: np.ndarray,
                         num_rows: int, coefficients) -> dict[str, np.ndarray]:
  """Reconstructions of one image from single primary capsules.

  The ``num_rows`` capsules with the largest coupling-weighted length towards
  the predicted class are shown; row r decodes capsule r alone (all others
  zero), scaled by each of ``coefficients``.

  Returns:
    capsules [R] (indices), coupling [R], images [R, len(coefficients), H, W, C],
    full [H, W, C] (reconstruction from every capsule with its coupling),
    prediction (the predicted class), num_primary (the model's N).
  """
  out = model.predict(image[None], PRIMARY_KEYS)
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
              images=images.reshape(len(top), len(coefficients), *images.shape[1:]),
              num_primary=n)


def primary_grid_shape(types: int | None, conv_padding: str, image_shape,
                       num_primary: int) -> tuple[int, int, int]:
  """(height, width, types) of the primary capsules' grid: CapsNet's two 9x9
  convolutions, the second of stride 2, VALID (the paper's layout) or SAME
  (conv_padding); models without a grid of types (``types`` None:
  Efficient-CapsNet, one capsule per depthwise filter) give
  (1, 1, num_primary)."""
  if types is None:
    return 1, 1, num_primary
  if conv_padding == "same":
    size = lambda s: -(-s // 2)  # conv1 keeps the size, stride 2 halves it
  else:
    size = lambda s: conv.output_size(conv.output_size(s, 9, 1), 9, 2)
  h, w = (size(s) for s in image_shape[:2])
  if h * w * types != num_primary:
    raise ValueError(f"{h}x{w}x{types} primary capsules expected, the model "
                     f"has {num_primary}")
  return h, w, types


def primary_capsule_label(cap: int, grid: tuple[int, int, int],
                          grouping: str = "paper", dim: int = 8) -> str:
  """Where primary capsule ``cap`` comes from, for a figure's row.

  grouping "paper": "type T @(row,col)", the ``dim`` channels of type T at
  one position. "reference" (layers.group_capsules): "map M @(row,col)",
  ``dim`` consecutive values from that position of conv channel M on, row
  by row (into channel M + 1 where the map ends first).
  """
  h, w, types = grid
  if grouping == "reference":
    channel, pos = divmod(cap * dim, h * w)
    return f"map {channel} @({pos // w},{pos % w})"
  pos, t = divmod(cap, types)
  return f"type {t} @({pos // w},{pos % w})"


# --------------------------------------------------------------------------
# Two digits per image (MultiMNIST).


def top_two(lengths: np.ndarray) -> np.ndarray:
  """The two longest capsules [N, 2], longest first (ties: lower class)."""
  return np.argsort(-lengths, axis=1, kind="stable")[:, :2]


def two_digits_right(lengths: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """[N] bool, the paper's rule: the two longest capsules are the labels."""
  return np.all(np.sort(top_two(lengths), 1) == np.sort(labels, 1), axis=1)


def two_digit_examples(model: trained.TrainedModel, images: np.ndarray,
                       labels: np.ndarray, lengths: np.ndarray
                       ) -> dict[str, np.ndarray]:
  """What the MultiMNIST figure shows of some test pairs.

  Args:
    model: the trained model.
    images: stored uint8 [N, H, W, C] overlays.
    labels: [N, 2].
    lengths: their capsule lengths [N, K].

  Returns:
    inputs [N, H, W, C]; labels [N, 2]; predicted [N, 2] (the two longest
    capsules, longest first); predicted_recons and true_recons
    [N, 2, H, W, C], decoded from the capsules of predicted / labels;
    correct [N] (the paper's rule).
  """
  out = model.predict(images, ("class_caps",))
  predicted = top_two(lengths)
  decode = lambda which: np.stack(
      [model.decode(out["class_caps"], which[:, t]) for t in range(2)], axis=1)
  return dict(inputs=model.display(model.preprocess(images)),
              labels=np.asarray(labels), predicted=predicted,
              predicted_recons=decode(predicted), true_recons=decode(labels),
              correct=two_digits_right(lengths, labels))
