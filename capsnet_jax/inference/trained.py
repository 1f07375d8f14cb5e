"""A trained model, from its workdir or bundled weights: load and predict.

Synopsis (``capsnet_jax.load`` is ``load`` below)::

  >>> import capsnet_jax, numpy as np
  >>> from capsnet_jax.data import idx
  >>> images, labels = idx.load_mnist_idx("../shared/data/mnist", "test")
  >>> m = capsnet_jax.load("bundled:mnist_efficient")   # or "runs/mnist"
  >>> out = m.predict(images[:8])           # uint8 0..255, [8, 28, 28]
  >>> out.predictions.tolist()
  [7, 2, 1, 0, 4, 1, 4, 9]
  >>> out.lengths.shape, out.reconstructions.shape
  ((8, 10), (8, 28, 28, 1))
  >>> r = m.predict_files(["docs/examples/mnist_test0_label7.png"])[0]
  >>> r["prediction"]
  7

``load(workdir, which="latest"|"best"|STEP)`` reads WORKDIR/config.json and a
checkpoint (or a bundle). ``m.predict`` takes images as a person has them
(uint8 0..255 or floats in [0, 1], the dataset's stored size) and applies the
dataset's test-time preprocessing; ``m.predict_preprocessed`` takes model
inputs after it and refuses anything at another scale;
``m.predict_files`` reads image files of any size (capsnet_jax.inference.
predict); ``m.decode`` reconstructs from class capsules. ``m.classify``
gives (predictions, per-class scores) for every model family, the baseline
CNNs included (their predict has scores and predictions only).

``m.experiment`` is the run's resolved config (``m.config`` its values,
``m.model`` the flax module, ``m.info`` the dataset's shapes and classes),
``m.state`` the restored TrainState replicated over the mesh of every device.

Inference runs in batches of ``m.batch_size`` (the config's eval batch size,
rounded up to a multiple of the device count), sharded over the devices; the
last batch is padded and the padding dropped, so any N gives the same outputs
as one image at a time, and one compilation per function serves every call.
The compiled functions are shared by every loaded model of the same
architecture (latest and best of a workdir, ensemble members).
"""

import dataclasses
import functools
from typing import Any, Callable, Sequence

from absl import logging
import flax.linen as nn
import jax
import ml_collections
import numpy as np

from capsnet_jax import experiment
from capsnet_jax import processes
from capsnet_jax.data import datasets
from capsnet_jax.errors import ConfigError, WorkdirError
from capsnet_jax.inference import bundled
from capsnet_jax.model import conv
from capsnet_jax.training import mesh as mesh_lib
from capsnet_jax.training import state as state_lib
from capsnet_jax.workdir import checkpoints
from capsnet_jax.workdir import record

WHICH = ("latest", "best")
# What predict returns by default; OUTPUT_KEYS adds the routing internals
# and the per-class scores of every family (the order of the fields of
# Prediction).
PREDICT_KEYS = ("lengths", "predictions", "class_caps", "reconstructions")
OUTPUT_KEYS = PREDICT_KEYS + ("primary_caps", "coupling", "scores")
# What a baseline CNN (no capsules, no decoder) has of them, and returns by
# default.
CLASSIFIER_KEYS = ("scores", "predictions")
# Fields of a config that only say where the training data was.
_DATA_LOCATION_FIELDS = ("idx_dir", "tfds_data_dir")


# --------------------------------------------------------------------------
# Reading a workdir.


def open_checkpoints(workdir: str) -> checkpoints.Checkpointer:
  """The workdir's checkpoints; WorkdirError if there are none."""
  if checkpoints.latest_step(workdir) is None:
    raise WorkdirError(f"no checkpoint in {workdir!r}: train first with "
                       f"--mode=train --workdir={workdir}")
  return checkpoints.Checkpointer(workdir, create=False)


def read_config(workdir: str) -> ml_collections.ConfigDict | None:
  """WORKDIR/config.json (written when training starts, legacy-filled), or
  None; a bundle's config for bundled weights."""
  saved = record.read_config(bundled.resolve(workdir))
  return None if saved is None else ml_collections.ConfigDict(saved)


def with_workdir_model(config, workdir: str) -> ml_collections.ConfigDict:
  """A copy of ``config`` whose model and data fields
  (experiment.IDENTITY_FIELDS) are those recorded in ``workdir``: e.g. a
  command-line config's batch sizes with the architecture that the
  checkpoint was trained with."""
  merged = ml_collections.ConfigDict(config.to_dict())
  saved = read_config(workdir)
  if saved is not None:
    for key in experiment.IDENTITY_FIELDS:
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


def _experiment(workdir: str, config) -> experiment.Experiment:
  """The workdir's experiment for inference: its recorded config, or the
  given one (which must describe the same model and data)."""
  if isinstance(config, experiment.Experiment):
    exp = config
  else:
    if config is None:
      config = read_config(workdir)
      if config is None:
        raise WorkdirError(f"no {record.CONFIG_FILE} in {workdir!r}: pass "
                           "the config it was trained with")
    config = ml_collections.ConfigDict(config.to_dict())
    # The data location does not matter here and may no longer exist.
    for key in _DATA_LOCATION_FIELDS:
      if key in config:
        config[key] = ""
    exp = experiment.resolve(config, "predict")
  record.check_compatible(bundled.resolve(workdir), exp.identity())
  return exp


def load(workdir: str, which="latest", config=None,
         batch_size: int | None = None) -> "TrainedModel":
  """Restores a checkpoint of ``workdir`` for inference.

  >>> import capsnet_jax
  >>> m = capsnet_jax.load("bundled:mnist_efficient")
  >>> m.info.name, m.info.stored_shape, m.step
  ('mnist', (28, 28, 1), 277500)

  Args:
    workdir: a training workdir, or bundled weights ("bundled:NAME" or the
      bundle's folder; capsnet_jax.inference.bundled), which have one state.
    which: "latest", "best" (highest test accuracy) or a step number.
    config: the run's config or experiment; None reads WORKDIR/config.json.
      A given config must describe the same model and data as the
      workdir's record.
    batch_size: inference batch; default the config's eval batch size.

  Raises:
    errors.WorkdirError: no checkpoint (or no such one), no config.json and
      no config given, a config of another model, a checkpoint that does not
      match the model; bundled weights that are damaged or do not match.
  """
  if bundled.is_bundle(workdir):
    return _load_bundle(bundled.resolve(workdir), which, config, batch_size)
  ckpt = open_checkpoints(workdir)  # first: an empty folder needs training
  try:
    exp = _experiment(workdir, config)
    step = _select_step(ckpt, which, workdir)
    mesh = mesh_lib.make_mesh()
    try:
      state = ckpt.restore(state_lib.abstract(exp, mesh), step)
    except (ValueError, KeyError, TypeError) as e:
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise WorkdirError(f"the checkpoint of step {step} in {workdir!r} does "
                         f"not match the configured model ({first})") from e
  finally:
    ckpt.close()
  logging.info("Loaded the checkpoint of step %d (%s) of %s", int(state.step),
               which, workdir)
  return TrainedModel(workdir=workdir, experiment=exp, state=state, mesh=mesh,
                      batch_size=_inference_batch(exp, batch_size),
                      has_decoder=exp.capsules)


def _inference_batch(exp: experiment.Experiment, batch_size: int | None) -> int:
  """The given batch, else the config's eval (or training) batch, rounded up
  to a multiple of the device count."""
  batch = batch_size or exp.eval_batch_size
  return -(-int(batch) // jax.device_count()) * jax.device_count()


def _load_bundle(folder: str, which, config, batch_size: int | None
                 ) -> "TrainedModel":
  """load() for a bundle: its variables on the model's structure (what it
  leaves out, and the optimiser state, zero and unused). A bundle holds one
  state: ``which`` may be "latest", "best" or its step."""
  meta, saved, variables = bundled.read_with_config(folder)
  if which not in WHICH and which != meta["step"]:
    raise WorkdirError(f"the bundled weights {folder!r} hold one state, of "
                       f"step {meta['step']}: no checkpoint {which!r}")
  if config is None:  # the config whose checksum was verified, not a reread
    config = ml_collections.ConfigDict(record.with_legacy_fields(saved))
  exp = _experiment(folder, config)
  mesh = mesh_lib.make_mesh()
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                       state_lib.abstract(exp, mesh))
  # A bundle exported without its decoder says so; nothing else may lack.
  optional = () if meta.get("decoder") else ("decoder",)
  state = zeros.replace(
      step=np.asarray(meta["step"], zeros.step.dtype),
      params=bundled.fill(zeros.params, variables["params"], "parameter",
                          may_lack=optional),
      batch_stats=(bundled.fill(zeros.batch_stats,
                                variables.get("batch_stats", {}),
                                "batch statistic", may_lack=optional)
                   if zeros.batch_stats else zeros.batch_stats))
  state = jax.device_put(state, mesh_lib.replicated(mesh))
  logging.info("Loaded the bundled weights %s (step %d, test accuracy %s)",
               folder, meta["step"], meta.get("test_accuracy"))
  return TrainedModel(workdir=folder, experiment=exp, state=state, mesh=mesh,
                      batch_size=_inference_batch(exp, batch_size),
                      has_decoder=bool(meta.get("decoder", False)) and
                      exp.capsules)


# --------------------------------------------------------------------------
# Inference.


@dataclasses.dataclass(frozen=True)
class _Compiled:
  preprocess: Callable  # stored uint8 batch -> float model input
  forward: Callable  # (variables, inputs) -> every model output
  decode: Callable  # (variables, class_caps, labels) -> reconstructions


@functools.lru_cache(maxsize=None)
def _compiled(model: nn.Module, mesh, spec: datasets.Spec) -> _Compiled:
  """The jit-compiled functions of one architecture, shared across loads."""
  # Forward-only passes may use a faster convolution formulation.
  model = model.clone(conv_impl=conv.inference_impl(model.conv_impl))
  rep, sharded = mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)
  preprocess = spec.preprocess(train=False)
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
  return np.asarray(processes.process_allgather(x, "the predictions",
                                                tiled=True))


@dataclasses.dataclass(frozen=True)
class Prediction:
  """What ``TrainedModel.predict`` returns for N images (numpy arrays).

  lengths: [N, K] the class capsules' lengths, each in [0, 1).
  predictions: [N] the class of the longest capsule.
  class_caps: [N, K, D] the class capsules.
  reconstructions: [N, H, W, C] in [0, 1], decoded from the predicted
    class's capsule; None without a decoder.
  primary_caps: [N, P, d], coupling: [N, P, K] the routing's internals,
    when asked for.
  scores: [N, K] the per-class scores of every model family, when asked
    for: the capsule lengths, or a baseline CNN's softmax probabilities (a
    CNN's predict gives scores and predictions only).

  Outputs that were not computed are None. ``out["lengths"]`` works too.
  """
  lengths: np.ndarray | None = None
  predictions: np.ndarray | None = None
  class_caps: np.ndarray | None = None
  reconstructions: np.ndarray | None = None
  primary_caps: np.ndarray | None = None
  coupling: np.ndarray | None = None
  scores: np.ndarray | None = None

  def __getitem__(self, key: str) -> np.ndarray:
    value = getattr(self, key, None) if key in OUTPUT_KEYS else None
    if value is None:
      raise KeyError(key)
    return value

  def __contains__(self, key: str) -> bool:
    return key in OUTPUT_KEYS and getattr(self, key) is not None

  def keys(self) -> tuple[str, ...]:
    return tuple(k for k in OUTPUT_KEYS if getattr(self, k) is not None)

  def items(self):
    return tuple((k, getattr(self, k)) for k in self.keys())


def as_stored(images, stored_shape) -> np.ndarray:
  """Images as a person has them -> a batch [N, H, W, C] at the dataset's
  stored scale (uint8, or float32 in 0..255), which the dataset's test-time
  preprocessing takes.

  Accepts uint8 (or other integers) in 0..255 and floats in [0, 1]; one
  image [H, W] / [H, W, C] or a batch [N, H, W] / [N, H, W, C]. ValueError
  otherwise, naming what was wrong.
  """
  x = np.asarray(images)
  h, w, c = (int(d) for d in stored_shape)
  if x.dtype.kind not in "uif" or x.dtype == bool:
    raise ValueError(f"images must be numbers (uint8 0..255 or floats in "
                     f"[0, 1]), got {x.dtype}")
  if x.ndim == 2 and x.shape == (h, w) and c == 1:
    x = x[None, :, :, None]
  elif x.ndim == 3 and x.shape == (h, w, c):
    x = x[None]
  elif x.ndim == 3 and x.shape[1:] == (h, w) and c == 1:
    x = x[..., None]
  elif not (x.ndim == 4 and x.shape[1:] == (h, w, c)):
    raise ValueError(
        f"images must be one image [{h}, {w}] / [{h}, {w}, {c}] or a batch "
        f"[N, {h}, {w}] / [N, {h}, {w}, {c}] (the dataset's stored size), got "
        f"{list(x.shape)}; predict_files reads and resizes image files of any "
        "size")
  if x.dtype.kind == "f":
    if not np.all(np.isfinite(x)):
      raise ValueError("images hold NaN or infinite pixels")
    if x.size and (x.min() < 0.0 or x.max() > 1.0):
      raise ValueError(
          f"float images must lie in [0, 1], these in [{x.min():.4g}, "
          f"{x.max():.4g}]: pass pixel values 0..255 as uint8 "
          "(images.astype(np.uint8)), or divide by 255")
    return (x * 255.0).astype(np.float32)
  if x.size and (x.min() < 0 or x.max() > 255):
    raise ValueError(f"integer images must lie in 0..255, these in "
                     f"[{x.min()}, {x.max()}]")
  return x.astype(np.uint8, copy=False)


@dataclasses.dataclass
class TrainedModel:
  """A restored model with batched, padded, sharded inference (see load)."""
  workdir: str
  experiment: experiment.Experiment
  state: state_lib.TrainState
  mesh: jax.sharding.Mesh
  batch_size: int
  # False for bundled weights, which leave the decoder out: no
  # reconstructions (predict's default outputs leave them out too).
  has_decoder: bool = True

  @property
  def config(self) -> ml_collections.FrozenConfigDict:
    """The run's config (experiment.config)."""
    return self.experiment.config

  @property
  def model(self) -> nn.Module:
    return self.experiment.model

  @property
  def info(self) -> datasets.DatasetInfo:
    """The dataset's shapes and classes (no data is read)."""
    return self.experiment.info

  @property
  def step(self) -> int:
    return int(self.state.step)

  @property
  def variables(self) -> dict[str, Any]:
    return state_lib.model_variables(self.state)

  @property
  def num_params(self) -> int:
    return state_lib.count_params(self.state.params)

  @property
  def _fns(self) -> _Compiled:
    return _compiled(self.model, self.mesh, self.experiment.spec)

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

  def _run(self, images: np.ndarray, keys, preprocess: bool) -> Prediction:
    """Model outputs ``keys`` for stored-scale images (preprocess) or model
    inputs, in padded sharded batches."""
    keys = tuple(keys or self.predict_keys)
    unknown = set(keys) - set(OUTPUT_KEYS)
    if unknown:
      raise ValueError(f"Unknown outputs {sorted(unknown)}; valid: "
                       f"{', '.join(OUTPUT_KEYS)}")
    if not self.experiment.capsules and set(keys) - set(CLASSIFIER_KEYS):
      raise ValueError(
          f"{self.workdir} is a baseline CNN ({self.config.model}): it has "
          f"{' and '.join(CLASSIFIER_KEYS)}, no capsules or reconstructions")
    if not self.has_decoder and "reconstructions" in keys:
      raise ValueError(f"{self.workdir} has no decoder: no reconstructions")
    fns, variables = self._fns, self.variables
    results = {k: [] for k in keys}
    for real, (x,) in self._batches([images]):
      out = fns.forward(variables, fns.preprocess(x) if preprocess else x)
      for k in keys:
        results[k].append(_fetch(out[k])[:real])
    return Prediction(**{k: np.concatenate(v) for k, v in results.items()})

  @property
  def predict_keys(self) -> tuple[str, ...]:
    """predict's default outputs (without reconstructions if no decoder;
    CLASSIFIER_KEYS for a baseline CNN)."""
    if not self.experiment.capsules:
      return CLASSIFIER_KEYS
    return PREDICT_KEYS if self.has_decoder else tuple(
        k for k in PREDICT_KEYS if k != "reconstructions")

  def predict(self, images, keys: Sequence[str] | None = None) -> Prediction:
    """Predictions for images as a person has them.

    Args:
      images: uint8 pixel values 0..255, or floats in [0, 1]; one image
        [H, W] or [H, W, C], or a batch [N, H, W] or [N, H, W, C], of the
        dataset's stored size (info.stored_shape, 28 x 28 x 1 for MNIST).
        The dataset's test-time preprocessing is applied here. For image
        files of any size, use predict_files.
      keys: outputs to compute (default predict_keys); "primary_caps" and
        "coupling" add the routing's internals.

    Returns:
      A Prediction: lengths [N, K], predictions [N], class_caps [N, K, D],
      reconstructions [N, H, W, C] in [0, 1] (from the predicted capsule;
      None without a decoder).

    Raises:
      ValueError: images of another size or rank, floats outside [0, 1],
        NaN or infinite pixels.

    >>> import capsnet_jax, numpy as np
    >>> from capsnet_jax.data import idx
    >>> m = capsnet_jax.load("bundled:mnist_efficient")
    >>> images, labels = idx.load_mnist_idx("../shared/data/mnist", "test")
    >>> out = m.predict(images[:4])            # uint8 [4, 28, 28]
    >>> out.predictions.tolist(), labels[:4].tolist()
    ([7, 2, 1, 0], [7, 2, 1, 0])
    >>> out.lengths.shape, out.class_caps.shape, out.reconstructions.shape
    ((4, 10), (4, 10, 16), (4, 28, 28, 1))
    >>> bool(np.all(m.predict(images[:4] / 255.0).predictions == out.predictions))
    True
    """
    return self._run(as_stored(images, self.info.stored_shape), keys, True)

  def classify(self, images, preprocessed: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
    """(predictions [N] int, scores [N, K] float32) for a batch, for every
    model family: the class and per-class scores (capsule lengths, or a
    baseline CNN's softmax probabilities).

    Args:
      images: as ``predict`` takes them (uint8 0..255 or floats in [0, 1]
        of the stored size; the test-time preprocessing is applied), or,
        with ``preprocessed``, model inputs as ``predict_preprocessed``
        takes them (float32 [N, *info.image_shape], already preprocessed).
    """
    keys = ("predictions", "scores")
    out = (self.predict_preprocessed(images, keys) if preprocessed
           else self.predict(images, keys))
    return out.predictions, out.scores

  def predict_preprocessed(self, inputs, keys: Sequence[str] | None = None
                           ) -> Prediction:
    """``predict`` for model inputs that already went through the dataset's
    test-time preprocessing (float32 [N, *info.image_shape]): its scale
    depends on the setup ([0, 1] for paper, mean/std normalised for
    reference, / 256 for efficient, standardised per image for smallNORB
    and CIFAR10 in the paper's setup).

    Raises:
      ValueError: uint8 or integer arrays, NaN, or values outside what the
        setup's preprocessing produces: such images go to ``predict``.
    """
    inputs = self._check_preprocessed(inputs)
    return self._run(inputs, keys, False)

  def _check_preprocessed(self, inputs) -> np.ndarray:
    inputs = np.asarray(inputs)
    shape = tuple(self.info.image_shape)
    where = "use predict() for images as uint8 0..255 or floats in [0, 1]"
    if inputs.dtype.kind in "uib":
      raise ValueError(f"predict_preprocessed takes float model inputs, got "
                       f"{inputs.dtype} images: {where}")
    if inputs.ndim != 4 or tuple(inputs.shape[1:]) != shape:
      raise ValueError(
          f"model inputs must be [N, {', '.join(map(str, shape))}], got "
          f"{list(inputs.shape)}: predict() takes images of the dataset's "
          "stored size in any layout, predict_files image files of any size")
    inputs = inputs.astype(np.float32, copy=False)
    if not np.all(np.isfinite(inputs)):
      raise ValueError("model inputs hold NaN or infinite values")
    spec, tol = self.experiment.spec, 1e-3
    if spec.input_range is not None:
      lo, hi = spec.input_range
      if inputs.size and (inputs.min() < lo - tol or inputs.max() > hi + tol):
        raise ValueError(
            f"model inputs of the {spec.info.setup} setup lie in "
            f"[{lo:.4g}, {hi:.4g}], these in [{inputs.min():.4g}, "
            f"{inputs.max():.4g}]: {where}")
    elif inputs.size:  # standardised per image: mean 0, std at most 1
      flat = inputs.reshape(len(inputs), -1)
      if (np.abs(flat.mean(axis=1)).max() > tol or
          flat.std(axis=1).max() > 1 + tol):
        raise ValueError(f"model inputs of the {spec.info.setup} setup are "
                         f"standardised per image (mean 0, std 1): {where}")
    return inputs

  def preprocess(self, images) -> np.ndarray:
    """Images as ``predict`` takes them -> float model inputs (the
    dataset's test-time preprocessing), [N, *info.image_shape]."""
    stored = as_stored(images, self.info.stored_shape)
    out = [_fetch(self._fns.preprocess(x))[:real]
           for real, (x,) in self._batches([stored])]
    return np.concatenate(out)

  def display(self, inputs) -> np.ndarray:
    """Model inputs [N, H, W, C] -> what the decoder reconstructs, in [0, 1]
    (the inputs themselves unless they are standardised)."""
    return np.asarray(self.experiment.spec.target(
        np.asarray(inputs, np.float32)))

  def decode(self, class_caps, labels) -> np.ndarray:
    """Reconstructions [N, H, W, C] in [0, 1] from class capsules [N, K, D],
    each masked to its ``labels`` [N] capsule: the explorer's and Figure 4's
    call, where one dimension of a capsule is changed by hand.

    >>> import capsnet_jax, numpy as np
    >>> from capsnet_jax.data import idx
    >>> m = capsnet_jax.load("bundled:mnist_efficient")
    >>> images, _ = idx.load_mnist_idx("../shared/data/mnist", "test")
    >>> caps = m.predict(images[:1]).class_caps     # a 7
    >>> tweaked = caps.copy(); tweaked[0, 7, 3] += 0.25
    >>> a, b = m.decode(caps, [7]), m.decode(tweaked, [7])
    >>> a.shape, bool(np.abs(a - b).max() > 0.05)
    ((1, 28, 28, 1), True)
    """
    if not self.has_decoder:
      raise ValueError(f"{self.workdir} has no decoder: no reconstructions")
    class_caps = np.asarray(class_caps, np.float32)
    labels = np.asarray(labels, np.int32).reshape(-1)
    if class_caps.ndim != 3 or len(labels) != len(class_caps):
      raise ValueError(f"decode takes class capsules [N, K, D] and labels "
                       f"[N], got {list(class_caps.shape)} and "
                       f"{list(labels.shape)}")
    fns, variables = self._fns, self.variables
    out = [_fetch(fns.decode(variables, caps, lab))[:real]
           for real, (caps, lab) in self._batches([class_caps, labels])]
    return np.concatenate(out)

  def predict_files(self, paths: Sequence[str], invert: str = "auto"
                    ) -> list[dict[str, Any]]:
    """Predictions for image files, folders or globs: see capsnet_jax.inference.predict."""
    from capsnet_jax.inference import predict  # pylint: disable=g-import-not-at-top
    return predict.predict_files(self, paths, invert=invert)
