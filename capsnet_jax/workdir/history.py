"""The evaluation history of a workdir: one JSON line per evaluation.

Synopsis::

  history.append(workdir, {"step": 468, "epoch": 1.0, "test_accuracy": 0.987, ...})
  records = history.read(workdir)             # [{...}, ...] in file order
  acc, step = history.best(records)           # best test accuracy and its step
  history.truncate_after(workdir, step=936)   # on resume from step 936

WORKDIR/eval_history.jsonl is what every result of this project is computed
from (results.json's best, the docs/results.md tables of ``capsnet_jax.analysis.report``). It
must hold each evaluation exactly once, whatever stops and resumes happen:

* training appends a line (``"source": "train"``) right after each
  evaluation, before the checkpoint of that step is saved;
* a run that resumes from the checkpoint at step S first drops the training
  lines after S: those evaluations belonged to steps whose checkpoint never
  completed (a kill between the line and the checkpoint), and the resumed
  run redoes them, with the same data and so the same numbers;
* ``--mode=eval`` appends a line with ``"source": "eval"``; those lines
  are never dropped (they evaluate a checkpoint that was complete).

A workdir whose history holds training evaluations but that has no
checkpoints/ folder at all (deleted, or a history copied in by hand) cannot
resume: ``check_resumable`` refuses it with a WorkdirError and leaves the
history as it is, rather than start from step 0 and drop every line.

Lines are written whole and flushed with fsync; a line cut short by a crash
is skipped with a warning when read. A complete line that is not an object
with an integer ``step`` is a WorkdirError naming the file and line.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable

from absl import logging

from capsnet_jax.errors import WorkdirError
from capsnet_jax.workdir import files

HISTORY_FILE = "eval_history.jsonl"
CHECKPOINTS = "checkpoints"


def path(workdir: str) -> str:
  return os.path.join(workdir, HISTORY_FILE)


def _check_record(record: Any, where: str) -> dict[str, Any]:
  if not isinstance(record, dict):
    raise WorkdirError(f"{where} is not an evaluation record (a JSON object, "
                       f"got {type(record).__name__}); repair or remove the "
                       "line")
  step = record.get("step")
  if not isinstance(step, int) or isinstance(step, bool):
    raise WorkdirError(f"{where} has no integer \"step\" (got {step!r}); "
                       "repair or remove the line")
  return record


def read(workdir: str) -> list[dict[str, Any]]:
  """Every complete record of WORKDIR/eval_history.jsonl, in file order.

  Raises:
    WorkdirError: the file cannot be read, or a complete line is not an
      object with an integer "step" (named by file and line).
  """
  p = path(workdir)
  if not os.path.exists(p):
    return []
  records = []
  try:
    with open(p, encoding="utf-8") as f:
      for number, line in enumerate(f, 1):
        line = line.strip()
        if not line:
          continue
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          logging.warning("%s:%d is not a complete JSON line (a crash while "
                          "writing?); skipped", p, number)
          continue
        records.append(_check_record(record, f"{p}:{number}"))
  except (OSError, UnicodeDecodeError) as e:
    raise WorkdirError(f"the evaluation history {p!r} cannot be read ({e})"
                       ) from None
  return records


def check_resumable(workdir: str) -> None:
  """Raises WorkdirError where a training run would lose the history:
  it holds training evaluations, but the workdir has no checkpoints/ folder
  (a run creates that folder before its first evaluation, so the
  checkpoints were deleted or the history was copied in). Also validates
  every record (see ``read``)."""
  records = training_records(read(workdir))
  if records and not os.path.isdir(os.path.join(workdir, CHECKPOINTS)):
    raise WorkdirError(
        f"{path(workdir)} holds {len(records)} training evaluation(s) up to "
        f"step {max(r['step'] for r in records)}, but {workdir!r} has no "
        f"{CHECKPOINTS}/ folder: resuming would start again from step 0. "
        "Bring the checkpoints back (python -m capsnet_jax.workdir.park "
        "restore), or move the history away to start afresh")


def _write_all(workdir: str, records: Iterable[dict[str, Any]]) -> None:
  files.atomic_write_text(path(workdir), "".join(
      json.dumps(record, sort_keys=True) + "\n" for record in records))


def append(workdir: str, record: dict[str, Any]) -> None:
  """Appends one record as a JSON line, flushed to disk."""
  p = path(workdir)
  # A previous crash may have left a partial last line: start on a new one.
  prefix = ""
  if os.path.exists(p) and os.path.getsize(p):
    with open(p, "rb") as f:
      f.seek(-1, os.SEEK_END)
      if f.read(1) != b"\n":
        prefix = "\n"
  with open(p, "a") as f:
    f.write(prefix + json.dumps(record, sort_keys=True) + "\n")
    f.flush()
    os.fsync(f.fileno())


def truncate_after(workdir: str, step: int) -> int:
  """Drops the training records of steps after ``step`` (those of
  ``--mode=eval``, ``"source": "eval"``, stay); returns how many were
  dropped.

  Raises:
    WorkdirError: as check_resumable, where training records would be
      dropped from a workdir without a checkpoints/ folder.
  """
  records = read(workdir)
  kept = [r for r in records
          if r["step"] <= step or r.get("source", "train") != "train"]
  if len(kept) < len(records):
    check_resumable(workdir)
  dropped = len(records) - len(kept)
  if dropped or (records and os.path.exists(path(workdir)) and
                 _has_partial_line(workdir)):
    _write_all(workdir, kept)
  if dropped:
    logging.info("Dropped %d evaluation record(s) after step %d from %s: "
                 "their checkpoint never completed; the resumed run redoes "
                 "them.", dropped, step, path(workdir))
  return dropped


def _has_partial_line(workdir: str) -> bool:
  with open(path(workdir), "rb") as f:
    lines = f.read().split(b"\n")
  for line in lines:
    if line.strip():
      try:
        json.loads(line)
      except json.JSONDecodeError:
        return True
  return False


def training_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """The records written by training (not by --mode=eval), one per step."""
  return [r for r in records if r.get("source", "train") == "train"]


def best(records: list[dict[str, Any]], key: str = "test_accuracy"
         ) -> tuple[float | None, int | None]:
  """(max of ``key``, the first step reaching it) over ``records``."""
  best_value, best_step = None, None
  for r in records:
    value = r.get(key)
    if value is None:
      continue
    if best_value is None or value > best_value:
      best_value, best_step = float(value), r["step"]
  return best_value, best_step


def last(records: list[dict[str, Any]]) -> dict[str, Any] | None:
  """The training record of the highest step (None if there is none)."""
  train = training_records(records)
  return max(train, key=lambda r: r["step"]) if train else None
