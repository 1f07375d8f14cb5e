"""Training and evaluation: state, steps, schedule and the loop.

Synopsis::

  from configs import mnist
  results = train.train_and_evaluate(mnist.get_config(), "/tmp/capsnet")

One jit-compiled step runs over a device mesh: the batch is sharded over every
device of every process, parameters are replicated, and XLA inserts the
gradient all-reduce. Routing is per example, so no hand-written collectives
are needed. Data order and augmentation depend only on (seed, step), so a
resumed run continues exactly where an uninterrupted one would be.
"""

import functools
import json
import os
import signal
import time
from typing import Any, Callable

from absl import logging
from flax.training import train_state
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import optax

from capsnet_jax import augment
from capsnet_jax import checkpoints
from capsnet_jax import conv
from capsnet_jax import datasets
from capsnet_jax import history
from capsnet_jax import input_pipeline
from capsnet_jax import losses
from capsnet_jax import mesh as mesh_lib
from capsnet_jax import metric_logging
from capsnet_jax import models
from capsnet_jax import recipes
from capsnet_jax import validation
from capsnet_jax import workdirs
from capsnet_jax.errors import ConfigError, NonFiniteLossError, WorkdirError

# The mesh helpers live in capsnet_jax.mesh; these names stay for callers.
DATA_AXIS = mesh_lib.DATA_AXIS
make_mesh = mesh_lib.make_mesh
replicated = mesh_lib.replicated
batch_sharded = mesh_lib.batch_sharded
global_batch = mesh_lib.global_batch


class TrainState(train_state.TrainState):
  """Parameters, optimiser state, step and batch-norm statistics."""
  batch_stats: Any = None


# --------------------------------------------------------------------------
# State and optimiser.


def learning_rate_schedule(config) -> optax.Schedule:
  """config.lr_schedule ("auto": the data setup's, see capsnet_jax.datasets).

  exponential: learning_rate * lr_decay_rate ** (step / lr_decay_steps), as
  the authors' tf.train.exponential_decay; staircase: the exponent rounded
  down; constant (also when lr_decay_steps is 0 or the rate 1). Decayed
  rates stop at lr_min (0: no floor; < 0: the setup's, capsnet_jax.recipes).
  """
  kind = datasets.resolve(config, "lr_schedule")
  if (kind == "constant" or config.lr_decay_steps <= 0 or
      config.lr_decay_rate == 1.0):
    return optax.constant_schedule(config.learning_rate)
  return optax.exponential_decay(config.learning_rate, config.lr_decay_steps,
                                 config.lr_decay_rate,
                                 staircase=kind == "staircase",
                                 end_value=recipes.resolve(config, "lr_min") or None)


def create_train_state(config, model: models.CapsNet, rng: jax.Array,
                       mesh=None) -> TrainState:
  """Initialised state, replicated over ``mesh`` when given."""
  h, w, c = model.image_shape
  tx = optax.adam(learning_rate_schedule(config))

  def init():
    variables = model.init({"params": rng}, jnp.zeros((1, h, w, c)),
                           train=False)
    return TrainState.create(apply_fn=model.apply, params=variables["params"],
                             tx=tx, batch_stats=variables.get("batch_stats", {}))

  if mesh is None:
    return jax.jit(init)()
  return jax.jit(init, out_shardings=replicated(mesh))()


def model_variables(state: TrainState, params=None) -> dict[str, Any]:
  variables = {"params": state.params if params is None else params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  return variables


# --------------------------------------------------------------------------
# Steps.


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
  With an L1 reconstruction loss, reconstruction_sse sums the SSE too.
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
# pixels (mean per-image std) is reported as collapsed.
COLLAPSED_STD = 0.01


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


def predict_step(state: TrainState, images: jax.Array, *,
                 model: models.CapsNet) -> dict[str, jax.Array]:
  """Model outputs (decoder masked by the prediction) for float images."""
  return model.apply(model_variables(state), images, train=False)


class Steps:
  """The jit-compiled steps of one model and dataset over one mesh.

  steps_per_epoch: of the training data, for config.alpha_schedule (None:
  from the dataset's nominal size).
  """

  def __init__(self, config, model: models.CapsNet, mesh,
               steps_per_epoch: int | None = None):
    self.mesh = mesh
    # float32 means float32 on GPUs too (not TF32): set before any tracing.
    self.compute_dtype = models.use_compute_dtype(
        config.get("compute_dtype", "float32"))
    self.replicated = replicated(mesh)
    self.sharded = batch_sharded(mesh)
    spec = datasets.get(config.dataset, config.data_setup)
    self.preprocess_train = augment.make_preprocess_fn(
        config.dataset, config.data_setup, True)
    self.preprocess_eval = augment.make_preprocess_fn(
        config.dataset, config.data_setup, False)
    target = spec.target
    if steps_per_epoch is None:
      steps_per_epoch = input_pipeline.steps_per_epoch(
          spec.info.num_train, config.batch_size)
    # The weight of optimisation step s, computed in the compiled steps from
    # the state's step: exact on resume, no recompilation when it changes.
    self.alpha = losses.alpha_schedule(config, steps_per_epoch)
    recon_kind = config.get("reconstruction_loss", "l2")
    self.train = jax.jit(
        functools.partial(train_step, model=model,
                          preprocess=self.preprocess_train, target=target,
                          alpha=self.alpha,
                          margin_scale=config.get("margin_loss_scale", 1.0),
                          seed=config.seed,
                          nan_step=config.get("inject_nan_at_step", -1),
                          reconstruction_loss=recon_kind,
                          margin_reduction=recipes.resolve(
                              config, "margin_reduction")),
        in_shardings=(self.replicated, self.sharded),
        out_shardings=(self.replicated, self.replicated),
        donate_argnums=0)
    # Forward-only passes may use a faster convolution formulation.
    inference_model = model.clone(conv_impl=conv.inference_impl(model.conv_impl))
    self.eval = jax.jit(
        functools.partial(eval_step, model=inference_model,
                          preprocess=self.preprocess_eval, target=target,
                          alpha=self.eval_alpha,
                          reconstruction_loss=recon_kind),
        in_shardings=(self.replicated, self.sharded),
        out_shardings=self.replicated)
    self.predict = jax.jit(functools.partial(predict_step, model=inference_model),
                           out_shardings=self.replicated)

  def eval_alpha(self, step):
    """The weight that an evaluation after ``step`` steps uses (and records):
    that of the last step trained, as the reference's test loss uses its
    epoch's alpha."""
    return self.alpha(jnp.maximum(step - 1, 0))


# --------------------------------------------------------------------------
# Evaluation.


def evaluate(steps: Steps, state: TrainState, test: input_pipeline.Split,
             local_batch_size: int, num_test: int) -> dict[str, float]:
  """Metrics over every test example exactly once (all processes together).

  Returns:
    accuracy, margin_loss, reconstruction_loss (per-image SSE, or SAE with
    reconstruction_loss=l1, then also reconstruction_sse), loss (margin +
    alpha * reconstruction loss) and reconstruction_std (the spread of each
    reconstruction's pixels, see reconstruction_spread), each a mean over
    the test set;
    with several objects per image, partial_accuracy (at least one label
    among the longest capsules) too.
  """
  per_process = -(-num_test // jax.process_count())
  num_batches = input_pipeline.num_eval_batches(per_process, local_batch_size)
  totals = None
  for batch in input_pipeline.eval_batches(test, local_batch_size, num_batches):
    sums = steps.eval(state, global_batch(batch, steps.sharded))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = float(totals["count"])
  metrics = dict(
      accuracy=float(totals["correct"]) / count,
      margin_loss=float(totals["margin_loss"]) / count,
      reconstruction_loss=float(totals["reconstruction_loss"]) / count,
      loss=float(totals["loss"]) / count,
      reconstruction_std=float(totals["reconstruction_std"]) / count,
      count=count)
  if "reconstruction_sse" in totals:
    metrics["reconstruction_sse"] = float(totals["reconstruction_sse"]) / count
  if "partly_correct" in totals:
    metrics["partial_accuracy"] = float(totals["partly_correct"]) / count
  return metrics


def reconstruction_grid(steps: Steps, state: TrainState,
                        test: input_pipeline.Split, n: int) -> np.ndarray:
  """[1, H, 2W, C] image: n test inputs (left) beside reconstructions (right).

  Uses this process's first test images; every process calls it (the model
  runs replicated) but only process 0 writes the result.
  """
  raw = test.images[:n]
  if jax.process_count() > 1:  # The replicated input must agree everywhere.
    raw = multihost_utils.broadcast_one_to_all(raw)
  images = steps.preprocess_eval(jax.device_put(raw, steps.replicated),
                                 jax.random.key(0))
  recon = steps.predict(state, images)["reconstructions"]
  images, recon = np.asarray(images), np.asarray(recon)
  lo, hi = images.min(), images.max()
  images = (images - lo) / max(hi - lo, 1e-6)  # standardised inputs -> [0, 1]
  rows = np.concatenate([images, recon], axis=2)  # [n, H, 2W, C]
  grid = np.concatenate(list(rows), axis=0)[None]  # [1, n*H, 2W, C]
  return np.clip(grid, 0, 1)


# --------------------------------------------------------------------------
# The loop.


class _Preemption:
  """Turns SIGTERM/SIGINT into a flag that the loop polls."""

  def __init__(self):
    self.signal = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread: leave signals alone.
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    self.signal = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _any_process(flag: bool) -> bool:
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.array(flag))))


def num_train_steps(config, steps_per_epoch: int) -> int:
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  return int(config.num_epochs * steps_per_epoch)


def setup_model_and_state(config, info: input_pipeline.DatasetInfo, mesh):
  model = models.create_model(config, image_shape=info.image_shape,
                              num_classes=info.num_classes)
  rng = jax.random.key(config.seed)
  state = create_train_state(config, model, rng, mesh)
  return model, state


def count_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def _metrics_record(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
  return {f"{prefix}_{k}": v for k, v in metrics.items() if k != "count"}


class _Clock:
  """Wall time of the sessions that produced a run's evaluations.

  wall_seconds: since the run began, summed over its sessions (each from its
  start, compilation included, to the evaluation), idle time between
  sessions excluded; continues from the history's last record on resume.
  train_seconds: training time since the previous evaluation (or since this
  session started), evaluation excluded.
  """

  def __init__(self, previous_wall_seconds: float, start: float | None = None,
               now=time.monotonic):
    self._now = now
    self._start = now() if start is None else start
    self._base = previous_wall_seconds
    self._train_start = self._start

  def wall_seconds(self) -> float:
    return self._base + self._now() - self._start

  def train_seconds(self) -> float:
    return self._now() - self._train_start

  def restart_training(self) -> None:
    self._train_start = self._now()


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Trains, evaluates and checkpoints; resumes from ``workdir`` if it can.

  Every evaluation appends a line to WORKDIR/eval_history.jsonl
  (capsnet_jax.history); results.json's best_test_accuracy is the maximum
  over that history, whatever stops and resumes happened.

  Returns:
    The contents of WORKDIR/results.json: step, epoch, test_accuracy,
    test_margin_loss, test_reconstruction_loss (per-image SSE), num_params,
    best_test_accuracy, best_step and timing.
  """
  # Every check of the user's input runs before anything is written.
  validation.validate_config(config, "train", jax.device_count())
  workdirs.check_compatible(workdir, config)
  splits = input_pipeline.load_splits(config)
  train_split, test_split, info = splits.train, splits.test, splits.info
  if config.batch_size > info.num_train:
    raise ConfigError(f"batch_size={config.batch_size} is larger than the "
                      f"{info.num_train} training examples")
  workdirs.prepare(workdir, config)
  clock_start = time.monotonic()
  mesh = make_mesh()
  local_batch = config.batch_size // jax.process_count()
  eval_batch = (config.eval_batch_size or config.batch_size) // jax.process_count()
  steps_per_epoch = input_pipeline.steps_per_epoch(info.num_train,
                                                   config.batch_size)
  total_steps = num_train_steps(config, steps_per_epoch)
  eval_every = config.eval_every_steps or steps_per_epoch
  ckpt_every = config.checkpoint_every_steps or eval_every

  model, state = setup_model_and_state(config, info, mesh)
  num_params = count_params(state.params)
  ckpt = checkpoints.Checkpointer(workdir, keep=config.keep_checkpoints)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(state)
    logging.info("Resumed from the checkpoint at step %d", int(state.step))
  start = int(state.step)

  lead = jax.process_index() == 0
  if lead:  # Evaluations after the restored step are redone below.
    history.truncate_after(workdir, start)
  previous = history.last(history.read(workdir))
  clock = _Clock(previous["wall_seconds"] if previous else 0.0, clock_start)
  writer = metric_logging.create_writer(workdir, lead)
  if start == 0:
    writer.write_hparams({k: v for k, v in config.to_dict().items()
                          if isinstance(v, (int, float, str, bool))})
  logging.info("%s: %d train / %d validation / %d test examples, %d steps per "
               "epoch, %d steps in all, %d parameters, %d devices, %d processes",
               info.name, info.num_train, info.num_validation, info.num_test,
               steps_per_epoch, total_steps, num_params, jax.device_count(),
               jax.process_count())

  steps = Steps(config, model, mesh, steps_per_epoch)
  schedule = learning_rate_schedule(config)

  def evaluate_all(state, step):
    """Test (and validation) metrics of ``state``, logged and recorded."""
    train_seconds = clock.train_seconds()
    metrics = evaluate(steps, state, test_split, eval_batch, info.num_test)
    record = dict(step=step, epoch=round(step / steps_per_epoch, 4),
                  **_metrics_record("test", metrics))
    if splits.validation is not None:
      record.update(_metrics_record("validation", evaluate(
          steps, state, splits.validation, eval_batch, info.num_validation)))
    record.update(learning_rate=float(schedule(step)),
                  alpha=float(steps.eval_alpha(step)),
                  wall_seconds=round(clock.wall_seconds(), 2),
                  train_seconds=round(train_seconds, 2),
                  time=round(time.time(), 2), source="train")
    if lead:
      history.append(workdir, record)
    writer.write_scalars(step, {k: v for k, v in record.items()
                                if k.startswith(("test_", "validation_"))})
    logging.info("step %d (epoch %.2f): test accuracy %.4f, margin loss %.5f, "
                 "reconstruction loss %.3f", step, record["epoch"],
                 metrics["accuracy"], metrics["margin_loss"],
                 metrics["reconstruction_loss"])
    warn_if_collapsed(metrics, step)
    clock.restart_training()
    return metrics

  report = metric_logging.create_progress(total_steps, writer, every_secs=30)
  hooks = [report] if lead else []
  batches = input_pipeline.train_batches(train_split, local_batch, config.seed,
                                         start, jax.process_index(),
                                         steps_per_epoch)
  pending, data_wait, last_eval = [], 0.0, None
  t0 = time.time()
  step = start
  preempted = None
  try:
    with _Preemption() as preemption:
      while step < total_steps:
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
          t = time.perf_counter()
          batch = global_batch(next(batches), steps.sharded)
          data_wait += time.perf_counter() - t
          state, metrics = steps.train(state, batch)
        pending.append(metrics)
        step += 1
        for hook in hooks:
          hook(step)
        last = step == total_steps
        if step % config.log_every_steps == 0 or last:
          _log_train(writer, step, pending, schedule, data_wait)
          pending, data_wait = [], 0.0
        evaluated_now = step % eval_every == 0 or last
        if evaluated_now:
          _check_finite(pending, step)  # Never record a bad step.
          with report.timed("eval"):
            last_eval = evaluate_all(state, step)
          writer.write_images(step, {"reconstructions": reconstruction_grid(
              steps, state, test_split, config.num_summary_images)})
        if step % ckpt_every == 0 or last:
          _check_finite(pending, step)  # Never checkpoint after a bad step.
          ckpt.save(step, state, {"test_accuracy": last_eval["accuracy"]}
                    if evaluated_now else None)
        poll = jax.process_count() == 1 or step % config.log_every_steps == 0
        if poll and _any_process(preemption.signal is not None) and not last:
          _check_finite(pending, step)
          if ckpt.latest_step() != step:
            ckpt.save(step, state, None)
          preempted = preemption.signal or "a signal on another process"
          break
  finally:  # Also on errors: finish the pending checkpoint writes.
    ckpt.close()
    writer.flush()
  if preempted:
    logging.warning("Received %s: saved a checkpoint at step %d; rerun the "
                    "same command to resume.", preempted, step)
    return {"step": step, "preempted": True}
  records = history.read(workdir) if lead else []
  if last_eval is None:  # Nothing left to train: evaluate what was restored.
    done = [r for r in history.training_records(records)
            if int(r["step"]) == step]
    if done:
      last_eval = {k[len("test_"):]: v for k, v in done[-1].items()
                   if k.startswith("test_")}
    else:
      last_eval = evaluate_all(state, step)
      records = history.read(workdir) if lead else []
  results = dict(
      step=int(state.step),
      epoch=round(int(state.step) / steps_per_epoch, 4),
      test_accuracy=last_eval["accuracy"],
      test_margin_loss=last_eval["margin_loss"],
      test_reconstruction_loss=last_eval["reconstruction_loss"],
      test_loss=last_eval["loss"],
      num_params=num_params,
      dataset=info.name,
      num_train=info.num_train,
      num_validation=info.num_validation,
      train_seconds_this_run=time.time() - t0,
      devices=jax.device_count(),
      processes=jax.process_count())
  if "partial_accuracy" in last_eval:  # several objects per image
    results["test_partial_accuracy"] = last_eval["partial_accuracy"]
  if lead:
    results.update(_best_of(records))
    workdirs.write_results(workdir, results)
  return results


def warn_if_collapsed(metrics: dict[str, float], step: int) -> bool:
  """Logs a warning when the test reconstructions are one constant image
  (metrics["reconstruction_std"] < COLLAPSED_STD); TensorBoard has the
  spread as test/reconstruction_std. Returns whether they are."""
  spread = metrics.get("reconstruction_std")
  if spread is None or spread >= COLLAPSED_STD:
    return False
  logging.warning(
      "step %d: the reconstructions have collapsed to a constant image "
      "(pixel std %.2g < %.2g): the decoder is not learning, and the "
      "reconstruction loss (%.3f) is that of a constant output.", step,
      spread, COLLAPSED_STD, metrics["reconstruction_loss"])
  return True


def _best_of(records: list[dict]) -> dict[str, Any]:
  """best_test_accuracy / best_step (and wall time to it) over the history."""
  acc, step = history.best(records)
  out = dict(best_test_accuracy=acc, best_step=step,
             num_evaluations=len(history.training_records(records)))
  last = history.last(records)
  if last is not None:
    out["wall_seconds"] = last.get("wall_seconds")
  return out


def _check_finite(pending: list[dict], step: int) -> list[dict]:
  """Fetches step metrics and raises NonFiniteLossError on the first bad one."""
  fetched = jax.device_get(pending)
  for m in fetched:
    if not bool(m["finite"]):
      raise NonFiniteLossError(
          f"non-finite loss ({float(m['loss'])}) at step {int(m['step'])}; "
          "training stopped and the last checkpoint was left intact. Lower "
          "--config.learning_rate or check the data.")
  return fetched


def _log_train(writer, step: int, pending: list[dict], schedule,
               data_wait: float) -> None:
  fetched = _check_finite(pending, step)
  if not fetched:
    return
  keys = ("loss", "margin_loss", "reconstruction_loss", "accuracy")
  scalars = {f"train_{k}": float(np.mean([m[k] for m in fetched])) for k in keys}
  scalars["learning_rate"] = float(schedule(step))
  scalars["alpha"] = float(fetched[-1]["alpha"])  # of the last step
  scalars["data_wait_seconds_per_step"] = data_wait / len(fetched)
  writer.write_scalars(step, scalars)


def evaluate_checkpoint(config, workdir: str) -> dict[str, Any]:
  """--mode=eval: evaluates the latest checkpoint, appends the evaluation to
  WORKDIR/eval_history.jsonl (source "eval") and updates results.json."""
  validation.validate_config(config, "eval", jax.device_count())
  workdirs.check_compatible(workdir, config)
  ckpt = checkpoints.Checkpointer(workdir, create=False) \
      if os.path.isdir(checkpoints.checkpoint_dir(workdir)) else None
  if ckpt is None or ckpt.latest_step() is None:
    raise WorkdirError(f"no checkpoint in {workdir!r}: train first with "
                       f"--mode=train --workdir={workdir}")
  mesh = make_mesh()
  splits = input_pipeline.load_splits(config)
  info = splits.info
  model, state = setup_model_and_state(config, info, mesh)
  state = ckpt.restore(state)
  ckpt.close()
  steps_per_epoch = input_pipeline.steps_per_epoch(info.num_train,
                                                   config.batch_size)
  steps = Steps(config, model, mesh, steps_per_epoch)
  eval_batch = (config.eval_batch_size or config.batch_size) // jax.process_count()
  t = time.monotonic()
  metrics = evaluate(steps, state, splits.test, eval_batch, info.num_test)
  step = int(state.step)
  warn_if_collapsed(metrics, step)
  record = dict(step=step, epoch=round(step / steps_per_epoch, 4),
                **_metrics_record("test", metrics))
  if splits.validation is not None:
    record.update(_metrics_record("validation", evaluate(
        steps, state, splits.validation, eval_batch, info.num_validation)))
  record.update(alpha=float(steps.eval_alpha(step)),
                eval_seconds=round(time.monotonic() - t, 2),
                time=round(time.time(), 2), source="eval")
  results = workdirs.read_results(workdir) or {}
  results.update(
      step=step, epoch=record["epoch"], test_accuracy=metrics["accuracy"],
      test_margin_loss=metrics["margin_loss"],
      test_reconstruction_loss=metrics["reconstruction_loss"],
      test_loss=metrics["loss"], num_params=count_params(state.params),
      dataset=info.name)
  if "partial_accuracy" in metrics:  # several objects per image
    results["test_partial_accuracy"] = metrics["partial_accuracy"]
  if jax.process_index() == 0:
    history.append(workdir, record)
    results.update(_best_of(history.read(workdir)))
    workdirs.write_results(workdir, results)
  logging.info("Evaluated step %d: %s", step, json.dumps(metrics))
  return results
