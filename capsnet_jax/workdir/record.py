"""The workdir: its config record, results.json and compatibility checks.

Synopsis::

  record.prepare(workdir, exp.identity(), exp.record())  # check, write config.json
  record.write_results(workdir, {...})                   # WORKDIR/results.json
  record.read_config(workdir)                            # the run's config record
"""

import os
import tempfile
from typing import Any

import jax

from capsnet_jax.errors import WorkdirError
from capsnet_jax.workdir import files

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
# Fields that define the model and data: a checkpoint is only meaningful for
# the same values. The others (steps, learning rate, logging) may change
# between runs on the same workdir.
IDENTITY_FIELDS = ("dataset", "data_setup", "model", "decoder", "batch_norm",
                   "primary_types", "routing_iterations", "leaky_routing",
                   "leaky_variant", "routing_stop_gradient", "compute_dtype",
                   "validation_fraction", "conv_padding", "primary_grouping",
                   "primary_vote_scale")

# Config fields that runs recorded before the field existed did not hold,
# and the value those runs used.
LEGACY_FIELDS = {"init": "default", "primary_grouping": "paper",
                 "primary_vote_scale": "none", "margin_reduction": "sum",
                 "lr_min": 0.0, "decoder_output_bias": "data_mean"}


def check_writable(workdir: str) -> None:
  """Creates workdir if needed; WorkdirError if it cannot be written."""
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_test"):
      pass
  except OSError as e:
    raise WorkdirError(f"workdir {workdir!r} is not writable: {e.strerror or e}"
                       ) from None


def read_config(workdir: str) -> dict[str, Any] | None:
  """WORKDIR/config.json with the fields it was recorded without
  (LEGACY_FIELDS), or None where there is none; WorkdirError if it cannot
  be parsed."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  return with_legacy_fields(_read_json(path, "config record"))


def _read_json(path: str, what: str) -> dict[str, Any]:
  return files.read_json_object(path, f"the {what} {path!r}",
                                "restore it or start a new workdir")


def check_compatible(workdir: str, identity: dict[str, Any]) -> None:
  """WorkdirError if workdir holds a run whose identity fields (those that
  define the model and data, experiment.IDENTITY_FIELDS) differ from
  ``identity``'s (None: not compared)."""
  saved = read_config(workdir)
  if saved is None:
    return
  diffs = [f"{k}: {saved.get(k)!r} there, {v!r} now"
           for k, v in identity.items()
           if k in saved and v is not None and saved[k] != v]
  if diffs:
    raise WorkdirError(
        f"workdir {workdir!r} holds a run of a different configuration "
        f"({'; '.join(diffs)}). Use another --workdir, or delete this one to "
        "start fresh.")


def with_legacy_fields(saved: dict[str, Any]) -> dict[str, Any]:
  """A workdir's config record with the fields it was recorded without
  (LEGACY_FIELDS: what runs used before the field existed)."""
  return {**LEGACY_FIELDS, **saved}


def prepare(workdir: str, identity: dict[str, Any],
            record: dict[str, Any]) -> None:
  """Checks the workdir before any heavy work (compatible, writable) and
  writes ``record`` as its config.json (process 0)."""
  check_compatible(workdir, identity)
  check_writable(workdir)
  if jax.process_index() == 0:
    files.atomic_write_json(os.path.join(workdir, CONFIG_FILE), record)


def read_results(workdir: str) -> dict[str, Any] | None:
  """WORKDIR/results.json, None where there is none; WorkdirError if it
  cannot be parsed."""
  path = os.path.join(workdir, RESULTS_FILE)
  if not os.path.exists(path):
    return None
  return _read_json(path, "results file")


def write_results(workdir: str, results: dict[str, Any]) -> None:
  files.atomic_write_json(os.path.join(workdir, RESULTS_FILE), results)
