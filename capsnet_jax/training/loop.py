"""The training loop and --mode=eval.

Synopsis::

  from configs import mnist
  results = loop.train_and_evaluate(mnist.get_config(), "/tmp/capsnet")
  results = loop.evaluate_checkpoint(config, "/tmp/capsnet")

Both take a config or a resolved experiment.Experiment. Data order and
augmentation depend only on (seed, step), so a resumed run continues exactly
where an uninterrupted one would be. Every evaluation appends a line to
WORKDIR/eval_history.jsonl (capsnet_jax.workdir.history); results.json's
best_test_accuracy is the maximum over that history, whatever stops and
resumes happened.
"""

import contextlib
import os
import signal
import time
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from capsnet_jax import experiment
from capsnet_jax import processes
from capsnet_jax.data import input_pipeline
from capsnet_jax.errors import ConfigError, NonFiniteLossError, WorkdirError
from capsnet_jax.training import mesh as mesh_lib
from capsnet_jax.training import progress
from capsnet_jax.training import schedules
from capsnet_jax.training import state as state_lib
from capsnet_jax.training.state import TrainState
from capsnet_jax.training.steps import COLLAPSED_STD, Steps
from capsnet_jax.workdir import checkpoints
from capsnet_jax.workdir import history
from capsnet_jax.workdir import lock
from capsnet_jax.workdir import metric_logging
from capsnet_jax.workdir import record as record_lib


# --------------------------------------------------------------------------
# Evaluation.


def num_eval_batches(local_examples: int, local_batch_size: int) -> int:
  """The batches ``evaluate`` runs on each process: enough for the largest
  process's share (shares may differ by more than one: smallNORB's
  reference setup doubles each process's records)."""
  largest = local_examples
  if jax.process_count() > 1:
    largest = int(np.max(processes.process_allgather(
        np.array(local_examples), "the size of every process's evaluation "
        "share")))
  return input_pipeline.num_eval_batches(largest, local_batch_size)


def evaluate(steps: Steps, state: TrainState, test: input_pipeline.Split,
             local_batch_size: int,
             done: Callable[[int], None] | None = None, *,
             num_batches: int | None = None) -> dict[str, float]:
  """Metrics over every test example exactly once (all processes together).

  Args:
    steps, state: the compiled steps and the state evaluated.
    test: the split (this process's share).
    local_batch_size: this process's batch.
    done: called with the number of batches finished (a progress
      display); the batches are then waited for one behind the last one
      dispatched, so that the count follows the device.
    num_batches: num_eval_batches(len(test), local_batch_size), when the
      caller has it (every process runs this many).

  Returns:
    accuracy, margin_loss, reconstruction_loss (per-image SSE, or SAE with
    reconstruction_loss=l1, then also reconstruction_sse), loss (margin +
    alpha * reconstruction loss), reconstruction_std (the spread of each
    reconstruction's pixels, steps.reconstruction_spread) and, with one
    label per image, reconstruction_sse_true_label (the SSE when the
    decoder sees the true label's capsule, the authors' test-time measure),
    each a mean over the test set; with several objects per image, partial_accuracy (at least
    one label among the longest capsules) too. For a baseline CNN
    (steps.capsules False): accuracy and loss (the softmax cross-entropy)
    only.
  """
  if num_batches is None:
    num_batches = num_eval_batches(len(test), local_batch_size)
  totals = None
  batches = input_pipeline.eval_batches(test, local_batch_size, num_batches)
  for i, batch in enumerate(batches):
    sums = steps.eval(state, mesh_lib.global_batch(batch, steps.sharded))
    if done is not None and totals is not None:
      jax.block_until_ready(totals)
      done(i)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  if done is not None:
    done(num_batches)
  count = float(totals["count"])
  metrics = dict(accuracy=float(totals["correct"]) / count,
                 loss=float(totals["loss"]) / count, count=count)
  # What a capsule model's evaluation sums too (a baseline CNN has none).
  for key in ("margin_loss", "reconstruction_loss", "reconstruction_std",
              "reconstruction_sse", "reconstruction_sse_true_label"):
    if key in totals:
      metrics[key] = float(totals[key]) / count
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
    raw = processes.broadcast_one_to_all(raw, "the reconstruction grid's "
                                         "test images")
  images = steps.preprocess_eval(jax.device_put(raw, steps.replicated),
                                 jax.random.key(0))
  recon = steps.predict(state, images)["reconstructions"]
  images, recon = np.asarray(images), np.asarray(recon)
  lo, hi = images.min(), images.max()
  images = (images - lo) / max(hi - lo, 1e-6)  # standardised inputs -> [0, 1]
  rows = np.concatenate([images, recon], axis=2)  # [n, H, 2W, C]
  grid = np.concatenate(list(rows), axis=0)[None]  # [1, n*H, 2W, C]
  return np.clip(grid, 0, 1)


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
      "reconstruction loss (%.3f) is that of a constant output. A deconv "
      "decoder started at 0.5 collapses this way; "
      "--config.decoder_output_bias=data_mean starts it at the data's mean "
      "(docs/results.md, \"Deconvolution decoder\").", step,
      spread, COLLAPSED_STD, metrics["reconstruction_loss"])
  return True


class _Evaluator:
  """Evaluates a state on the test (and validation) split and builds the
  history record and results.json, the same way for training and for
  --mode=eval."""

  def __init__(self, exp: experiment.Experiment, steps: Steps,
               splits: input_pipeline.Splits, steps_per_epoch: int,
               num_params: int, records: list[dict[str, Any]] = (),
               display: progress.TrainProgress | None = None):
    self.exp, self.steps, self.splits = exp, steps, splits
    self.steps_per_epoch = steps_per_epoch
    self.num_params = num_params
    self.local_batch = exp.eval_batch_size // jax.process_count()
    # The best test accuracy so far (for the line of each evaluation).
    self.best = history.best(list(records))
    self.display = display

  def epoch(self, step: int) -> float:
    return round(step / self.steps_per_epoch, 4)

  def _evaluate(self, state: TrainState, step: int, name: str,
                split: input_pipeline.Split, num: int) -> dict[str, float]:
    """evaluate() under a progress display of its batches; warns where it
    did not see the split's ``num`` examples (over all processes)."""
    batches = num_eval_batches(len(split), self.local_batch)
    if self.display is not None:
      counting = self.display.evaluating(name, batches)
    else:
      counting = _counting(f"evaluating step {step} ({name})", batches)
    with counting as done:
      metrics = evaluate(self.steps, state, split, self.local_batch, done,
                         num_batches=batches)
    if int(metrics["count"]) != num:
      logging.warning("the %s evaluation at step %d saw %d examples of %d",
                      name, step, int(metrics["count"]), num)
    return metrics

  def run(self, state: TrainState, step: int
          ) -> tuple[dict[str, float], dict[str, Any]]:
    """(test metrics, the history record without its timing fields)."""
    info = self.splits.info
    t = time.monotonic()
    metrics = self._evaluate(state, step, "test", self.splits.test,
                             info.num_test)
    record = dict(step=step, epoch=self.epoch(step),
                  **_prefixed("test", metrics))
    if self.splits.validation is not None:
      record.update(_prefixed("validation", self._evaluate(
          state, step, "validation", self.splits.validation,
          info.num_validation)))
    if self.steps.capsules:  # a baseline CNN has no reconstruction weight
      record["alpha"] = float(self.steps.eval_alpha(step))
    seconds = time.monotonic() - t
    if self.display is not None:
      self.display.evaluation_done(seconds)
    best, best_step = self.best
    if best is None or metrics["accuracy"] > best:
      self.best = best, best_step = metrics["accuracy"], step
    logging.info("%s", evaluation_line(record, best, best_step, seconds))
    warn_if_collapsed(metrics, step)
    return metrics, record

  def results(self, step: int, metrics: dict[str, float],
              records: list[dict[str, Any]]) -> dict[str, Any]:
    """results.json: the evaluation ``metrics`` of ``step`` and the best of
    the history ``records``."""
    info = self.splits.info
    results = dict(
        step=step, epoch=self.epoch(step),
        test_accuracy=metrics["accuracy"],
        test_loss=metrics["loss"],
        num_params=self.num_params,
        dataset=info.name,
        num_train=info.num_train,
        num_validation=info.num_validation,
        compute_dtype=self.exp.compute_dtype,
        devices=jax.device_count(),
        processes=jax.process_count())
    for key in ("margin_loss", "reconstruction_loss"):  # capsule models
      if key in metrics:
        results[f"test_{key}"] = metrics[key]
    if "partial_accuracy" in metrics:  # several objects per image
      results["test_partial_accuracy"] = metrics["partial_accuracy"]
    results.update(_best_of(records))
    return results


@contextlib.contextmanager
def _counting(desc: str, total: int):
  """A progress display of ``total`` batches; yields its ``set(done)``."""
  with progress.Progress(desc, total, "batch", leave=False) as display:
    yield display.set


def evaluation_line(record: dict[str, Any], best: float, best_step: int,
                    seconds: float) -> str:
  """The terminal's line of one evaluation, in words: step, epoch, test
  accuracy and losses (validation accuracy with a validation split), the
  best test accuracy so far and the time it took."""
  step = record["step"]
  line = (f"step {step} (epoch {record['epoch']:.2f}): test accuracy "
          f"{100 * record['test_accuracy']:.2f}%")
  if best_step == step:
    line += " (the best so far)"
  else:
    line += f" (best so far {100 * best:.2f}% at step {best_step})"
  if "test_margin_loss" in record:
    line += (f", margin loss {record['test_margin_loss']:.5f}, "
             f"reconstruction loss {record['test_reconstruction_loss']:.3f}")
  else:  # a baseline CNN
    line += f", cross-entropy {record['test_loss']:.5f}"
  if "validation_accuracy" in record:
    line += f", validation accuracy {100 * record['validation_accuracy']:.2f}%"
  return line + f"; evaluated in {progress.duration(seconds)}"


def _prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
  return {f"{prefix}_{k}": v for k, v in metrics.items() if k != "count"}


def _best_of(records: list[dict]) -> dict[str, Any]:
  """best_test_accuracy / best_step (and wall time to it) over the history."""
  acc, step = history.best(records)
  out = dict(best_test_accuracy=acc, best_step=step,
             num_evaluations=len(history.training_records(records)))
  last = history.last(records)
  if last is not None and "wall_seconds" in last:
    out["wall_seconds"] = last["wall_seconds"]
  return out


# --------------------------------------------------------------------------
# The loop.


class _Preemption:
  """Turns SIGTERM/SIGINT into a flag that the loop polls; a second SIGINT
  (Ctrl-C pressed again) raises KeyboardInterrupt at once."""

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
    if signum == signal.SIGINT and self.signal is not None:
      raise KeyboardInterrupt
    self.signal = signal.Signals(signum).name
    if signum == signal.SIGINT:
      logging.warning("Ctrl-C: saving a checkpoint after this step (and any "
                      "evaluation under way); press Ctrl-C again to stop at "
                      "once without saving.")

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _any_process(flag: bool) -> bool:
  if jax.process_count() == 1:
    return flag
  return bool(np.any(processes.process_allgather(
      np.array(flag), "the check for a stop signal")))


def num_train_steps(config, steps_per_epoch: int) -> int:
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  return int(config.num_epochs * steps_per_epoch)


class Clock:
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


def _load_data(exp: experiment.Experiment) -> input_pipeline.Splits:
  splits = exp.load_splits()
  if exp.config.batch_size > splits.info.num_train:
    raise ConfigError(f"batch_size={exp.config.batch_size} is larger than the "
                      f"{splits.info.num_train} training examples")
  return splits


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Trains, evaluates and checkpoints; resumes from ``workdir`` if it can.

  Args:
    config: a config or an experiment.Experiment resolved for "train".
    workdir: the run's folder.

  Returns:
    The contents of WORKDIR/results.json: step, epoch, test_accuracy,
    test_margin_loss, test_reconstruction_loss (per-image SSE), num_params,
    best_test_accuracy, best_step and timing; {"step", "preempted": True}
    after a SIGTERM/SIGINT (a checkpoint is saved; rerun to resume).

  Raises:
    errors.WorkdirError: among others, at once when another run holds the
      workdir (capsnet_jax.workdir.lock), having changed nothing there.
  """
  exp = experiment.ensure(config, "train")
  # One run per workdir: the lock comes before anything is written, and a
  # history that resuming would lose is refused under it.
  with lock.hold(workdir, "training", check=history.check_resumable):
    return _train_and_evaluate(exp, workdir)


def _train_and_evaluate(exp: experiment.Experiment, workdir: str
                        ) -> dict[str, Any]:
  """train_and_evaluate, under the workdir's lock."""
  config = exp.config
  # Every check of the user's input runs before anything is written.
  record_lib.check_compatible(workdir, exp.identity())
  splits = _load_data(exp)
  train_split, test_split, info = splits.train, splits.test, splits.info
  record_lib.prepare(workdir, exp.identity(), exp.record())
  clock_start = time.monotonic()
  mesh = mesh_lib.make_mesh()
  local_batch = config.batch_size // jax.process_count()
  steps_per_epoch = input_pipeline.steps_per_epoch(info.num_train,
                                                   config.batch_size)
  total_steps = num_train_steps(config, steps_per_epoch)
  eval_every = config.eval_every_steps or steps_per_epoch
  ckpt_every = config.checkpoint_every_steps or eval_every

  steps = Steps(exp, mesh, steps_per_epoch)
  state = state_lib.create(exp, mesh)
  num_params = state_lib.count_params(state.params)
  ckpt = checkpoints.Checkpointer(workdir, keep=config.keep_checkpoints)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(state)
    logging.info("Resumed from the checkpoint at step %d", int(state.step))
  start = int(state.step)

  lead = jax.process_index() == 0
  if lead:  # Evaluations after the restored step are redone below.
    history.truncate_after(workdir, start)
  records = history.read(workdir)
  previous = history.last(records)
  clock = Clock(previous["wall_seconds"] if previous and
                "wall_seconds" in previous else 0.0, clock_start)
  writer = metric_logging.create_writer(workdir, lead)
  if start == 0:
    writer.write_hparams({k: v for k, v in exp.record().items()
                          if isinstance(v, (int, float, str, bool))})
  logging.info("%s: %d train / %d validation / %d test examples, %d steps per "
               "epoch, %d steps in all, %d parameters, %d devices, %d processes",
               info.name, info.num_train, info.num_validation, info.num_test,
               steps_per_epoch, total_steps, num_params, jax.device_count(),
               jax.process_count())

  # Process 0's live display (a bar on a terminal, else a line every
  # progress.PLAIN_EVERY_S); None when there is nothing left to train.
  display = progress.TrainProgress(
      total_steps, start, steps_per_epoch, config.batch_size, eval_every,
      enabled=lead) if start < total_steps else None
  evaluator = _Evaluator(exp, steps, splits, steps_per_epoch, num_params,
                         records, display)
  schedule = schedules.learning_rate(exp)

  def evaluate_all(state, step):
    """Test (and validation) metrics of ``state``, logged and recorded."""
    train_seconds = clock.train_seconds()
    metrics, record = evaluator.run(state, step)
    record.update(learning_rate=float(schedule(step)),
                  wall_seconds=round(clock.wall_seconds(), 2),
                  train_seconds=round(train_seconds, 2),
                  time=round(time.time(), 2), source="train")
    if lead:
      history.append(workdir, record)
    writer.write_scalars(step, metric_logging.scalars_of_record(record))
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
          batch = mesh_lib.global_batch(next(batches), steps.sharded)
          data_wait += time.perf_counter() - t
          state, metrics = steps.train(state, batch)
        pending.append(metrics)
        step += 1
        for hook in hooks:
          hook(step)
        if display is not None:
          display.step(step, metrics)
        last = step == total_steps
        if step % config.log_every_steps == 0 or last:
          _log_train(writer, step, pending, schedule, data_wait)
          pending, data_wait = [], 0.0
        evaluated_now = step % eval_every == 0 or last
        if evaluated_now:
          _check_finite(pending, step)  # Never record a bad step.
          with report.timed("eval"):
            last_eval = evaluate_all(state, step)
          if config.num_summary_images and steps.capsules:
            writer.write_images(step, {
                "test/reconstructions": reconstruction_grid(
                    steps, state, test_split, config.num_summary_images)})
        # A new best is saved too, whatever checkpoint_every_steps is, so
        # that the best checkpoint is kept.
        new_best = evaluated_now and evaluator.best[1] == step
        if step % ckpt_every == 0 or last or new_best:
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
    if display is not None:
      display.close()
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
  results = evaluator.results(int(state.step), last_eval, records)
  results["train_seconds_this_run"] = time.time() - t0
  if lead:
    record_lib.write_results(workdir, results)
  return results


def _check_finite(pending: list[dict], step: int) -> list[dict]:
  """Fetches step metrics and raises NonFiniteLossError on the first bad one."""
  fetched = jax.device_get(pending)
  for m in fetched:
    if not bool(m["finite"]):
      raise NonFiniteLossError(
          f"non-finite loss or gradient (loss {float(m['loss'])}) at step "
          f"{int(m['step'])}; "
          "training stopped and the last checkpoint was left intact. Lower "
          "--config.learning_rate or check the data.")
  return fetched


def _log_train(writer, step: int, pending: list[dict], schedule,
               data_wait: float) -> None:
  fetched = _check_finite(pending, step)
  if not fetched:
    return
  keys = ("loss", "margin_loss", "reconstruction_loss", "accuracy")
  scalars = {f"train/{k}": float(np.mean([m[k] for m in fetched]))
             for k in keys if k in fetched[0]}  # a CNN: loss, accuracy
  scalars["train/learning_rate"] = float(schedule(step))
  if "alpha" in fetched[0]:
    scalars["train/alpha"] = float(fetched[-1]["alpha"])  # of the last step
  scalars["train/data_wait_seconds_per_step"] = data_wait / len(fetched)
  writer.write_scalars(step, scalars)


def evaluate_checkpoint(config, workdir: str) -> dict[str, Any]:
  """--mode=eval: evaluates the latest checkpoint, appends the evaluation to
  WORKDIR/eval_history.jsonl (source "eval") and updates results.json.
  Holds the workdir's lock (refused at once when another run holds it)."""
  exp = experiment.ensure(config, "eval")
  if not os.path.isdir(workdir):
    raise WorkdirError(f"no checkpoint in {workdir!r}: train first with "
                       f"--mode=train --workdir={workdir}")
  with lock.hold(workdir, "--mode=eval", create=False):
    return _evaluate_checkpoint(exp, workdir)


def _evaluate_checkpoint(exp: experiment.Experiment, workdir: str
                         ) -> dict[str, Any]:
  """evaluate_checkpoint, under the workdir's lock."""
  record_lib.check_compatible(workdir, exp.identity())
  if checkpoints.latest_step(workdir) is None:
    raise WorkdirError(f"no checkpoint in {workdir!r}: train first with "
                       f"--mode=train --workdir={workdir}")
  mesh = mesh_lib.make_mesh()
  splits = exp.load_splits()
  info = splits.info
  ckpt = checkpoints.Checkpointer(workdir, create=False)
  try:
    state = ckpt.restore(state_lib.create(exp, mesh))
  finally:
    ckpt.close()
  steps_per_epoch = input_pipeline.steps_per_epoch(info.num_train,
                                                   exp.config.batch_size)
  steps = Steps(exp, mesh, steps_per_epoch)
  evaluator = _Evaluator(exp, steps, splits, steps_per_epoch,
                         state_lib.count_params(state.params),
                         history.read(workdir))
  t = time.monotonic()
  step = int(state.step)
  metrics, record = evaluator.run(state, step)
  record.update(eval_seconds=round(time.monotonic() - t, 2),
                time=round(time.time(), 2), source="eval")
  results = record_lib.read_results(workdir) or {}
  if jax.process_index() == 0:
    history.append(workdir, record)
    results.update(evaluator.results(step, metrics, history.read(workdir)))
    record_lib.write_results(workdir, results)
  return results
