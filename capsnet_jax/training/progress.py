"""What the terminal shows: our own lines, a live progress display, and the
libraries' chatter off by default.

Synopsis::

  progress.configure_logging(FLAGS.verbosity)  # cli.py, once flags are parsed
  progress.set_lead(jax.process_index() == 0)  # once JAX knows its processes

  bar = progress.TrainProgress(total_steps, start, steps_per_epoch,
                               batch_size, eval_every, enabled=lead)
  for ...:
    state, metrics = train_step(state, batch)
    bar.step(step, metrics)
    with bar.evaluating("test", num_batches) as done:
      for i, batch in enumerate(batches):
        ...
        done(i + 1)
  bar.close()

  with progress.Progress("predict", total=len(paths), unit="file") as p:
    for path in paths:
      ...
      p.update()

On process 0, where standard error is a terminal, a tqdm bar redraws in
place: steps, epoch, images/s, the latest train loss and accuracy and the
ETA of the whole run (training and the evaluations still to come); a second
bar while an evaluation runs. Elsewhere (a log file, SLURM, CI) the same
numbers become one plain log line every PLAIN_EVERY_S seconds; the other
processes show nothing, so nothing interleaves.

Quiet by default (configure_logging with --verbosity below 1): an INFO line
reaches the terminal only from this package's own files and only on process
0, and not the echo of the TensorBoard scalars (DETAIL_SOURCES); orbax,
clu, JAX's backend probes ("Unable to initialize backend 'tpu'") and other
libraries are shown from WARNING up, and TensorFlow's C++ INFO lines are
off (TF_CPP_MIN_LOG_LEVEL=1 and TF_ENABLE_ONEDNN_OPTS=0 unless they are
set). Warnings and errors always show. ``--verbosity=1`` (absl's own flag) shows everything, as before.
"""

from __future__ import annotations

import contextlib
import logging as std_logging
import os
import sys
import time
from typing import Any, Callable, Iterator

from absl import logging

# Where standard error is not a terminal: one plain progress line this often.
PLAIN_EVERY_S = 30.0
# A terminal's bar is redrawn at most this often.
REFRESH_S = 0.25
# INFO lines of our own files that only --verbosity=1 shows: {path inside
# the package: the functions (None: all)}. metric_logging's writer echoes
# every scalar it writes to TensorBoard (as clu's LoggingWriter does), and
# its Progress duplicates the progress display; the rotation sweep logs
# each of its angles.
DETAIL_SOURCES = {
    os.path.join("workdir", "metric_logging.py"): (
        "write_scalars", "write_images", "write_hparams", "__call__"),
    os.path.join("analysis", "arrays.py"): None,
}
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------
# Logging.


class _TerminalFilter(std_logging.Filter):
  """On absl's handler: drops what the quiet default hides, and clears a
  live bar before a line is printed (the bar redraws below it)."""

  def __init__(self):
    super().__init__()
    self.quiet = False
    self.lead = True
    self._ours = {}  # pathname -> path inside the package, or None

  def _relative(self, pathname: str) -> str | None:
    if pathname not in self._ours:
      path = os.path.abspath(pathname)
      self._ours[pathname] = (os.path.relpath(path, _PACKAGE_DIR)
                              if path.startswith(_PACKAGE_DIR + os.sep)
                              else None)
    return self._ours[pathname]

  def shown(self, record: std_logging.LogRecord) -> bool:
    """Whether ``record`` reaches the terminal."""
    if not self.quiet or record.levelno >= std_logging.WARNING:
      return True
    if not self.lead:
      return False
    relative = self._relative(record.pathname)
    if relative is None:
      return False
    if relative in DETAIL_SOURCES:
      functions = DETAIL_SOURCES[relative]
      return functions is not None and record.funcName not in functions
    return True

  def filter(self, record: std_logging.LogRecord) -> bool:
    if not self.shown(record):
      return False
    for bar in list(_live_bars):
      bar.clear_for_line()
    return True


_filter = _TerminalFilter()
_live_bars: list["Progress"] = []


def _install_filter() -> None:
  handler = logging.get_absl_handler()
  if _filter not in handler.filters:
    handler.addFilter(_filter)


def configure_logging(verbosity: int) -> None:
  """The terminal's logging for a command: quiet below ``verbosity`` 1
  (absl's --verbosity; see the module docstring), everything from 1 up."""
  _install_filter()
  _filter.quiet = verbosity < 1
  if _filter.quiet:  # before TensorFlow is imported (clu, tfds do it late)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    # TensorFlow announces its oneDNN kernels before any logging setting
    # applies; it only reads datasets and writes summaries here, where
    # those kernels do not run.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def set_lead(lead: bool) -> None:
  """Whether this process reports (process 0): the others keep only their
  warnings and errors in the quiet default."""
  _filter.lead = lead


def is_lead() -> bool:
  return _filter.lead


def shown(record: std_logging.LogRecord) -> bool:
  """Whether the terminal shows ``record`` under the present settings."""
  return _filter.shown(record)


def is_terminal(stream=None) -> bool:
  """Whether ``stream`` (default sys.stderr) is an interactive terminal."""
  stream = sys.stderr if stream is None else stream
  try:
    return bool(stream.isatty())
  except (AttributeError, ValueError, OSError):
    return False


# --------------------------------------------------------------------------
# Formatting.


def duration(seconds: float | None) -> str:
  """3725 -> "1h02m05s"; 65 -> "1m05s"; 4.2 -> "4.2s"; None -> "?"."""
  if seconds is None or seconds != seconds or seconds == float("inf"):
    return "?"
  if seconds < 10:
    return f"{max(seconds, 0.0):.1f}s"
  seconds = int(round(seconds))
  days, seconds = divmod(seconds, 86400)
  hours, seconds = divmod(seconds, 3600)
  minutes, seconds = divmod(seconds, 60)
  if days:
    return f"{days}d{hours:02d}h{minutes:02d}m"
  if hours:
    return f"{hours}h{minutes:02d}m{seconds:02d}s"
  return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def evaluations_left(step: int, total_steps: int, eval_every: int) -> int:
  """Evaluations the training loop still runs after ``step``: one at each
  multiple of ``eval_every`` in (step, total_steps] and one at the end."""
  if step >= total_steps:
    return 0
  at_multiples = total_steps // eval_every - step // eval_every
  return at_multiples + (total_steps % eval_every != 0)


def eta_seconds(step: int, total_steps: int, steps_per_s: float | None,
                eval_every: int, eval_seconds: float | None) -> float | None:
  """Seconds left of the whole run: the steps to go at ``steps_per_s`` and
  the evaluations to go at ``eval_seconds`` each (0 before the first one is
  timed). None while the rate is unknown."""
  if step >= total_steps:
    return 0.0
  if not steps_per_s:
    return None
  left = (total_steps - step) / steps_per_s
  return left + evaluations_left(step, total_steps, eval_every) * (
      eval_seconds or 0.0)


def plural(unit: str) -> str:
  """file -> files, batch -> batches."""
  return unit + ("es" if unit.endswith(("s", "ch", "sh", "x")) else "s")


# --------------------------------------------------------------------------
# Progress displays.


class Progress:
  """Items done out of a total: a tqdm bar where ``stream`` is a terminal,
  else a plain log line every ``every_s`` seconds; nothing at all unless
  ``enabled`` (default: this is the lead process).

  Args:
    desc: what is counted ("predict", "evaluating step 100").
    total: the number of items (None: unknown; settable later).
    unit: the items' name, singular ("file", "batch").
    enabled: show anything at all (default: process 0).
    stream: where the bar goes (default sys.stderr).
    interactive: force the bar (True) or the plain lines (False); default:
      whether ``stream`` is a terminal.
    every_s: seconds between plain lines.
    now: the clock (tests pass a fake one).
    log: where plain lines go (default absl's logging.info).
    leave: keep the finished bar on the screen.
    position: the bar's line below the cursor (a bar inside another: 1).
  """

  def __init__(self, desc: str, total: int | None = None, unit: str = "item",
               *, enabled: bool | None = None, stream=None,
               interactive: bool | None = None,
               every_s: float = PLAIN_EVERY_S,
               now: Callable[[], float] = time.monotonic,
               log: Callable[..., None] | None = None, initial: int = 0,
               leave: bool = True, position: int | None = None):
    self.desc, self.total, self.unit = desc, total, unit
    self.n = initial
    self.enabled = is_lead() if enabled is None else enabled
    self._stream = sys.stderr if stream is None else stream
    self.interactive = self.enabled and (
        is_terminal(self._stream) if interactive is None else interactive)
    self._every = every_s
    self._now = now
    self._log = log or logging.info
    self._start = now()
    self._last_plain = self._start
    self._last_draw = None
    self._bar = None
    self._closed = False
    self._cleared = False
    if self.interactive:
      self._open_bar(leave, position)

  # The bar.

  def _open_bar(self, leave: bool, position: int | None) -> None:
    import tqdm  # pylint: disable=g-import-not-at-top
    _install_filter()  # log lines clear the bar first, quiet or not
    self._bar = tqdm.tqdm(
        total=self.total, initial=self.n, desc=self.desc, unit=self.unit,
        file=self._stream, leave=leave, position=position,
        dynamic_ncols=True, mininterval=0, miniters=1,
        postfix=self.postfix() or None, bar_format=self._bar_format())
    _live_bars.append(self)
    self._last_draw = self._now()

  def _bar_format(self) -> str:
    if self.total:
      return "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}{postfix}"
    return "{desc}: {n_fmt} " + plural(self.unit) + "{postfix}"

  def clear_for_line(self) -> None:
    """Erases the bar before a log line is printed under it."""
    if self._bar is not None and not self._closed:
      self._bar.clear()
      self._cleared = True

  def _draw(self) -> None:
    self._bar.n = self.n
    if self.total != self._bar.total:
      self._bar.total = self.total
      self._bar.bar_format = self._bar_format()
    self._bar.set_description_str(self.desc, refresh=False)
    self._bar.set_postfix_str(self.postfix(), refresh=False)
    self._bar.refresh()
    self._last_draw, self._cleared = self._now(), False

  # Reporting.

  def postfix(self) -> str:
    """The bar's text after the count."""
    rate = self.rate()
    if not rate:
      return ""
    if rate >= 1:
      return f"{rate:.3g} {plural(self.unit)}/s"
    return f"{1 / rate:.3g} s/{self.unit}"

  def rate(self) -> float | None:
    elapsed = self._now() - self._start
    return self.n / elapsed if self.n and elapsed > 0 else None

  def plain_line(self) -> str:
    """The plain line: what the bar shows, in words."""
    count = (f"{self.n}/{self.total} {plural(self.unit)}"
             f" ({100.0 * self.n / self.total:.0f}%)" if self.total
             else f"{self.n} {plural(self.unit)}")
    extra = self.postfix()
    return f"{self.desc}: {count}" + (f", {extra}" if extra else "")

  def show(self, force: bool = False) -> None:
    """Redraws the bar (at most every REFRESH_S) or prints the plain line
    (every ``every_s``); ``force`` draws the bar now."""
    if not self.enabled or self._closed:
      return
    now = self._now()
    if self._bar is not None:
      if force or self._cleared or now - self._last_draw >= REFRESH_S:
        self._draw()
    elif now - self._last_plain >= self._every:
      self._last_plain = now
      self._log("%s", self.plain_line())

  def update(self, n: int = 1) -> None:
    self.n += n
    self.show()

  def set(self, n: int, total: int | None = None) -> None:
    self.n = n
    if total is not None:
      self.total = total
    self.show()

  def close(self) -> None:
    """Draws the final count and leaves the bar (a plain run: nothing)."""
    if self._closed:
      return
    if self._bar is not None:
      self._draw()
      self._bar.close()
      _live_bars.remove(self)
    self._closed = True

  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class TrainProgress(Progress):
  """The training loop's display: steps, epoch, images/s, the latest train
  loss and accuracy, and the ETA of the whole run.

  Call ``step(step, metrics)`` after each train step is dispatched: it
  waits for the previous step's metrics, so that the display follows the
  device (one step behind at most) rather than JAX's queue of dispatched
  steps. Evaluations run inside ``evaluating()``: excluded from the
  training rate, timed for the ETA, and shown with a bar of their own.
  """

  def __init__(self, total_steps: int, start_step: int, steps_per_epoch: int,
               batch_size: int, eval_every: int, **kwargs):
    self.steps_per_epoch = steps_per_epoch
    self.batch_size = batch_size
    self.eval_every = eval_every
    self.eval_seconds = None  # the last evaluation's
    self._latest = None  # the last dispatched step's metrics (device arrays)
    self._ready = None  # those of the step before it, computed
    self._fetched = {}
    self._first = None  # (time, step) of the first step this session
    self._paused = 0.0  # seconds in evaluations since the first step
    self._training = 0.0  # seconds of training from the first to the last
    super().__init__("train", total=total_steps, unit="step",
                     initial=start_step, **kwargs)

  def step(self, step: int, metrics: dict[str, Any] | None = None) -> None:
    """After step ``step`` (the number of steps done) was dispatched."""
    if not self.enabled:
      return
    if self._latest is not None:
      import jax  # pylint: disable=g-import-not-at-top
      jax.block_until_ready(self._latest)
    self._ready, self._latest = self._latest, metrics
    if self._first is None:  # its time is compilation's: rates from here
      self._first = (self._now(), step)
    self._training = self._now() - self._first[0] - self._paused
    self.n = step
    self.show()

  def steps_per_second(self) -> float | None:
    """Over this session's steps after its first, as of the last one."""
    if self._first is None:
      return None
    s0 = self._first[1]
    seconds = self._training
    return (self.n - s0) / seconds if self.n > s0 and seconds > 0 else None

  def rate(self) -> float | None:
    return self.steps_per_second()

  def eta(self) -> float | None:
    return eta_seconds(self.n, self.total, self.steps_per_second(),
                       self.eval_every, self.eval_seconds)

  def _metrics(self) -> dict[str, float]:
    """The latest finished step's train loss and accuracy."""
    if self._ready is not None:
      try:
        self._fetched = {k: float(self._ready[k]) for k in ("loss", "accuracy")
                         if k in self._ready}
      except Exception:  # pylint: disable=broad-except  # not addressable
        pass
    return self._fetched

  def _numbers(self) -> list[tuple[str, str]]:
    numbers = [("epoch", f"{self.n / self.steps_per_epoch:.2f}")]
    rate = self.steps_per_second()
    if rate:
      numbers.append(("images/s", f"{rate * self.batch_size:,.0f}"))
    metrics = self._metrics()
    if "loss" in metrics:
      numbers.append(("loss", f"{metrics['loss']:.4g}"))
    if "accuracy" in metrics:
      numbers.append(("accuracy", f"{100 * metrics['accuracy']:.1f}%"))
    numbers.append(("ETA", duration(self.eta())))
    return numbers

  def postfix(self) -> str:
    def shown(name, value):
      if name == "images/s":
        return f"{value} img/s"
      if name == "accuracy":
        return f"acc {value}"
      return f"{name} {value}"
    return ", ".join(shown(k, v) for k, v in self._numbers())

  def plain_line(self) -> str:
    numbers = dict(self._numbers())
    words = [f"step {self.n}/{self.total} ({100.0 * self.n / self.total:.1f}%)"
             f", epoch {numbers['epoch']}"]
    if "images/s" in numbers:
      words.append(f"{numbers['images/s']} images/s")
    if "loss" in numbers:
      words.append(f"train loss {numbers['loss']}")
    if "accuracy" in numbers:
      words.append(f"train accuracy {numbers['accuracy']}")
    return ", ".join(words) + f"; ETA {numbers['ETA']} for the whole run"

  @contextlib.contextmanager
  def evaluating(self, name: str, num_batches: int
                 ) -> Iterator[Callable[[int], None]]:
    """An evaluation of ``num_batches`` batches of split ``name`` at the
    current step; yields ``done(batches_done)``. Its time counts as an
    evaluation's (for the ETA), not training's."""
    t = self._now()
    if not self.enabled:
      yield lambda done: None
      return
    inner = Progress(f"evaluating step {self.n} ({name})", num_batches,
                     "batch", enabled=True, stream=self._stream,
                     interactive=self.interactive, every_s=self._every,
                     now=self._now, log=self._log, leave=False,
                     position=1 if self.interactive else None)
    try:
      yield inner.set
    finally:
      inner.close()
      seconds = self._now() - t
      if self._first is not None:
        self._paused += seconds
      if self.interactive:  # (a plain line would repeat the evaluation's)
        self.show(force=True)

  def evaluation_done(self, seconds: float) -> None:
    """The time of a whole evaluation (all its splits), for the ETA."""
    self.eval_seconds = seconds
