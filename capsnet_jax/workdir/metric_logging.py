"""Metric writers and progress reporting, with or without TensorFlow.

Where TensorFlow is installed (the default requirements), training logs
through clu: `metric_writers.create_default_writer` (absl logging plus TF
summaries for TensorBoard) and `periodic_actions.ReportProgress`. clu's
writers import TensorFlow, which GPU images often lack and which is large;
there, the same calls go to `EventWriter` and `Progress` below, which write
the same TensorBoard event files through the `tensorboard` package alone
(scalars as simple values, images as PNG, hparams for the HParams plugin).
So an MNIST run from `--config.idx_dir` needs no TensorFlow at all.
"""

from __future__ import annotations

import contextlib
import io
import time
from typing import Any, Iterator, Mapping

from absl import logging
import numpy as np


# History record fields and the TensorBoard tag each is written under:
# grouped by split (test/accuracy, validation/margin_loss, train/loss).
_GROUPS = ("test", "validation", "train")


def tag(name: str) -> str:
  """The grouped TensorBoard tag of a flat metric name: test_accuracy ->
  test/accuracy; names of no split stay as they are."""
  for group in _GROUPS:
    if name.startswith(group + "_"):
      return f"{group}/{name[len(group) + 1:]}"
  return name


def flat_name(tag_: str) -> str:
  """The inverse of ``tag``: test/accuracy -> test_accuracy; flat tags of
  older event files (test_accuracy) are returned as they are."""
  group, sep, rest = tag_.partition("/")
  return f"{group}_{rest}" if sep and group in _GROUPS else tag_


def scalars_of_record(record: Mapping[str, Any]) -> dict[str, float]:
  """The test and validation metrics of a history record, by grouped tag."""
  return {tag(k): v for k, v in record.items()
          if k.startswith(("test_", "validation_")) and
          isinstance(v, (int, float)) and not isinstance(v, bool)}


def tensorflow_available() -> bool:
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def create_writer(workdir: str, lead: bool, backend: str = "auto"):
  """A clu-style MetricWriter for `workdir`; only `lead` writes event files.

  Args:
    workdir: directory of the TensorBoard event files.
    lead: False on non-lead processes (they only log to absl).
    backend: "clu", "tensorboard" (TensorFlow-free) or "auto" (clu where
      TensorFlow imports).
  """
  if backend == "auto":
    backend = "clu" if tensorflow_available() else "tensorboard"
  if backend == "clu":
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
    return metric_writers.create_default_writer(workdir, just_logging=not lead)
  if backend != "tensorboard":
    raise ValueError(f"unknown writer backend {backend!r}")
  logging.info("TensorFlow not available: writing TensorBoard events with "
               "the tensorboard package")
  return EventWriter(workdir if lead else None)


def create_progress(num_train_steps: int, writer, every_secs: float = 30.0):
  """clu's ReportProgress where clu's writers import, else `Progress`."""
  if isinstance(writer, EventWriter):
    return Progress(num_train_steps, writer, every_secs)
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top
  return periodic_actions.ReportProgress(num_train_steps=num_train_steps,
                                         writer=writer, every_secs=every_secs,
                                         every_steps=None)


class EventWriter:
  """The MetricWriter calls training uses, onto tensorboard's event writer.

  Scalars are also logged with absl, like clu's LoggingWriter. With
  `logdir=None` nothing is written to disk.
  """

  def __init__(self, logdir: str | None):
    self._writer = None
    if logdir is not None:
      from tensorboard.summary.writer import event_file_writer  # pylint: disable=g-import-not-at-top
      self._writer = event_file_writer.EventFileWriter(logdir)

  def _add(self, step: int, summary) -> None:
    if self._writer is None:
      return
    from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
    self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=step,
                                           summary=summary))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    from tensorboard.compat.proto import summary_pb2  # pylint: disable=g-import-not-at-top
    logging.info("[%d] %s", step, ", ".join(
        f"{k}={float(v):.6g}" for k, v in sorted(scalars.items())))
    self._add(step, summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=k, simple_value=float(v))
        for k, v in scalars.items()]))

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    """Images [N, H, W, C] or [H, W, C], float in [0, 1] or uint8."""
    from PIL import Image  # pylint: disable=g-import-not-at-top
    from tensorboard.compat.proto import summary_pb2  # pylint: disable=g-import-not-at-top
    values = []
    for key, batch in images.items():
      batch = np.asarray(batch)
      if batch.ndim == 3:
        batch = batch[None]
      if batch.dtype != np.uint8:
        batch = np.round(np.clip(batch, 0, 1) * 255).astype(np.uint8)
      for i, image in enumerate(batch):
        if image.shape[-1] == 1:
          image = image[..., 0]
        png = io.BytesIO()
        Image.fromarray(image).save(png, format="PNG")
        tag = key if len(batch) == 1 else f"{key}/image/{i}"
        values.append(summary_pb2.Summary.Value(tag=tag, image=(
            summary_pb2.Summary.Image(
                height=image.shape[0], width=image.shape[1],
                colorspace=1 if image.ndim == 2 else image.shape[-1],
                encoded_image_string=png.getvalue()))))
    logging.info("[%d] Got images: %s.", step,
                 {k: np.shape(v) for k, v in images.items()})
    self._add(step, summary_pb2.Summary(value=values))

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    from tensorboard.plugins.hparams import summary_v2  # pylint: disable=g-import-not-at-top
    logging.info("[Hyperparameters] %s", dict(hparams))
    self._add(0, summary_v2.hparams_pb(dict(hparams)))

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


class Progress:
  """Steps/s, percentage and time left every `every_secs` (clu-like).

  Call it after every step; wrap non-training work (evaluation) in
  `timed(name)` so that it is excluded from steps/s and reported separately.
  """

  def __init__(self, num_train_steps: int, writer: EventWriter,
               every_secs: float = 30.0, now=time.monotonic):
    self._total = num_train_steps
    self._writer = writer
    self._every = every_secs
    self._now = now  # injectable: tests pass a fake clock
    self._start = now()
    self._last_time = self._start
    self._last_step = None
    self._timed = {}  # name -> seconds since the last report
    self._timed_total = {}

  def __call__(self, step: int) -> None:
    now = self._now()
    if self._last_step is None:
      self._last_step, self._last_time = step, now
      return
    if now - self._last_time < self._every:
      return
    other = sum(self._timed.values())
    elapsed = max(now - self._last_time - other, 1e-9)
    rate = (step - self._last_step) / elapsed
    left = (self._total - step) / rate if rate > 0 else float("inf")
    overhead = {k: v / (now - self._start) for k, v in self._timed_total.items()}
    logging.info("%.2f steps/s, %.1f%% (%d/%d), ETA %s%s", rate,
                 100.0 * step / self._total, step, self._total,
                 _duration(left), "".join(
                     f" ({100 * v:.1f}% {k})" for k, v in overhead.items()))
    self._writer.write_scalars(step, {"steps_per_sec": rate,
                                      "uptime": now - self._start})
    self._last_step, self._last_time = step, now
    self._timed = {}

  @contextlib.contextmanager
  def timed(self, name: str) -> Iterator[None]:
    t = self._now()
    try:
      yield
    finally:
      dt = self._now() - t
      self._timed[name] = self._timed.get(name, 0.0) + dt
      self._timed_total[name] = self._timed_total.get(name, 0.0) + dt


def _duration(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "unknown"
  seconds = int(seconds)
  days, seconds = divmod(seconds, 86400)
  hours, seconds = divmod(seconds, 3600)
  minutes, seconds = divmod(seconds, 60)
  return (f"{days}d" if days else "") + (f"{hours}h" if hours or days else "") \
      + f"{minutes}m{seconds:02d}s"
