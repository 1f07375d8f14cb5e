"""Bundled weights from a trained workdir (capsnet_jax.inference.bundled).

Make a bundle from a trained workdir (its best checkpoint by test accuracy,
or the latest)::

  python -m capsnet_jax.inference.export --workdir=runs/mnist_efficient \\
      --name=mnist_efficient [--which=best] [--only_if_better]

``--only_if_better`` keeps an existing bundle whose recorded test accuracy is
at least the checkpoint's (a run that goes on after its best was bundled).
The reconstruction decoder is stored as float16 (``--decoder_dtype``:
float16, float32 or none); ``--quantize=int8`` stores the parameters of at
least 1M values (CapsNet's primary-capsule kernel and W) as int8 with
per-output-channel scales (capsnet_jax.inference.bundled).

Add a decoder to a bundle that has none, from a checkpoint that continues
the same run (how the shipped mnist_efficient bundle got its decoder)::

  python -m capsnet_jax.inference.export --add_decoder --name=mnist_efficient \
      --workdir=runs/eff_recover --which=277500

The bundle is written whole into a temporary folder beside it, fsynced and
renamed into place (an existing bundle is moved aside first and deleted
last), so a bundle is the old one or the new one, never a mix. weights.json
records the sha256 of weights.msgpack and of config.json, which
capsnet_jax.inference.bundled.read verifies.
"""

import datetime
import json
import os
import sys
from typing import Any

from flax import serialization
from flax import traverse_util
import jax
import numpy as np

from capsnet_jax import errors
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
  return files.read_json_object(
      path, path, "delete the bundle folder to export it afresh")


DECODER_DTYPES = ("float16", "float32", "none")
QUANTIZE = ("none", "int8")
# Parameters of at least this many values are quantised by quantize="int8":
# CapsNet's primary-capsule kernel (5.3M) and class capsules' W (1.47M).
QUANTIZE_MIN_SIZE = 1_000_000


def export(workdir: str, name: str, which="best",
           out_root: str = WEIGHTS_DIR,
           only_if_better: bool = False,
           decoder_dtype: str = "float16", quantize: str = "none",
           quantize_min_size: int = QUANTIZE_MIN_SIZE) -> dict[str, Any]:
  """Writes the bundle ``out_root/name`` from a checkpoint of ``workdir``
  (``which``: "best", "latest" or a step); returns its metadata.

  The reconstruction decoder holds most of the parameters (1.41M of
  Efficient-CapsNet's 1.57M): ``decoder_dtype`` "float16" (default) stores
  it at half size (reconstructions change by less than 1e-3 a pixel),
  "float32" as trained, "none" leaves it out (the bundle then classifies
  but cannot reconstruct). The encoder is always stored as trained.

  With ``only_if_better``, an existing bundle of that name whose recorded
  test accuracy is at least the checkpoint's stays as it is, and its
  metadata is returned: a run restored on a new machine from its latest
  checkpoint cannot replace the better weights bundled before.

  ``quantize`` "int8" stores every parameter of at least
  ``quantize_min_size`` values as int8 with per-output-channel float32
  scales (bundled.quantize; CapsNet: the primary-capsule kernel and W, 6.8M
  of its 7.05M parameters with the deconv decoder), dequantised on load;
  weights.json's ``quantized`` lists them."""
  if jax.process_count() > 1:
    raise WorkdirError("make a bundle in one process")
  if decoder_dtype not in DECODER_DTYPES:
    raise WorkdirError(f"Unknown decoder_dtype {decoder_dtype!r}; valid: "
                       f"{', '.join(DECODER_DTYPES)}")
  if quantize not in QUANTIZE:
    raise WorkdirError(f"Unknown quantize {quantize!r}; valid: "
                       f"{', '.join(QUANTIZE)}")
  model = trained.load(workdir, which=which)
  with_decoder = decoder_dtype != "none" and model.has_decoder
  record = next((r for r in history.read(workdir) if r["step"] == model.step),
                {})
  folder = os.path.join(out_root, name)
  old = _existing_meta(folder)
  if only_if_better and old is not None:
    if (old.get("test_accuracy") is not None
        and (record.get("test_accuracy") is None
             or record["test_accuracy"] <= old["test_accuracy"])):
      return old
  variables = jax.tree.map(np.asarray, model.variables)  # replicated: any shard
  variables = {k: {g: v for g, v in dict(tree).items()
                   if with_decoder or g not in bundled.LEFT_OUT}
               for k, tree in variables.items()}
  variables = {k: v for k, v in variables.items() if v}
  if with_decoder and "decoder" in variables["params"]:
    variables["params"]["decoder"] = jax.tree.map(
        lambda x: np.asarray(x, decoder_dtype), variables["params"]["decoder"])
  quantized = []
  if quantize == "int8":
    flat = traverse_util.flatten_dict(variables["params"])
    for path, value in flat.items():
      if np.size(value) >= quantize_min_size:
        flat[path] = bundled.quantize(path, value)
        quantized.append("/".join(("params",) + path))
    variables["params"] = traverse_util.unflatten_dict(flat)
  config = model.config.to_dict()
  for key in ("idx_dir", "tfds_data_dir", "ensemble_workdirs"):
    config[key] = ""
  meta = dict(
      name=name, source_workdir=os.path.normpath(workdir), which=str(which),
      step=model.step, epoch=record.get("epoch"),
      test_accuracy=record.get("test_accuracy"),
      model=model.config.model, dataset=model.config.dataset,
      data_setup=model.config.data_setup,
      left_out=[] if with_decoder else list(bundled.LEFT_OUT),
      decoder=with_decoder,
      decoder_dtype=decoder_dtype if with_decoder else None,
      quantized=sorted(quantized))
  return _write_bundle(out_root, name, variables, config, meta)


def add_decoder(name: str, workdir: str, which="latest",
                out_root: str = WEIGHTS_DIR,
                decoder_dtype: str = "float16") -> dict[str, Any]:
  """Adds to the bundle ``out_root/name`` the reconstruction decoder of a
  checkpoint of ``workdir``; returns the new metadata.

  The bundle keeps its encoder, step and recorded test accuracy; its
  weights.json gains ``decoder_source`` (the workdir, step and test
  reconstruction SSE of the checkpoint the decoder comes from). For a
  bundle exported without its decoder whose run went on: the checkpoint
  must be of the same configuration (model, dataset, setup, decoder, batch
  norm), and should
  continue the same run, so that its decoder reads the bundle's capsules.
  How well it does is for the caller to measure (docs/results.md gives the
  shipped bundle's figures).
  """
  if decoder_dtype not in DECODER_DTYPES[:2]:
    raise WorkdirError(f"decoder_dtype must be float16 or float32, got "
                       f"{decoder_dtype!r}")
  folder = os.path.join(out_root, name)
  meta, variables = bundled.read(folder)
  with open(os.path.join(folder, bundled.CONFIG_FILE)) as f:
    config = json.load(f)
  model = trained.load(workdir, which=which)
  for key in ("model", "dataset", "data_setup", "decoder", "batch_norm"):
    if model.config.get(key) != config.get(key):
      raise WorkdirError(f"{workdir} is a run of {key} "
                         f"{model.config.get(key)!r}, the bundle {name} of "
                         f"{config.get(key)!r}")
  if not model.has_decoder:
    raise WorkdirError(f"{workdir} has no decoder")
  decoder = jax.tree.map(lambda x: np.asarray(x, decoder_dtype),
                         model.variables["params"]["decoder"])
  variables["params"]["decoder"] = decoder
  # The encoder's int8 parameters, read back as q * scale, stored as int8
  # again (the same q and scales).
  flat = traverse_util.flatten_dict(variables["params"])
  for name_ in meta.get("quantized") or []:
    path = tuple(name_.split("/")[1:])
    flat[path] = bundled.quantize(path, flat[path])
  variables["params"] = traverse_util.unflatten_dict(flat)
  record = next((r for r in history.read(workdir) if r["step"] == model.step),
                {})
  meta = {k: v for k, v in meta.items()
          if k not in ("bytes", "sha256", "config_sha256", "params", "created")}
  meta.update(left_out=[], decoder=True, decoder_dtype=decoder_dtype,
              decoder_source=dict(
                  workdir=os.path.normpath(workdir), step=model.step,
                  epoch=record.get("epoch"),
                  test_accuracy=record.get("test_accuracy"),
                  test_reconstruction_loss=record.get(
                      "test_reconstruction_loss")))
  return _write_bundle(out_root, name, variables, config, meta)


def _write_bundle(out_root: str, name: str, variables: dict[str, Any],
                  config: dict[str, Any], meta: dict[str, Any]
                  ) -> dict[str, Any]:
  """Writes the bundle out_root/name whole (see the module docstring):
  ``meta`` completed with the parameter count, sizes, checksums and date."""
  with files.staged_folder(os.path.join(out_root, name)) as staging:
    weights_path = os.path.join(staging, bundled.WEIGHTS_FILE)
    config_path = os.path.join(staging, bundled.CONFIG_FILE)
    files.atomic_write_bytes(weights_path,
                             serialization.msgpack_serialize(variables))
    files.atomic_write_text(config_path,
                            json.dumps(config, indent=2, sort_keys=True))
    meta = dict(
        meta,
        params=sum(int(np.size(x)) for x in jax.tree.leaves(
            bundled.dequantize(variables["params"]))),
        bytes=os.path.getsize(weights_path),
        sha256=files.sha256(weights_path),
        config_sha256=files.sha256(config_path),
        created=datetime.date.today().isoformat())
    files.atomic_write_json(os.path.join(staging, bundled.META_FILE), meta)
  return meta


def main(argv: list[str]) -> int:
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(
      prog="python -m capsnet_jax.inference.export",
      description="Make a bundle of inference weights from a trained workdir.")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--name", required=True)
  parser.add_argument(
      "--add_decoder", action="store_true",
      help="keep the bundle NAME's encoder and add the decoder of the "
      "checkpoint --which of --workdir (a continuation of the same run)")
  parser.add_argument("--which", default="best",
                      help="best, latest or a step number (default: best)")
  parser.add_argument("--out_root", default=WEIGHTS_DIR)
  parser.add_argument(
      "--only_if_better", action="store_true",
      help="keep an existing bundle whose test accuracy is at least the "
      "checkpoint's")
  parser.add_argument(
      "--decoder_dtype", default="float16", choices=DECODER_DTYPES,
      help="how the reconstruction decoder is stored: float16 (default, "
      "half size), float32, or none (left out: no reconstructions)")
  parser.add_argument(
      "--quantize", default="none", choices=QUANTIZE,
      help="int8: parameters of at least 1M values (CapsNet's primary "
      "capsules and W) as int8 with per-output-channel scales")
  args = parser.parse_args(argv)
  which = int(args.which) if args.which.isdigit() else args.which
  before = _existing_meta(os.path.join(args.out_root, args.name))
  try:
    if args.add_decoder:
      meta = add_decoder(args.name, args.workdir, which, args.out_root,
                         args.decoder_dtype)
    else:
      meta = export(args.workdir, args.name, which, args.out_root,
                    args.only_if_better, args.decoder_dtype, args.quantize)
  except WorkdirError as e:
    print(f"error: {e}", file=sys.stderr)
    return errors.EXIT_USER_ERROR
  if args.only_if_better and meta == before:
    print(f"kept the bundle {args.name}: its test accuracy "
          f"{meta['test_accuracy']} (step {meta['step']}) is at least the "
          "checkpoint's", file=sys.stderr)
  print(json.dumps(meta, sort_keys=True))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
