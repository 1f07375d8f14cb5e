"""Datasets as in-memory uint8 arrays: tfds or a local MNIST IDX folder.

Synopsis::

  spec = datasets.get("mnist", "paper")
  splits = input_pipeline.load_splits(spec, input_pipeline.Source(idx_dir=DIR),
                                      validation_fraction=0.0)
  for batch in input_pipeline.train_batches(splits.train, 64, seed=0):
    ...  # {"image": uint8 [64, H, W, C], "label": int32 [64]}

(experiment.Experiment.load_splits calls load_splits with a run's values.)

MNIST, smallNORB and CIFAR10 fit in host memory, so each process loads its
own shard of each split once (tfds.even_splits over the processes, or the same
even shards of an IDX folder) and serves batches by indexing. Augmentation
runs on the device (capsnet_jax.data.augment), so the host work per step is one
gather of uint8 images. The order of the examples depends only on
(seed, epoch, process), so a resumed run sees exactly the batches an
uninterrupted one would have.

MultiMNIST's splits are multimnist.PairSplits over MNIST's digits: training
pairs are drawn per step, test pairs are a fixed list (capsnet_jax.data.multimnist);
train_batches and eval_batches serve them like any other split.

TensorFlow is imported only when tfds is used, with its GPUs hidden.
"""

import dataclasses
import math
import os
from typing import Iterator

from absl import logging
import numpy as np

from capsnet_jax.data import datasets
from capsnet_jax.data import idx
from capsnet_jax.data import multimnist
from capsnet_jax import processes
from capsnet_jax.errors import DataError

DATASETS = datasets.DATASETS
SETUPS = datasets.SETUPS
SMALLNORB_SIZE = 48  # smallNORB's 96x96 images are resized to 48x48 at load.
DatasetInfo = datasets.DatasetInfo
# The validation hold-out is the same for every run seed and process count
# (holdout()).
VALIDATION_SEED = 20171026


@dataclasses.dataclass(frozen=True)
class Split:
  """One process's examples: images uint8 [N, H, W, C] as stored, labels int32 [N]."""
  images: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Source:
  """Where a dataset is read from: a local folder of MNIST IDX files
  (idx_dir, MNIST and MultiMNIST only), else tfds (tfds_data_dir, "" for its
  default)."""
  idx_dir: str = ""
  tfds_data_dir: str = ""


# --------------------------------------------------------------------------
# Loading.


def _shard(array: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
  """This process's contiguous part, sizes differing by at most one (as
  tfds.even_splits)."""
  return np.array_split(array, process_count)[process_index]


def shard_offset(total: int, process_index: int, process_count: int) -> int:
  """Where this process's part of ``total`` examples starts, in _shard and
  tfds.even_splits alike (the first ``total % process_count`` parts hold one
  more)."""
  return (process_index * (total // process_count)
          + min(process_index, total % process_count))


def _copies(spec: datasets.Spec) -> int:
  """Examples per stored record: 2 where each of smallNORB's two cameras is
  an example of its own (the reference setup), else 1."""
  return 2 if spec.tfds_name == "smallnorb" and spec.info.setup != "paper" else 1


def _downsample2(images: np.ndarray) -> np.ndarray:
  """[N, 2H, 2W, C] uint8 -> [N, H, W, C]: 2x2 means (area resize), rounded."""
  n, h, w, c = images.shape
  out = np.empty((n, h // 2, w // 2, c), np.uint8)
  for i in range(0, n, 4096):  # Bounded float32 temporaries.
    x = images[i:i + 4096].astype(np.float32).reshape(-1, h // 2, 2, w // 2, 2, c)
    out[i:i + 4096] = np.round(x.mean(axis=(2, 4)))
  return out


def _import_tfds():
  """tensorflow_datasets, with TensorFlow kept off any GPU."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


DOWNLOAD_HOST = "storage.googleapis.com"  # where tfds downloads from


def network_available(host: str = DOWNLOAD_HOST) -> bool:
  """Whether ``host`` resolves: offline, tfds would retry its downloads with
  backoff for minutes before failing."""
  import socket  # pylint: disable=g-import-not-at-top
  try:
    socket.getaddrinfo(host, 443)
  except OSError:
    return False
  return True


def _tfds_split(name: str, keys: tuple[str, ...], split: str,
                data_dir: str | None, process_index: int,
                process_count: int) -> dict[str, np.ndarray]:
  """This process's part of a tfds split as numpy arrays (the features
  ``keys``)."""
  tfds = _import_tfds()
  part = tfds.even_splits(split, process_count)[process_index]
  hint = ("use a local folder of MNIST IDX files with --config.idx_dir=DIR"
          if name == "mnist" else
          f"prepare it where there is internet (`tfds build {name}`) and "
          "pass that data directory with --config.tfds_data_dir=DIR")
  load = lambda download: tfds.load(name, split=part, data_dir=data_dir or None,
                                    shuffle_files=False, download=download)
  try:
    try:
      ds = load(download=False)  # already prepared: no network needed
    except Exception:  # pylint: disable=broad-except
      if not network_available():
        raise DataError(
            f"tfds has no prepared copy of {name!r} in "
            f"{data_dir or 'its default data_dir'} and there is no network "
            f"(the name {DOWNLOAD_HOST} does not resolve), so it cannot "
            f"download it; {hint}") from None
      ds = load(download=True)
    ds = ds.map(lambda ex: {k: ex[k] for k in keys}).batch(8192)
    chunks = list(tfds.as_numpy(ds))
  except DataError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"tfds could not load {name!r} ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}); the download "
                    f"needs internet; offline, {hint}") from e
  if not chunks:
    raise DataError(f"tfds split {part!r} of {name!r} is empty")
  return {k: np.concatenate([c[k] for c in chunks]) for k in keys}


def _load_tfds(spec: datasets.Spec, split: str, data_dir: str | None,
               process_index: int, process_count: int) -> Split:
  name, setup = spec.tfds_name, spec.info.setup
  data = _tfds_split(name, spec.tfds_keys, split, data_dir, process_index,
                     process_count)
  if name == "smallnorb":
    left, right = data["image"], data["image2"]
    labels = data["label_category"]
    if setup == "paper":
      images = np.concatenate([left, right], axis=-1)
    else:  # Each camera's image is an example of its own.
      images = np.concatenate([left, right], axis=0)
      labels = np.concatenate([labels, labels], axis=0)
    images = _downsample2(images)
  else:
    images, labels = data["image"], data["label"]
  return Split(np.ascontiguousarray(images, np.uint8), labels.astype(np.int32))


@dataclasses.dataclass(frozen=True)
class Splits:
  """This process's shards; validation is None without a hold-out."""
  train: Split
  validation: Split | None
  test: Split
  info: DatasetInfo


def holdout(split: Split, fraction: float, offset: int = 0,
            total: int | None = None, copies: int = 1
            ) -> tuple[Split, Split | None]:
  """(train, validation) of this process's part of a training split.

  The validation records are a fixed random floor(fraction * total) of the
  ``total`` records of the whole split (VALIDATION_SEED: not the run's seed,
  nor the process count), so every run of a setup, on any number of
  processes, validates on the same images and never trains on them.

  Args:
    split: this process's part: records [offset, offset + n) of the split,
      or, with ``copies`` > 1, ``copies`` consecutive blocks of those n
      records (smallNORB's two cameras), each record's copies kept together
      on one side.
    fraction: the share held out.
    offset, total: where the part starts in the split, and the split's
      records over all processes (default: the part is the whole split).
    copies: examples per record.

  Returns:
    (train, None) where floor(fraction * total) is 0; a process may hold
    no validation example (an empty Split).
  """
  if len(split) % copies:
    raise ValueError(f"{len(split)} examples are not {copies} copies of "
                     "each record")
  n = len(split) // copies
  total = n if total is None else total
  k = int(math.floor(fraction * total))
  if k <= 0:
    return split, None
  chosen = np.random.default_rng([VALIDATION_SEED, 0]).permutation(total)[:k]
  held = np.zeros(n, bool)
  held[chosen[(chosen >= offset) & (chosen < offset + n)] - offset] = True
  held = np.tile(held, copies)
  return (Split(split.images[~held], split.labels[~held]),
          Split(split.images[held], split.labels[held]))


def load_splits(spec: datasets.Spec, source: Source,
                validation_fraction: float, multimnist_test_pairs: int = 10000,
                process_index: int | None = None,
                process_count: int | None = None) -> Splits:
  """Train, validation and test shards of this process, and the DatasetInfo.

  Reads source.idx_dir when set (MNIST only), else tfds (data_dir
  source.tfds_data_dir). ``validation_fraction`` of the training examples is
  held out as the validation split. info's counts are those of the data
  read, over all processes. A spec with a ``pad`` (MNIST's expanded setup)
  gets its images padded with that many zero pixels on every side here,
  once (60,000 MNIST digits at 40x40: 96 MB). MultiMNIST evaluates
  ``multimnist_test_pairs``
  fixed test pairs. Raises errors.DataError with a hint when data cannot be
  read.
  """
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index, process_count = jax.process_index(), jax.process_count()
  info, name, setup = spec.info, spec.info.name, spec.info.setup
  fraction = validation_fraction
  if spec.num_targets > 1:
    return _load_multimnist(source, info, fraction, multimnist_test_pairs,
                            process_index, process_count)
  if source.idx_dir:
    splits = {}
    for split in ("train", "test"):
      images, labels = idx.load_mnist_idx(source.idx_dir, split)
      splits[split] = (len(labels), Split(_shard(images, process_index, process_count),
                                          _shard(labels, process_index, process_count)))
    (num_train, train), (num_test, test) = splits["train"], splits["test"]
    where = f"IDX folder {source.idx_dir}"
  else:
    train = _load_tfds(spec, "train", source.tfds_data_dir, process_index,
                       process_count)
    test = _load_tfds(spec, "test", source.tfds_data_dir, process_index,
                      process_count)
    # Over all processes (nominal where the processes are simulated).
    num_train = _total(len(train), process_count, info.num_train)
    num_test = _total(len(test), process_count, info.num_test)
    where = "tfds"
  if spec.pad:
    train, test = pad_split(train, spec.pad), pad_split(test, spec.pad)
  copies = 1 if source.idx_dir else _copies(spec)
  records = num_train // copies
  train, validation = holdout(
      train, fraction, shard_offset(records, process_index, process_count),
      records, copies)
  num_validation = 0
  if validation is not None:
    num_validation = _total(len(validation), process_count,
                            copies * int(math.floor(fraction * records)))
    num_train -= num_validation
  info = dataclasses.replace(info, num_train=num_train, num_test=num_test,
                             num_validation=num_validation)
  logging.info("%s (%s setup) from %s: %d/%d train, %d/%d validation and "
               "%d/%d test examples in process %d of %d", name, setup, where,
               len(train), num_train, 0 if validation is None else len(validation),
               num_validation, len(test), num_test, process_index, process_count)
  return Splits(train, validation, test, info)


def pad_split(split: Split, pad: int) -> Split:
  """The split's images with ``pad`` zero pixels added on every side (the
  digit at rows and columns pad .. pad + h - 1)."""
  widths = ((0, 0), (pad, pad), (pad, pad), (0, 0))
  return Split(np.pad(split.images, widths), split.labels)


def _load_mnist_split(source: Source, split: str, process_index: int,
                      process_count: int) -> tuple[int, Split]:
  """(examples over all processes, this process's shard) of an MNIST split,
  from source.idx_dir or tfds."""
  if source.idx_dir:
    images, labels = idx.load_mnist_idx(source.idx_dir, split)
    return len(labels), Split(_shard(images, process_index, process_count),
                              _shard(labels, process_index, process_count))
  part = _load_tfds(datasets.get("mnist", "paper"), split,
                    source.tfds_data_dir, process_index, process_count)
  return _total(len(part), process_count, 60000 if split == "train" else
                10000), part


def _load_multimnist(source: Source, info: DatasetInfo, fraction: float,
                     num_test: int, process_index: int,
                     process_count: int) -> Splits:
  """MultiMNIST over MNIST: this process's shard of the training digits
  (pairs drawn per step among them); the fixed test pairs over the whole test
  split (``num_test`` of them), of which each process evaluates its
  contiguous share; a validation hold-out (validation_fraction > 0) as fixed
  pairs, one per held-out digit."""
  num_train, train = _load_mnist_split(source, "train", process_index,
                                       process_count)
  _, test = _load_mnist_split(source, "test", 0, 1)
  pairs = multimnist.fixed_pairs(test.labels, num_test)
  test_pairs = pairs[np.array_split(np.arange(num_test), process_count)[
      process_index]]
  train, held_out = holdout(
      train, fraction, shard_offset(num_train, process_index, process_count),
      num_train)
  validation, num_validation = None, 0
  if held_out is not None:
    validation = multimnist.PairSplit(
        held_out.images, held_out.labels,
        multimnist.fixed_pairs(held_out.labels, len(held_out)))
    num_validation = _total(len(held_out), process_count,
                            int(math.floor(fraction * num_train)))
    num_train -= num_validation
  info = dataclasses.replace(info, num_train=num_train, num_test=num_test,
                             num_validation=num_validation)
  logging.info("multimnist from %s: pairs of %d/%d training digits drawn per "
               "step, %d/%d fixed test pairs of the %d test digits, %d "
               "validation pairs, in process %d of %d",
               f"IDX folder {source.idx_dir}" if source.idx_dir else
               "tfds", len(train), num_train, len(test_pairs), num_test,
               len(test), num_validation, process_index, process_count)
  return Splits(multimnist.PairSplit(train.images, train.labels), validation,
                multimnist.PairSplit(test.images, test.labels, test_pairs),
                info)


def _total(local: int, process_count: int, nominal: int) -> int:
  """Examples over all processes: the sum of every process's share (the
  nominal count where the shares are not of a real multi-process run)."""
  if process_count == 1:
    return local
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() != process_count:  # Not a real multi-process run.
    return nominal
  return int(np.sum(processes.process_allgather(
      np.array(local), "the count of every process's examples")))


# --------------------------------------------------------------------------
# Batches.


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full batches per epoch (the remainder of each shuffled epoch is dropped)."""
  return max(num_examples // batch_size, 1)


def train_batches(split: Split, batch_size: int, seed: int, start_step: int = 0,
                  process_index: int = 0, num_steps_per_epoch: int | None = None
                  ) -> Iterator[dict[str, np.ndarray]]:
  """Endless shuffled batches of this process's examples from ``start_step``.

  Epoch e is a permutation drawn from (seed, e, process_index); step s is the
  (s mod steps_per_epoch)-th batch of epoch s // steps_per_epoch, so the
  stream depends only on the step. num_steps_per_epoch must be equal in every
  process (train.py passes num_train // global batch). MultiMNIST splits
  give fresh pairs (multimnist.train_batches).
  """
  if isinstance(split, multimnist.PairSplit):
    yield from multimnist.train_batches(split, batch_size, seed, start_step,
                                        process_index, num_steps_per_epoch)
    return
  n = len(split)
  if batch_size > n:
    raise DataError(f"local batch size {batch_size} exceeds the {n} training "
                    "examples of this process")
  per_epoch = num_steps_per_epoch or steps_per_epoch(n, batch_size)
  step = start_step
  while True:
    epoch, i = divmod(step, per_epoch)
    if i == 0 or step == start_step:
      order = np.random.default_rng([seed, epoch, process_index]).permutation(n)
    idx_ = order[i * batch_size:(i + 1) * batch_size]
    yield {"image": split.images[idx_], "label": split.labels[idx_]}
    step += 1


def num_eval_batches(num_examples: int, batch_size: int) -> int:
  return max(math.ceil(num_examples / batch_size), 1)


def eval_batches(split: Split, batch_size: int, num_batches: int | None = None
                 ) -> Iterator[dict[str, np.ndarray]]:
  """Every example once, in order, in ``num_batches`` batches of ``batch_size``;
  the padding at the end has mask 0 (the real examples mask 1)."""
  if isinstance(split, multimnist.PairSplit):
    yield from multimnist.eval_batches(split, batch_size, num_batches)
    return
  n = len(split)
  num_batches = num_batches or num_eval_batches(n, batch_size)
  for b in range(num_batches):
    lo, hi = min(b * batch_size, n), min((b + 1) * batch_size, n)
    pad = batch_size - (hi - lo)
    images, labels = split.images[lo:hi], split.labels[lo:hi]
    mask = np.ones(hi - lo, np.float32)
    if pad:
      images = np.concatenate([images, np.zeros((pad, *split.images.shape[1:]),
                                                np.uint8)])
      labels = np.concatenate([labels, np.zeros(pad, np.int32)])
      mask = np.concatenate([mask, np.zeros(pad, np.float32)])
    yield {"image": images, "label": labels, "mask": mask}
