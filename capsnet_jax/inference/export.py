"""Bundled weights from a trained workdir (capsnet_jax.inference.bundled).

Make a bundle from a trained workdir (its best checkpoint by test accuracy,
or the latest)::

  python -m capsnet_jax.inference.export --workdir=runs/mnist_efficient \\
      --name=mnist_efficient [--which=best] [--only_if_better]

``--only_if_better`` keeps an existing bundle whose recorded test accuracy is
at least the checkpoint's (a run that goes on after its best was bundled).
"""

import datetime
import json
import os
import sys
from typing import Any

from flax import serialization
import jax
import numpy as np

from capsnet_jax.errors import WorkdirError
from capsnet_jax.inference import bundled
from capsnet_jax.inference import trained
from capsnet_jax.workdir import files
from capsnet_jax.workdir import history

WEIGHTS_DIR = bundled.WEIGHTS_DIR


def _existing_meta(folder: str) -> dict[str, Any] | None:
  """The weights.json of a bundle folder, or None when there is none."""
  path = os.path.join(folder, bundled.META_FILE)
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
  variables = {k: {g: v for g, v in dict(tree).items() if g not in bundled.LEFT_OUT}
               for k, tree in model.variables.items()}
  variables = {k: v for k, v in variables.items() if v}
  variables = jax.tree.map(np.asarray, variables)  # replicated: any shard
  os.makedirs(folder, exist_ok=True)
  weights_path = os.path.join(folder, bundled.WEIGHTS_FILE)
  with open(weights_path, "wb") as f:
    f.write(serialization.msgpack_serialize(variables))
  config = model.config.to_dict()
  for key in ("idx_dir", "tfds_data_dir", "ensemble_workdirs"):
    config[key] = ""
  with open(os.path.join(folder, bundled.CONFIG_FILE), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
  num_params = sum(int(np.size(x)) for x in jax.tree.leaves(variables["params"]))
  meta = dict(
      name=name, source_workdir=os.path.normpath(workdir), which=str(which),
      step=model.step, epoch=record.get("epoch"),
      test_accuracy=record.get("test_accuracy"),
      model=model.config.model, dataset=model.config.dataset,
      data_setup=model.config.data_setup, params=num_params,
      left_out=list(bundled.LEFT_OUT), decoder=False,
      bytes=os.path.getsize(weights_path), sha256=files.sha256(weights_path),
      created=datetime.date.today().isoformat())
  with open(os.path.join(folder, bundled.META_FILE), "w") as f:
    json.dump(meta, f, indent=2, sort_keys=True)
    f.write("\n")
  return meta


def main(argv: list[str]) -> int:
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(
      prog="python -m capsnet_jax.inference.export",
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
