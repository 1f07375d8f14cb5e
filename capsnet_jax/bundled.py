"""Trained weights that ship with the package: predict without training.

Synopsis::

  capsnet-jax --config=mnist_efficient --mode=predict \\
      --workdir=bundled:mnist_efficient --images=digit.png
  m = trained.load("bundled:mnist_efficient")  # a trained.TrainedModel
  m.predict(images)["predictions"]

A bundle is a folder ``capsnet_jax/weights/NAME/`` holding

- ``config.json``: the training run's config (what builds the model);
- ``weights.msgpack``: the inference variables (``params`` and the batch-norm
  statistics, no optimiser state) in flax's msgpack format, without the
  reconstruction decoder (it holds most of the parameters and is not needed
  to classify), so that a bundle stays under 1 MB;
- ``weights.json``: where the weights come from (workdir, step, the test
  accuracy at that step, the date), ``sha256`` and ``bytes`` of
  ``weights.msgpack``, and ``decoder`` (false: no reconstructions).

The checksum is verified on every load. Make a bundle from a trained workdir
(its best checkpoint by test accuracy, or the latest)::

  python -m capsnet_jax.bundled --workdir=runs/mnist_efficient \\
      --name=mnist_efficient [--which=best]
"""

import datetime
import hashlib
import json
import os
import sys
from typing import Any

from flax import serialization
import jax
from flax import traverse_util
import numpy as np

from capsnet_jax.errors import WorkdirError

PREFIX = "bundled:"
WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
WEIGHTS_FILE = "weights.msgpack"
META_FILE = "weights.json"
CONFIG_FILE = "config.json"
# Top-level parameter groups left out of a bundle.
LEFT_OUT = ("decoder",)


def names() -> list[str]:
  """The bundles that ship with this package."""
  if not os.path.isdir(WEIGHTS_DIR):
    return []
  return sorted(n for n in os.listdir(WEIGHTS_DIR)
                if os.path.exists(os.path.join(WEIGHTS_DIR, n, META_FILE)))


def is_bundle(workdir: str) -> bool:
  """Whether ``workdir`` is "bundled:NAME" or a bundle folder."""
  return workdir.startswith(PREFIX) or os.path.exists(
      os.path.join(workdir, META_FILE))


def resolve(workdir: str) -> str:
  """"bundled:NAME" -> the bundle's folder; any other path unchanged."""
  if not workdir.startswith(PREFIX):
    return workdir
  name = workdir[len(PREFIX):]
  if name not in names():
    raise WorkdirError(f"no bundled weights called {name!r}; bundled: "
                       f"{', '.join(names()) or 'none'}")
  return os.path.join(WEIGHTS_DIR, name)


def sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def read(folder: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """(metadata, variables as nested dicts of numpy arrays) of a bundle
  folder; WorkdirError if a file is missing or the checksum differs."""
  meta_path = os.path.join(folder, META_FILE)
  weights_path = os.path.join(folder, WEIGHTS_FILE)
  for path in (meta_path, weights_path, os.path.join(folder, CONFIG_FILE)):
    if not os.path.exists(path):
      raise WorkdirError(f"bundle {folder!r} has no {os.path.basename(path)}")
  with open(meta_path) as f:
    meta = json.load(f)
  actual = sha256(weights_path)
  if actual != meta.get("sha256"):
    raise WorkdirError(f"{weights_path}: sha256 {actual} differs from the "
                       f"{meta.get('sha256')} recorded in {META_FILE}; the "
                       "file is damaged or was replaced")
  with open(weights_path, "rb") as f:
    variables = serialization.msgpack_restore(f.read())
  return meta, variables


def fill(tree: Any, given: dict[str, Any], what: str) -> Any:
  """``tree`` (nested dicts of arrays) with the leaves that ``given`` holds
  replaced by its values (same shapes); the others stay as they are."""
  flat = traverse_util.flatten_dict(dict(tree))
  for path, value in traverse_util.flatten_dict(dict(given)).items():
    if path not in flat:
      raise WorkdirError(f"the bundle's {what} {'/'.join(path)} is not in "
                         "the configured model")
    if tuple(np.shape(value)) != tuple(flat[path].shape):
      raise WorkdirError(f"the bundle's {what} {'/'.join(path)} has shape "
                         f"{list(np.shape(value))}, the model "
                         f"{list(flat[path].shape)}")
    flat[path] = np.asarray(value, flat[path].dtype)
  return traverse_util.unflatten_dict(flat)


def export(workdir: str, name: str, which="best",
           out_root: str = WEIGHTS_DIR) -> dict[str, Any]:
  """Writes the bundle ``out_root/name`` from a checkpoint of ``workdir``
  (``which``: "best", "latest" or a step); returns its metadata."""
  from capsnet_jax import history  # pylint: disable=g-import-not-at-top
  from capsnet_jax import trained  # pylint: disable=g-import-not-at-top
  if jax.process_count() > 1:
    raise WorkdirError("make a bundle in one process")
  model = trained.load(workdir, which=which)
  variables = {k: {g: v for g, v in dict(tree).items() if g not in LEFT_OUT}
               for k, tree in model.variables.items()}
  variables = {k: v for k, v in variables.items() if v}
  variables = jax.tree.map(np.asarray, variables)  # replicated: any shard
  folder = os.path.join(out_root, name)
  os.makedirs(folder, exist_ok=True)
  weights_path = os.path.join(folder, WEIGHTS_FILE)
  with open(weights_path, "wb") as f:
    f.write(serialization.msgpack_serialize(variables))
  config = model.config.to_dict()
  for key in ("idx_dir", "tfds_data_dir", "ensemble_workdirs"):
    config[key] = ""
  with open(os.path.join(folder, CONFIG_FILE), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
  record = next((r for r in history.read(workdir) if r["step"] == model.step),
                {})
  num_params = sum(int(np.size(x)) for x in jax.tree.leaves(variables["params"]))
  meta = dict(
      name=name, source_workdir=os.path.normpath(workdir), which=str(which),
      step=model.step, epoch=record.get("epoch"),
      test_accuracy=record.get("test_accuracy"),
      model=model.config.model, dataset=model.config.dataset,
      data_setup=model.config.data_setup, params=num_params,
      left_out=list(LEFT_OUT), decoder=False,
      bytes=os.path.getsize(weights_path), sha256=sha256(weights_path),
      created=datetime.date.today().isoformat())
  with open(os.path.join(folder, META_FILE), "w") as f:
    json.dump(meta, f, indent=2, sort_keys=True)
    f.write("\n")
  return meta


def main(argv: list[str]) -> int:
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(
      prog="python -m capsnet_jax.bundled",
      description="Make a bundle of inference weights from a trained workdir.")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--name", required=True)
  parser.add_argument("--which", default="best",
                      help="best, latest or a step number (default: best)")
  parser.add_argument("--out_root", default=WEIGHTS_DIR)
  args = parser.parse_args(argv)
  which = int(args.which) if args.which.isdigit() else args.which
  try:
    meta = export(args.workdir, args.name, which, args.out_root)
  except WorkdirError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(json.dumps(meta, sort_keys=True))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
