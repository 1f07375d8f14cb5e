"""The jit-compiled steps: train, evaluate, predict.

Synopsis::

  steps = steps_lib.Steps(exp, mesh, steps_per_epoch)
  state, metrics = steps.train(state, batch)   # global batch, sharded
  sums = steps.eval(state, batch)              # sums over its real examples
  out = steps.predict(state, images)

One jit-compiled step runs over a device mesh: the batch is sharded over every
device of every process, parameters are replicated, and XLA inserts the
gradient all-reduce. Routing is per example, so no hand-written collectives
are needed.
"""

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from capsnet_jax import experiment
from capsnet_jax.data import augment
from capsnet_jax.model import conv
from capsnet_jax.model import models
from capsnet_jax.model import precision
from capsnet_jax.training import losses
from capsnet_jax.training import mesh as mesh_lib
from capsnet_jax.training import schedules
from capsnet_jax.training.state import TrainState, model_variables


def train_step(state: TrainState, batch: dict[str, jax.Array], *,
               model: models.CapsNet, preprocess: Callable, target: Callable,
               alpha: float | Callable, seed: int, nan_step: int = -1,
               margin_scale: float = 1.0, reconstruction_loss: str = "l2",
               margin_reduction: str = "sum") -> tuple[TrainState, dict]:
  """One optimisation step on a global batch.

  Args:
    state: replicated TrainState.
    batch: image [B, h, w, c] uint8 as stored, label [B] int32; or, for
      several objects per image (MultiMNIST), label [B, T] and targets
      [B, T, H, W, C] uint8, each object's own image.
    model, preprocess, seed, reconstruction_loss: static.
    margin_reduction: the margin term of the objective
      (losses.margin_objective); the reported margin loss is always the
      paper's sum.
    alpha: the reconstruction weight, or step -> weight
      (losses.alpha_schedule), evaluated here at state.step.
    target: images -> what the decoder reconstructs (datasets.Spec.target).
    nan_step: fault injection for tests: the loss is NaN at this step.

  Returns:
    The new state (the old one, unchanged, if the loss or a gradient is not
    finite) and scalar metrics.
  """
  rng = jax.random.fold_in(jax.random.key(seed), state.step)
  images = preprocess(batch["image"], rng)
  labels = batch["label"]
  alpha = alpha(state.step) if callable(alpha) else alpha

  def loss_fn(params):
    out, updates = model.apply(model_variables(state, params), images, labels,
                               train=True, mutable=["batch_stats"],
                               **_decoder_kwargs(labels))
    margin = losses.margin_loss(out["lengths"], labels,
                                orphan_lengths=out.get("orphan_lengths"))
    objective = margin if margin_reduction == "sum" else \
        losses.margin_objective(out["lengths"], labels, margin_reduction,
                                out.get("orphan_lengths"))
    rec, _ = _reconstruction_loss(out, images, batch, target,
                                  reconstruction_loss, train=True)
    loss = jnp.mean(margin_scale * objective + alpha * rec)
    if nan_step >= 0:
      loss = loss * jnp.where(state.step == nan_step, jnp.nan, 1.0)
    return loss, (out, updates, margin, rec)

  (loss, (out, updates, margin, rec)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(
      grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats))
  finite = jnp.isfinite(loss) & jnp.all(jnp.stack(
      [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
  # A non-finite step leaves the state untouched, so the last good
  # parameters survive until the loop stops and reports the step.
  new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state,
                           state)
  metrics = dict(
      loss=loss, margin_loss=jnp.mean(margin),
      reconstruction_loss=jnp.mean(rec),
      accuracy=jnp.mean(_correct(out, labels)),
      finite=finite, step=state.step, alpha=jnp.asarray(alpha, jnp.float32))
  return new_state, metrics


def eval_step(state: TrainState, batch: dict[str, jax.Array], *,
              model: models.CapsNet, preprocess: Callable, target: Callable,
              alpha: float | Callable, reconstruction_loss: str = "l2"
              ) -> dict[str, jax.Array]:
  """Sums of test metrics over the real (mask = 1) examples of a batch.

  batch: image [B, h, w, c], label [B], mask [B] (0 for padding); for
  several objects per image, label [B, T] and targets (see train_step).
  alpha: a weight or step -> weight, evaluated at state.step.
  With an L1 reconstruction loss, reconstruction_sse sums the SSE too; with
  one label per image, reconstruction_sse_true_label sums the SSE of the
  true label's reconstruction (the authors' test-time measure).
  """
  images = preprocess(batch["image"], jax.random.key(0))
  labels, mask = batch["label"], batch["mask"]
  alpha = alpha(state.step) if callable(alpha) else alpha
  out = model.apply(model_variables(state), images, train=False,
                    **_decoder_kwargs(labels))
  margin = losses.margin_loss(out["lengths"], labels,
                              orphan_lengths=out.get("orphan_lengths"))
  rec, sse = _reconstruction_loss(out, images, batch, target,
                                  reconstruction_loss, mask=mask)
  sums = dict(
      count=jnp.sum(mask),
      correct=jnp.sum(mask * _correct(out, labels)),
      reconstruction_std=jnp.sum(mask * reconstruction_spread(
          out["reconstructions"])),
      margin_loss=jnp.sum(mask * margin),
      reconstruction_loss=jnp.sum(mask * rec),
      loss=jnp.sum(mask * (margin + alpha * rec)))
  if reconstruction_loss != "l2":
    sums["reconstruction_sse"] = jnp.sum(mask * sse)
  if labels.ndim == 1:
    # The authors' test-time SSE: the decoder sees the TRUE label's capsule
    # (their capsule_model.py masks by the labels at evaluation too); ours
    # above masks by the prediction, as the reference does. They differ only
    # on misclassified images.
    recon = model.apply(model_variables(state), out["class_caps"], labels,
                        method="decode")
    sums["reconstruction_sse_true_label"] = jnp.sum(
        mask * losses.reconstruction_sse(recon, target(images, mask)))
  if labels.ndim == 2:
    sums["partly_correct"] = jnp.sum(
        mask * losses.top_k_partly_correct(out["lengths"], labels))
  return sums


def reconstruction_spread(reconstructions: jax.Array) -> jax.Array:
  """[B]: the standard deviation over each reconstruction's pixels (averaged
  over the objects of [B, T, H, W, C]). A decoder that outputs one constant
  image has 0; MNIST digits have about 0.3."""
  std = jnp.std(reconstructions.astype(jnp.float32), axis=(-3, -2, -1))
  return std.reshape(std.shape[0], -1).mean(axis=1)


# A decoder whose test reconstructions spread less than this over their
# pixels (mean per-image std) is reported as collapsed. The collapsed deconv
# decoders of docs/results.md spread 0.011-0.014 (near-black images, test
# SSE 89.45-89.51); every learning decoder there 0.108 or more from its
# first evaluation (step 50).
COLLAPSED_STD = 0.05


# Several objects per image (MultiMNIST; datasets.Spec.num_targets > 1): the
# batch's label is [B, T] and the decoder reconstructs each object from its
# own capsule (models.decode_each). These keep the single-label path as is.


def _decoder_kwargs(labels: jax.Array) -> dict[str, Any]:
  """model.apply's extra arguments: decode every object's capsule (the
  labels' in training, the T longest at evaluation) for labels [B, T]."""
  if labels.ndim == 2:
    return dict(method=models.decode_each, num_targets=labels.shape[1])
  return {}


def _reconstruction_loss(out: dict, images: jax.Array, batch: dict,
                         target: Callable, kind: str,
                         mask: jax.Array | None = None, train: bool = False
                         ) -> tuple[jax.Array, jax.Array]:
  """([B] reconstruction loss of ``kind``, [B] per-image SSE) against
  target(images). For several objects (SSE only; validation refuses l1), the
  sum over the objects of the SSE against each one's image, paired by label
  in training and, at evaluation (capsules chosen by length), the better of
  the two pairings."""
  if batch["label"].ndim == 1:
    recon, tgt = out["reconstructions"], target(images, mask)
    sse = losses.reconstruction_sse(recon, tgt)
    if kind == "l2":
      return sse, sse
    return losses.reconstruction_loss(recon, tgt, kind), sse
  targets = augment.to_float(batch["targets"])
  if train:
    sse = losses.targets_sse(out["reconstructions"], targets)
  else:
    sse = losses.matched_targets_sse(out["reconstructions"], targets)
  return sse, sse


def _correct(out: dict, labels: jax.Array) -> jax.Array:
  """[B]: the longest capsule is the label; for labels [B, T], the T
  longest are exactly the labels (the paper's MultiMNIST rule)."""
  if labels.ndim == 2:
    return losses.top_k_correct(out["lengths"], labels)
  return out["predictions"] == labels


# The baseline CNNs (models.has_capsules is False): softmax cross-entropy,
# no margin, no decoder, no reconstruction weight. The same batches, the same
# augmentation (preprocess at the step's rng) and the same non-finite guard.

# Folded into a step's rng for the CNN's dropout mask: a stream apart from
# the augmentation's draws (which fold in small integers).
_DROPOUT_STREAM = 0x64726f70


def classifier_train_step(state: TrainState, batch: dict[str, jax.Array], *,
                          model, preprocess: Callable, seed: int,
                          nan_step: int = -1) -> tuple[TrainState, dict]:
  """train_step for a baseline CNN: one Adam step on the mean softmax
  cross-entropy of a global batch (image [B, h, w, c] uint8, label [B]).

  Returns:
    The new state (the old one if the loss or a gradient is not finite) and
    scalar metrics: loss (the cross-entropy), accuracy, finite, step.
  """
  rng = jax.random.fold_in(jax.random.key(seed), state.step)
  images = preprocess(batch["image"], rng)
  labels = batch["label"]
  dropout = jax.random.fold_in(rng, _DROPOUT_STREAM)

  def loss_fn(params):
    out = model.apply(model_variables(state, params), images, train=True,
                      rngs={"dropout": dropout})
    loss = jnp.mean(losses.cross_entropy(out["logits"], labels))
    if nan_step >= 0:
      loss = loss * jnp.where(state.step == nan_step, jnp.nan, 1.0)
    return loss, out

  (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads)
  finite = jnp.isfinite(loss) & jnp.all(jnp.stack(
      [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
  new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state,
                           state)
  metrics = dict(loss=loss, accuracy=jnp.mean(out["predictions"] == labels),
                 finite=finite, step=state.step)
  return new_state, metrics


def classifier_eval_step(state: TrainState, batch: dict[str, jax.Array], *,
                         model, preprocess: Callable) -> dict[str, jax.Array]:
  """eval_step for a baseline CNN: sums of count, correct and loss (the
  cross-entropy) over the real (mask = 1) examples of a batch."""
  images = preprocess(batch["image"], jax.random.key(0))
  labels, mask = batch["label"], batch["mask"]
  out = model.apply(model_variables(state), images, train=False)
  return dict(count=jnp.sum(mask),
              correct=jnp.sum(mask * (out["predictions"] == labels)),
              loss=jnp.sum(mask * losses.cross_entropy(out["logits"], labels)))


def predict_step(state: TrainState, images: jax.Array, *,
                 model: models.CapsNet) -> dict[str, jax.Array]:
  """Model outputs (decoder masked by the prediction) for float images."""
  return model.apply(model_variables(state), images, train=False)


class Steps:
  """The jit-compiled steps of one experiment over one mesh.

  steps_per_epoch: of the training data, for config.alpha_schedule (None:
  from the dataset's nominal size).
  """

  def __init__(self, exp: experiment.Experiment, mesh,
               steps_per_epoch: int | None = None):
    config, spec, model = exp.config, exp.spec, exp.model
    self.mesh = mesh
    # float32 means float32 on GPUs too (not TF32): set before any tracing.
    self.compute_dtype = precision.use_compute_dtype(exp.compute_dtype)
    self.replicated = mesh_lib.replicated(mesh)
    self.sharded = mesh_lib.batch_sharded(mesh)
    self.preprocess_train = spec.preprocess(train=True)
    self.preprocess_eval = spec.preprocess(train=False)
    target = spec.target
    if steps_per_epoch is None:
      steps_per_epoch = max(spec.info.num_train // config.batch_size, 1)
    # The weight of optimisation step s, computed in the compiled steps from
    # the state's step: exact on resume, no recompilation when it changes.
    self.alpha = schedules.alpha(exp, steps_per_epoch)
    recon_kind = config.get("reconstruction_loss", "l2")
    # Whether the model has capsules and a decoder; a baseline CNN has
    # neither (no margin or reconstruction metrics, no reconstructions).
    self.capsules = exp.capsules
    inference_model = model.clone(conv_impl=conv.inference_impl(model.conv_impl))
    if not self.capsules:
      self._compile_classifier(exp, model, inference_model)
      return
    self.train = jax.jit(
        functools.partial(train_step, model=model,
                          preprocess=self.preprocess_train, target=target,
                          alpha=self.alpha,
                          margin_scale=config.get("margin_loss_scale", 1.0),
                          seed=config.seed,
                          nan_step=config.get("inject_nan_at_step", -1),
                          reconstruction_loss=recon_kind,
                          margin_reduction=exp.margin_reduction),
        in_shardings=(self.replicated, self.sharded),
        out_shardings=(self.replicated, self.replicated),
        donate_argnums=0)
    # Forward-only passes may use a faster convolution formulation.
    self.eval = jax.jit(
        functools.partial(eval_step, model=inference_model,
                          preprocess=self.preprocess_eval, target=target,
                          alpha=self.eval_alpha,
                          reconstruction_loss=recon_kind),
        in_shardings=(self.replicated, self.sharded),
        out_shardings=self.replicated)
    self.predict = jax.jit(functools.partial(predict_step, model=inference_model),
                           out_shardings=self.replicated)

  def _compile_classifier(self, exp: experiment.Experiment, model,
                          inference_model) -> None:
    """The steps of a baseline CNN (classifier_train_step, ...)."""
    config = exp.config
    self.train = jax.jit(
        functools.partial(classifier_train_step, model=model,
                          preprocess=self.preprocess_train, seed=config.seed,
                          nan_step=config.get("inject_nan_at_step", -1)),
        in_shardings=(self.replicated, self.sharded),
        out_shardings=(self.replicated, self.replicated),
        donate_argnums=0)
    self.eval = jax.jit(
        functools.partial(classifier_eval_step, model=inference_model,
                          preprocess=self.preprocess_eval),
        in_shardings=(self.replicated, self.sharded),
        out_shardings=self.replicated)
    self.predict = jax.jit(functools.partial(predict_step, model=inference_model),
                           out_shardings=self.replicated)

  def eval_alpha(self, step):
    """The weight that an evaluation after ``step`` steps uses (and records):
    that of the last step trained, as the reference's test loss uses its
    epoch's alpha."""
    return self.alpha(jnp.maximum(step - 1, 0))
