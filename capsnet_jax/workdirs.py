"""The workdir: its config record, results.json and compatibility checks.

Synopsis::

  workdirs.prepare(workdir, config)       # create, check writable and compatible
  workdirs.write_results(workdir, {...})  # WORKDIR/results.json
"""

import json
import os
import tempfile
from typing import Any

import jax

from capsnet_jax.errors import WorkdirError

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


def _identity(config) -> dict[str, Any]:
  from capsnet_jax import models  # pylint: disable=g-import-not-at-top
  from capsnet_jax import recipes  # pylint: disable=g-import-not-at-top
  identity = {k: config.get(k) for k in IDENTITY_FIELDS}
  # "auto": the data setup's, recorded resolved.
  for k in ("primary_grouping", "primary_vote_scale"):
    identity[k] = recipes.resolve(config, k)
  # 0 means the model's default; records of earlier runs hold the number.
  # Models without the field (Efficient-CapsNet) ignore it: not compared.
  model = config.get("model", "capsnet")
  if model in models.MODELS and "primary_types" not in models.model_fields(model):
    identity["primary_types"] = None
  else:
    identity["primary_types"] = models.primary_types(config)
  return identity


def check_writable(workdir: str) -> None:
  """Creates workdir if needed; WorkdirError if it cannot be written."""
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_test"):
      pass
  except OSError as e:
    raise WorkdirError(f"workdir {workdir!r} is not writable: {e.strerror or e}"
                       ) from None


def check_compatible(workdir: str, config) -> None:
  """WorkdirError if workdir holds a run of a different model or dataset."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f)
  saved = with_legacy_fields(saved)
  diffs = [f"{k}: {saved.get(k)!r} there, {v!r} now"
           for k, v in _identity(config).items()
           if k in saved and v is not None and saved[k] != v]
  if diffs:
    raise WorkdirError(
        f"workdir {workdir!r} holds a run of a different configuration "
        f"({'; '.join(diffs)}). Use another --workdir, or delete this one to "
        "start fresh.")


def with_legacy_fields(saved: dict[str, Any]) -> dict[str, Any]:
  """A workdir's config record with the fields it was recorded without
  (recipes.LEGACY: what runs used before the field existed)."""
  from capsnet_jax import recipes  # pylint: disable=g-import-not-at-top
  return {**recipes.LEGACY, **saved}


def prepare(workdir: str, config) -> None:
  """Checks the workdir before any heavy work and records the config."""
  check_compatible(workdir, config)
  check_writable(workdir)
  if jax.process_index() == 0:
    record = config.to_dict()
    # Resolved: primary_types 0 -> 32 (kept as given where not compared),
    # and the recipe's "auto" fields to the data setup's values.
    from capsnet_jax import recipes  # pylint: disable=g-import-not-at-top
    record.update({k: recipes.resolve(config, k) for k in recipes.FIELDS})
    record.update({k: v for k, v in _identity(config).items() if v is not None})
    _atomic_write_json(os.path.join(workdir, CONFIG_FILE), record)


def read_results(workdir: str) -> dict[str, Any] | None:
  path = os.path.join(workdir, RESULTS_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_results(workdir: str, results: dict[str, Any]) -> None:
  _atomic_write_json(os.path.join(workdir, RESULTS_FILE), results)


def _atomic_write_json(path: str, obj: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)
