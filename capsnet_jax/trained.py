"""A trained model from its workdir: config, model, restored state, inference.

Synopsis::

  from capsnet_jax import trained
  m = trained.load("runs/mnist")         # latest checkpoint, WORKDIR/config.json
  m = trained.load("runs/mnist", which="best")  # best test accuracy (or a step)
  out = m.predict(images)                # float model inputs [N, H, W, C], any N
  out["predictions"], out["lengths"], out["reconstructions"], out["class_caps"]
  out = m.predict_stored(uint8_images)   # stored images: test preprocessing first
  for r in m.predict_files(["digit.png", "scans/", "photos/*.jpg"]):
    print(r["image"], r.get("prediction"), r.get("error"))  # capsnet_jax.predict

``m.config`` is the workdir's ``config.json`` as a ConfigDict (or the config
given to ``load``), ``m.model`` the flax module, ``m.state`` the restored
TrainState replicated over the mesh of every device, ``m.info`` the dataset's
input_pipeline.DatasetInfo (shapes, classes; no data is read).

Inference runs in batches of ``m.batch_size`` (the config's eval batch size,
rounded up to a multiple of the device count), sharded over the devices; the
last batch is padded and the padding dropped, so any N gives the same outputs
as one image at a time, and one compilation per function serves every call.
The compiled functions are shared by every loaded model of the same
architecture (latest and best of a workdir, ensemble members).
"""

import dataclasses
import functools
import json
import os
from typing import Any, Callable, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from capsnet_jax import augment
from capsnet_jax import bundled
from capsnet_jax import checkpoints
from capsnet_jax import conv
from capsnet_jax import input_pipeline
from capsnet_jax import mesh as mesh_lib
from capsnet_jax import models
from capsnet_jax import train
from capsnet_jax import validation
from capsnet_jax import workdirs
from capsnet_jax.errors import ConfigError, WorkdirError

WHICH = ("latest", "best")
# What predict returns by default; OUTPUT_KEYS adds the routing internals.
PREDICT_KEYS = ("lengths", "predictions", "reconstructions", "class_caps")
OUTPUT_KEYS = PREDICT_KEYS + ("primary_caps", "coupling")
# Fields of a config that only say where the training data was.
_DATA_LOCATION_FIELDS = ("idx_dir", "tfds_data_dir")


# --------------------------------------------------------------------------
# Reading a workdir.


def open_checkpoints(workdir: str) -> checkpoints.Checkpointer:
  """The workdir's checkpoints; WorkdirError if there are none."""
  ckpt = checkpoints.Checkpointer(workdir, create=False) if os.path.isdir(
      checkpoints.checkpoint_dir(workdir)) else None
  if ckpt is None or ckpt.latest_step() is None:
    if ckpt is not None:
      ckpt.close()
    raise WorkdirError(f"no checkpoint in {workdir!r}: train first with "
                       f"--mode=train --workdir={workdir}")
  return ckpt


def read_config(workdir: str) -> ml_collections.ConfigDict | None:
  """WORKDIR/config.json (written when training starts), or None."""
  path = os.path.join(bundled.resolve(workdir), workdirs.CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return ml_collections.ConfigDict(workdirs.with_legacy_fields(json.load(f)))


def with_workdir_model(config, workdir: str) -> ml_collections.ConfigDict:
  """A copy of ``config`` whose model and data fields (workdirs.IDENTITY_FIELDS)
  are those recorded in ``workdir``: e.g. a command-line config's batch sizes
  with the architecture that the checkpoint was trained with."""
  merged = ml_collections.ConfigDict(config.to_dict())
  saved = read_config(workdir)
  if saved is not None:
    for key in workdirs.IDENTITY_FIELDS:
      if key in saved:
        merged[key] = saved[key]
  return merged


def which_checkpoint(config) -> str | int:
  """``config.checkpoint`` as ``load``'s ``which``: "latest", "best" or a
  step number (validation.validate_config checks the value)."""
  which = config.get("checkpoint", "latest")
  return int(which) if str(which).isdigit() else which


def _select_step(ckpt: checkpoints.Checkpointer, which, workdir: str) -> int:
  if which == "latest":
    return ckpt.latest_step()
  if which == "best":
    step = ckpt.best_step()
    if step is None:
      raise WorkdirError(f"no best checkpoint in {workdir!r}: none was saved "
                         "with a test accuracy; use which='latest'")
    return step
  if isinstance(which, (int, np.integer)) and not isinstance(which, bool):
    if int(which) not in ckpt.all_steps():
      raise WorkdirError(f"no checkpoint of step {which} in {workdir!r}; it "
                         f"has steps {ckpt.all_steps()}")
    return int(which)
  raise ConfigError(f"Unknown checkpoint {which!r}; valid: "
                    f"{', '.join(WHICH)} or a step number")


def abstract_state(config, model: models.CapsNet, mesh) -> train.TrainState:
  """The TrainState's structure as ShapeDtypeStructs replicated over ``mesh``
  (what a checkpoint restores into), without computing any parameters."""
  shapes = jax.eval_shape(lambda: train.create_train_state(
      config, model, jax.random.key(config.seed)))
  sharding = mesh_lib.replicated(mesh)
  return jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def load(workdir: str, which="latest", config=None,
         batch_size: int | None = None) -> "TrainedModel":
  """Restores a checkpoint of ``workdir`` for inference.

  Args:
    workdir: a training workdir, or bundled weights ("bundled:NAME" or the
      bundle's folder; capsnet_jax.bundled), which have one state and no
      decoder.
    which: "latest", "best" (highest test accuracy) or a step number.
    config: the run's config; None reads WORKDIR/config.json. A given config
      must describe the same model and data as the workdir's record.
    batch_size: inference batch; default the config's eval batch size.

  Raises:
    errors.WorkdirError: no checkpoint (or no such one), no config.json and
      no config given, a config of another model, a checkpoint that does not
      match the model; bundled weights that are damaged or do not match.
  """
  if bundled.is_bundle(workdir):
    return _load_bundle(bundled.resolve(workdir), which, config, batch_size)
  ckpt = open_checkpoints(workdir)
  try:
    step = _select_step(ckpt, which, workdir)
    if config is None:
      config = read_config(workdir)
      if config is None:
        raise WorkdirError(f"no {workdirs.CONFIG_FILE} in {workdir!r}: pass "
                           "the config it was trained with")
    else:
      workdirs.check_compatible(workdir, config)
    # The data location does not matter here and may no longer exist.
    checked = ml_collections.ConfigDict(config.to_dict())
    for key in _DATA_LOCATION_FIELDS:
      if key in checked:
        checked[key] = ""
    validation.validate_config(checked, "predict")
    info = input_pipeline.dataset_info(config.dataset, config.data_setup)
    mesh = mesh_lib.make_mesh()
    model = models.create_model(config, image_shape=info.image_shape,
                                num_classes=info.num_classes)
    try:
      state = ckpt.restore(abstract_state(config, model, mesh), step)
    except (ValueError, KeyError, TypeError) as e:
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise WorkdirError(f"the checkpoint of step {step} in {workdir!r} does "
                         f"not match the configured model ({first})") from e
  finally:
    ckpt.close()
  batch = _inference_batch(config, batch_size)
  logging.info("Loaded the checkpoint of step %d (%s) of %s", int(state.step),
               which, workdir)
  return TrainedModel(workdir=workdir, config=config, model=model, state=state,
                      info=info, mesh=mesh, batch_size=batch)


def _inference_batch(config, batch_size: int | None) -> int:
  """The given batch, else the config's eval (or training) batch, rounded up
  to a multiple of the device count."""
  batch = batch_size or config.get("eval_batch_size") or config.batch_size
  return -(-int(batch) // jax.device_count()) * jax.device_count()


def _load_bundle(folder: str, which, config, batch_size: int | None
                 ) -> "TrainedModel":
  """load() for a bundle: its variables on the model's structure (the
  decoder and optimiser state zero and unused). A bundle holds one state:
  ``which`` may be "latest", "best" or its step."""
  meta, variables = bundled.read(folder)
  if which not in WHICH and which != meta["step"]:
    raise WorkdirError(f"the bundled weights {folder!r} hold one state, of "
                       f"step {meta['step']}: no checkpoint {which!r}")
  if config is None:
    config = read_config(folder)
  else:
    workdirs.check_compatible(folder, config)
  validation.validate_config(config, "predict")
  info = input_pipeline.dataset_info(config.dataset, config.data_setup)
  mesh = mesh_lib.make_mesh()
  model = models.create_model(config, image_shape=info.image_shape,
                              num_classes=info.num_classes)
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                       abstract_state(config, model, mesh))
  state = zeros.replace(
      step=np.asarray(meta["step"], zeros.step.dtype),
      params=bundled.fill(zeros.params, variables["params"], "parameter"),
      batch_stats=(bundled.fill(zeros.batch_stats,
                                variables.get("batch_stats", {}),
                                "batch statistic")
                   if zeros.batch_stats else zeros.batch_stats))
  state = jax.device_put(state, mesh_lib.replicated(mesh))
  batch = _inference_batch(config, batch_size)
  logging.info("Loaded the bundled weights %s (step %d, test accuracy %s)",
               folder, meta["step"], meta.get("test_accuracy"))
  return TrainedModel(workdir=folder, config=config, model=model, state=state,
                      info=info, mesh=mesh, batch_size=batch,
                      has_decoder=bool(meta.get("decoder", False)))


# --------------------------------------------------------------------------
# Inference.


@dataclasses.dataclass(frozen=True)
class _Compiled:
  preprocess: Callable  # stored uint8 batch -> float model input
  forward: Callable  # (variables, inputs) -> every model output
  decode: Callable  # (variables, class_caps, labels) -> reconstructions


@functools.lru_cache(maxsize=None)
def _compiled(model: models.CapsNet, mesh, dataset: str, setup: str) -> _Compiled:
  """The jit-compiled functions of one architecture, shared across loads."""
  # Forward-only passes may use a faster convolution formulation.
  model = model.clone(conv_impl=conv.inference_impl(model.conv_impl))
  rep, sharded = mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)
  preprocess = augment.make_preprocess_fn(dataset, setup, train=False)
  return _Compiled(
      preprocess=jax.jit(lambda x: preprocess(x, None), in_shardings=sharded,
                         out_shardings=sharded),
      forward=jax.jit(lambda v, x: model.apply(v, x, train=False),
                      in_shardings=(rep, sharded), out_shardings=rep),
      decode=jax.jit(
          lambda v, caps, labels: model.apply(v, caps, labels,
                                              method=model.decode),
          in_shardings=(rep, sharded, sharded), out_shardings=rep))


def _fetch(x: jax.Array) -> np.ndarray:
  """A global array's whole value on this host (any number of processes)."""
  if x.is_fully_addressable:
    return np.asarray(x)
  if x.is_fully_replicated:
    return np.asarray(x.addressable_data(0))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


@dataclasses.dataclass
class TrainedModel:
  """A restored model with batched, padded, sharded inference (see load)."""
  workdir: str
  config: ml_collections.ConfigDict
  model: models.CapsNet
  state: train.TrainState
  info: input_pipeline.DatasetInfo
  mesh: jax.sharding.Mesh
  batch_size: int
  # False for bundled weights, which leave the decoder out: no
  # reconstructions (predict's default outputs leave them out too).
  has_decoder: bool = True

  @property
  def step(self) -> int:
    return int(self.state.step)

  @property
  def variables(self) -> dict[str, Any]:
    return train.model_variables(self.state)

  @property
  def num_params(self) -> int:
    return train.count_params(self.state.params)

  @property
  def _fns(self) -> _Compiled:
    return _compiled(self.model, self.mesh, self.config.dataset,
                     self.config.data_setup)

  def _batches(self, arrays: Sequence[np.ndarray]):
    """(number of real examples, sharded padded arrays) per batch."""
    n, b = len(arrays[0]), self.batch_size
    sharding = mesh_lib.batch_sharded(self.mesh)
    for lo in range(0, max(n, 1), b):
      chunks = [a[lo:lo + b] for a in arrays]
      real = len(chunks[0])
      chunks = [np.concatenate([c, np.zeros((b - real, *c.shape[1:]), c.dtype)])
                if real < b else c for c in chunks]
      yield real, [mesh_lib.shard_replicated_input(c, sharding) for c in chunks]

  def _check(self, images, shape, what: str, dtype) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(shape):
      raise ValueError(f"{what} must be [N, {', '.join(map(str, shape))}], got "
                       f"{list(images.shape)}")
    return images.astype(dtype, copy=False)

  def _run(self, stored: bool, images, keys) -> dict[str, np.ndarray]:
    unknown = set(keys) - set(OUTPUT_KEYS)
    if unknown:
      raise ValueError(f"Unknown outputs {sorted(unknown)}; valid: {OUTPUT_KEYS}")
    if not self.has_decoder and "reconstructions" in keys:
      raise ValueError(f"{self.workdir} has no decoder (bundled weights): "
                       "no reconstructions")
    if stored:
      images = self._check(images, self.info.stored_shape,
                           "stored images (uint8)", np.uint8)
    else:
      images = self._check(images, self.info.image_shape, "model inputs",
                           np.float32)
    fns, variables = self._fns, self.variables
    results = {k: [] for k in keys}
    for real, (x,) in self._batches([images]):
      out = fns.forward(variables, fns.preprocess(x) if stored else x)
      for k in keys:
        results[k].append(_fetch(out[k])[:real])
    return {k: np.concatenate(v) for k, v in results.items()}

  @property
  def predict_keys(self) -> tuple[str, ...]:
    """predict's default outputs (without reconstructions if no decoder)."""
    return PREDICT_KEYS if self.has_decoder else tuple(
        k for k in PREDICT_KEYS if k != "reconstructions")

  def predict(self, images, keys: Sequence[str] | None = None
              ) -> dict[str, np.ndarray]:
    """Model outputs for float model inputs [N, H, W, C] (info.image_shape).

    Returns numpy arrays: lengths [N, K], predictions [N] (longest capsule),
    reconstructions [N, H, W, C] (decoded from the predicted capsule),
    class_caps [N, K, D]; with ``keys`` also primary_caps [N, P, 8] and
    coupling [N, P, K].
    """
    return self._run(False, images, tuple(keys or self.predict_keys))

  def predict_stored(self, images, keys: Sequence[str] | None = None
                     ) -> dict[str, np.ndarray]:
    """``predict`` for uint8 images as the dataset stores them
    [N, *info.stored_shape], after the dataset's test preprocessing."""
    return self._run(True, images, tuple(keys or self.predict_keys))

  def preprocess(self, images) -> np.ndarray:
    """Stored uint8 images -> float model inputs (test preprocessing)."""
    images = self._check(images, self.info.stored_shape, "stored images (uint8)",
                         np.uint8)
    out = [_fetch(self._fns.preprocess(x))[:real]
           for real, (x,) in self._batches([images])]
    return np.concatenate(out)

  def display(self, inputs) -> np.ndarray:
    """Model inputs [N, H, W, C] -> what the decoder reconstructs, in [0, 1]
    (the inputs themselves unless they are standardised)."""
    return np.asarray(augment.reconstruction_target(
        np.asarray(inputs, np.float32), self.config.dataset,
        self.config.data_setup))

  def decode(self, class_caps, labels) -> np.ndarray:
    """Reconstructions [N, H, W, C] from class capsules [N, K, D], each
    masked to its ``labels`` [N] capsule."""
    if not self.has_decoder:
      raise ValueError(f"{self.workdir} has no decoder (bundled weights)")
    class_caps = np.asarray(class_caps, np.float32)
    labels = np.asarray(labels, np.int32)
    fns, variables = self._fns, self.variables
    out = [_fetch(fns.decode(variables, caps, lab))[:real]
           for real, (caps, lab) in self._batches([class_caps, labels])]
    return np.concatenate(out)

  def predict_files(self, paths: Sequence[str], invert: str = "auto"
                    ) -> list[dict[str, Any]]:
    """Predictions for image files, folders or globs: see capsnet_jax.predict."""
    from capsnet_jax import predict  # pylint: disable=g-import-not-at-top
    return predict.predict_files(self, paths, invert=invert)
