"""Trained weights that ship with the package: predict without training.

Synopsis::

  capsnet-jax --config=mnist_efficient --mode=predict \\
      --workdir=bundled:mnist_efficient --images=digit.png
  m = capsnet_jax.load("bundled:mnist_efficient")  # a trained.TrainedModel
  m.predict(images)["predictions"]

A bundle is a folder ``capsnet_jax/weights/NAME/`` holding

- ``config.json``: the training run's config (what builds the model);
- ``weights.msgpack``: the inference variables (``params`` and the batch-norm
  statistics, no optimiser state) in flax's msgpack format; the
  reconstruction decoder, which holds most of the parameters, stored as
  float16 (or left out: then no reconstructions), and optionally the large
  kernels as int8 (below), so that a bundle stays small;
- ``weights.json``: where the weights come from (workdir, step, the test
  accuracy at that step, the date), ``sha256`` and ``bytes`` of
  ``weights.msgpack``, ``config_sha256`` of ``config.json``, ``decoder``
  (false: no reconstructions), ``decoder_dtype`` and ``quantized`` (the
  parameters stored as int8, see below).

A large kernel may be stored as int8 with one float32 scale per output
channel (export's ``--quantize=int8``): in weights.msgpack it is the pair
``{"int8": q, "scale": s}`` (QUANTIZED_KEYS), read back as q * s in
float32 (``dequantize``). The scales are max |x| / 127 over everything but
the output channels (the last axis of a conv or dense kernel; the class
and pose axes K and D of the class capsules' W [N, K, D, d]), so each
value is within half a scale step of the trained one.

Both checksums are verified on every load, on the very bytes then
parsed (each file is read once): a damaged or replaced ``weights.msgpack``
or ``config.json`` is a WorkdirError, as is a ``weights.json`` that is not
a JSON object holding both, and weights that msgpack cannot parse.
capsnet_jax.inference.export makes a bundle from a trained workdir.
"""

import json
import os
from typing import Any

from flax import serialization
from flax import traverse_util
import numpy as np

from capsnet_jax.errors import WorkdirError
from capsnet_jax.workdir import files

PREFIX = "bundled:"
# capsnet_jax/weights/NAME/ (package data).
WEIGHTS_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")
WEIGHTS_FILE = "weights.msgpack"
META_FILE = "weights.json"
CONFIG_FILE = "config.json"
# Top-level parameter groups left out of a bundle without its decoder.
LEFT_OUT = ("decoder",)
# The pair an int8-quantised parameter is stored as.
QUANTIZED_KEYS = ("int8", "scale")


def quantization_axes(path: tuple[str, ...], ndim: int) -> tuple[int, ...]:
  """The output-channel axes of the parameter at ``path`` (kept by its
  scales): K and D of the class capsules' W [N, K, D, d], else the last."""
  if path[-1] == "W" and ndim == 4:
    return (1, 2)
  return (ndim - 1,)


def quantize(path: tuple[str, ...], x: np.ndarray) -> dict[str, np.ndarray]:
  """``x`` as {"int8": q, "scale": s}: s = max |x| / 127 over every axis
  but the output channels (quantization_axes; 1 where that is 0), q =
  round(x / s) in [-127, 127]."""
  x = np.asarray(x, np.float32)
  keep = quantization_axes(path, x.ndim)
  reduce = tuple(a for a in range(x.ndim) if a not in keep)
  scale = np.max(np.abs(x), axis=reduce, keepdims=True) / 127.0
  scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
  q = np.clip(np.rint(x / scale), -127, 127).astype(np.int8)
  return {"int8": q, "scale": scale}


def dequantize(tree: Any, where: str = "weights") -> Any:
  """``tree`` with every {"int8": q, "scale": s} pair replaced by q * s in
  float32; WorkdirError where the two do not broadcast or q is not int8."""
  if not isinstance(tree, dict):
    return tree
  if set(tree) == set(QUANTIZED_KEYS):
    q, scale = np.asarray(tree["int8"]), np.asarray(tree["scale"])
    if (q.dtype != np.int8 or scale.ndim != q.ndim or any(
        d not in (1, n) for d, n in zip(scale.shape, q.shape))):
      raise WorkdirError(f"{where}: a quantised parameter of shape "
                         f"{list(q.shape)} ({q.dtype}) has scales of shape "
                         f"{list(scale.shape)}: export the bundle again "
                         "(capsnet_jax.inference.export)")
    return q.astype(np.float32) * scale.astype(np.float32)
  return {k: dequantize(v, where) for k, v in tree.items()}


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


def read(folder: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """(metadata, variables as nested dicts of numpy arrays) of a bundle
  folder; WorkdirError if a file is missing, a checksum differs or the
  weights cannot be parsed (see read_with_config)."""
  meta, _, variables = read_with_config(folder)
  return meta, variables


def read_with_config(folder: str
                     ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
  """(metadata, config record, variables) of a bundle folder. Each file is
  read once and its checksum verified on those bytes, which are the ones
  parsed: a file replaced meanwhile cannot slip in between the check and
  the parse. A folder that a crash left aside mid-swap is put back first
  (files.recover_folder).

  Raises:
    WorkdirError: a file is missing, a checksum differs, or a file cannot
      be parsed (msgpack's errors included).
  """
  files.recover_folder(folder)
  meta_path = os.path.join(folder, META_FILE)
  weights_path = os.path.join(folder, WEIGHTS_FILE)
  for path in (meta_path, weights_path, os.path.join(folder, CONFIG_FILE)):
    if not os.path.exists(path):
      raise WorkdirError(f"bundle {folder!r} has no {os.path.basename(path)}")
  meta = files.read_json_object(meta_path, meta_path, "the bundle is damaged")
  data = {}
  for key, name in (("sha256", WEIGHTS_FILE), ("config_sha256", CONFIG_FILE)):
    if not isinstance(meta.get(key), str):
      raise WorkdirError(f"{meta_path} records no {key} of {name}: export "
                         "the bundle again (capsnet_jax.inference.export)")
    data[name] = files.read_verified(os.path.join(folder, name), meta[key],
                                     META_FILE)
  if isinstance(meta.get("step"), bool) or not isinstance(meta.get("step"), int):
    raise WorkdirError(f"{meta_path} records no step (a whole number): "
                       "export the bundle again (capsnet_jax.inference.export)")
  config_path = os.path.join(folder, CONFIG_FILE)
  try:
    config = json.loads(data[CONFIG_FILE])
  except (ValueError, RecursionError) as e:
    raise WorkdirError(f"{config_path} cannot be read ({e}); export the "
                       "bundle again (capsnet_jax.inference.export)") from None
  if not isinstance(config, dict):
    raise WorkdirError(f"{config_path} is not a JSON object; export the "
                       "bundle again (capsnet_jax.inference.export)")
  try:
    variables = serialization.msgpack_restore(data[WEIGHTS_FILE])
  except Exception as e:  # pylint: disable=broad-except  # msgpack's own
    raise WorkdirError(f"{weights_path} cannot be read as msgpack "
                       f"({type(e).__name__}: {e}); export the bundle again "
                       "(capsnet_jax.inference.export)") from None
  if not isinstance(variables, dict) or not isinstance(
      variables.get("params"), dict):
    raise WorkdirError(f"{weights_path} holds no parameters: export the "
                       "bundle again (capsnet_jax.inference.export)")
  return meta, config, dequantize(variables, weights_path)


def fill(tree: Any, given: dict[str, Any], what: str,
         may_lack: tuple[str, ...] = ()) -> Any:
  """``tree`` (nested dicts of arrays) with the leaves that ``given`` holds
  replaced by its values (same shapes). Leaves under a top-level name in
  ``may_lack`` (a decoder left out) may be missing and stay as they are; any
  other missing leaf is an error."""
  flat = traverse_util.flatten_dict(dict(tree))
  given_flat = traverse_util.flatten_dict(dict(given))
  missing = [p for p in flat if p not in given_flat and p[0] not in may_lack]
  if missing:
    raise WorkdirError(
        f"the bundle lacks the {what} {'/'.join(missing[0])} of the "
        f"configured model ({len(missing)} missing): export it again "
        "(capsnet_jax.inference.export)")
  for path, value in given_flat.items():
    if path not in flat:
      raise WorkdirError(f"the bundle's {what} {'/'.join(path)} is not in "
                         "the configured model")
    if tuple(np.shape(value)) != tuple(flat[path].shape):
      raise WorkdirError(f"the bundle's {what} {'/'.join(path)} has shape "
                         f"{list(np.shape(value))}, the model "
                         f"{list(flat[path].shape)}")
    flat[path] = np.asarray(value, flat[path].dtype)
  return traverse_util.unflatten_dict(flat)
