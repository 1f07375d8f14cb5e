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
      --name=mnist_efficient [--which=best] [--only_if_better]

``--only_if_better`` keeps an existing bundle whose recorded test accuracy is
at least the checkpoint's (a run that goes on after its best was bundled).
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


def _existing_meta(folder: str) -> dict[str, Any] | None:
  """The weights.json of a bundle folder, or None when there is none."""
  path = os.path.join(folder, META_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def export(workdir: str, name: str, which="best",
           out_root: str = WEIGHTS_DIR,
           only_if_better: bool = False) -> dict[str, Any]:
  """Writes the bundle ``out_root/name`` from a checkpoint of ``workdir``
  (``which``: "best", "latest" or a step); returns its metadata.

  With ``only_if_better``, an existing bundle of that name whose recorded
  test accuracy is at least the checkpoint's stays as it is, and its
  metadata is returned: a run restored on a new machine from its latest
  checkpoint cannot replace the better weights bundled before."""
  from capsnet_jax import history  # pylint: disable=g-import-not-at-top
  from capsnet_jax import trained  # pylint: disable=g-import-not-at-top
  if jax.process_count() > 1:
    raise WorkdirError("make a bundle in one process")
  model = trained.load(workdir, which=which)
  record = next((r for r in history.read(workdir) if r["step"] == model.step),
                {})
  folder = os.path.join(out_root, name)
  old = _existing_meta(folder)
  if only_if_better and old is not None:
    if (old.get("test_accuracy") is not None
        and (record.get("test_accuracy") is None
             or record["test_accuracy"] <= old["test_accuracy"])):
      return old
  variables = {k: {g: v for g, v in dict(tree).items() if g not in LEFT_OUT}
               for k, tree in model.variables.items()}
  variables = {k: v for k, v in variables.items() if v}
  variables = jax.tree.map(np.asarray, variables)  # replicated: any shard
  os.makedirs(folder, exist_ok=True)
  weights_path = os.path.join(folder, WEIGHTS_FILE)
  with open(weights_path, "wb") as f:
    f.write(serialization.msgpack_serialize(variables))
  config = model.config.to_dict()
  for key in ("idx_dir", "tfds_data_dir", "ensemble_workdirs"):
    config[key] = ""
  with open(os.path.join(folder, CONFIG_FILE), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
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
  parser.add_argument(
      "--only_if_better", action="store_true",
      help="keep an existing bundle whose test accuracy is at least the "
      "checkpoint's")
  args = parser.parse_args(argv)
  which = int(args.which) if args.which.isdigit() else args.which
  before = _existing_meta(os.path.join(args.out_root, args.name))
  try:
    meta = export(args.workdir, args.name, which, args.out_root,
                  args.only_if_better)
  except WorkdirError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if args.only_if_better and meta == before:
    print(f"kept the bundle {args.name}: its test accuracy "
          f"{meta['test_accuracy']} (step {meta['step']}) is at least the "
          "checkpoint's", file=sys.stderr)
  print(json.dumps(meta, sort_keys=True))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
