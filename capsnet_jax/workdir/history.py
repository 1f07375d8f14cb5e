"""The evaluation history of a workdir: one JSON line per evaluation.

Synopsis::

  history.append(workdir, {"step": 468, "epoch": 1.0, "test_accuracy": 0.987, ...})
  records = history.read(workdir)             # [{...}, ...] in file order
  acc, step = history.best(records)           # best test accuracy and its step
  history.truncate_after(workdir, step=936)   # on resume from step 936

WORKDIR/eval_history.jsonl is what every result of this project is computed
from (results.json's best, the README tables of ``capsnet_jax.analysis.report``). It
must hold each evaluation exactly once, whatever stops and resumes happen:

* training appends a line (``"source": "train"``) right after each
  evaluation, before the checkpoint of that step is saved;
* a run that resumes from the checkpoint at step S first drops the training
  lines after S: those evaluations belonged to steps whose checkpoint never
  completed (a kill between the line and the checkpoint), and the resumed
  run redoes them, with the same data and so the same numbers;
* ``--mode=eval`` appends a line with ``"source": "eval"``.

Lines are written whole and flushed with fsync; a line cut short by a crash
is skipped with a warning when read.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable

from absl import logging

HISTORY_FILE = "eval_history.jsonl"


def path(workdir: str) -> str:
  return os.path.join(workdir, HISTORY_FILE)


def read(workdir: str) -> list[dict[str, Any]]:
  """Every complete record of WORKDIR/eval_history.jsonl, in file order."""
  p = path(workdir)
  if not os.path.exists(p):
    return []
  records = []
  with open(p) as f:
    for number, line in enumerate(f, 1):
      line = line.strip()
      if not line:
        continue
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        logging.warning("%s:%d is not a complete JSON line (a crash while "
                        "writing?); skipped", p, number)
  return records


def _write_all(workdir: str, records: Iterable[dict[str, Any]]) -> None:
  p = path(workdir)
  tmp = p + ".tmp"
  with open(tmp, "w") as f:
    for record in records:
      f.write(json.dumps(record, sort_keys=True) + "\n")
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, p)


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
  """Drops the records of steps after ``step``; returns how many were dropped."""
  records = read(workdir)
  kept = [r for r in records if int(r["step"]) <= step]
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
      best_value, best_step = float(value), int(r["step"])
  return best_value, best_step


def last(records: list[dict[str, Any]]) -> dict[str, Any] | None:
  """The training record of the highest step (None if there is none)."""
  train = training_records(records)
  return max(train, key=lambda r: int(r["step"])) if train else None
