"""Datasets: the real IDX folder, tfds loading under mock data, batch
order, sharding and complete evaluation."""

import gzip
import hashlib

import numpy as np
import pytest

from capsnet_jax import experiment
from capsnet_jax.data import input_pipeline
from capsnet_jax.errors import DataError
from configs import default
import conftest


def _config(**overrides):
  config = default.get_config()
  config.update(overrides)
  return config


def _load(config):
  """(train, test, info) of process 0 of 1, as training reads them."""
  splits = experiment.resolve(config).load_splits(0, 1)
  return splits.train, splits.test, splits.info


def test_real_mnist_idx_folder():
  SHARED_MNIST = conftest.shared_mnist()  # pylint: disable=invalid-name
  sums = dict(line.split()[::-1] for line in
              (SHARED_MNIST / "MD5SUMS").read_text().splitlines() if line.strip())
  # MD5SUMS names the decompressed files; the folder holds them gzipped.
  assert len(sums) == 4
  for name, digest in sums.items():
    content = gzip.decompress((SHARED_MNIST / f"{name}.gz").read_bytes())
    assert hashlib.md5(content).hexdigest() == digest, name
  train, test, info = _load(_config(idx_dir=str(SHARED_MNIST),
                                    data_setup="paper"))
  assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (
      10000, 28, 28, 1)
  assert train.images.dtype == np.uint8 and train.labels.dtype == np.int32
  assert sorted(set(test.labels.tolist())) == list(range(10))
  assert (info.num_train, info.num_test, info.image_shape) == (60000, 10000,
                                                               (28, 28, 1))
  # The reference setup holds out 6,000 training images for validation.
  splits = experiment.resolve(_config(idx_dir=str(SHARED_MNIST))).load_splits(
      0, 1)
  assert (len(splits.train), len(splits.validation)) == (54000, 6000)
  assert (splits.info.num_train, splits.info.num_validation) == (54000, 6000)


@pytest.mark.parametrize("dataset,setup,stored,num_train", [
    ("mnist", "reference", (28, 28, 1), 11),  # 12 less floor(10%) held out
    ("smallnorb", "reference", (48, 48, 1), 22),  # two cameras: 24 less 2
    ("smallnorb", "paper", (48, 48, 2), 12),
    ("cifar10", "paper", (32, 32, 3), 12),
])
def test_tfds_loading_under_mock_data(dataset, setup, stored, num_train):
  tfds = conftest.require("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=12):
    train, test, info = _load(_config(dataset=dataset, data_setup=setup))
  assert train.images.shape == (num_train, *stored)
  assert train.images.dtype == np.uint8 and train.labels.dtype == np.int32
  assert 0 <= train.labels.min() and train.labels.max() < info.num_classes
  assert info.num_train == num_train and info.num_test == len(test)


def test_offline_tfds_fails_at_once_and_points_at_idx_dir(tmp_path, monkeypatch):
  """No prepared copy and a name lookup that fails (as offline, simulated so
  that the test behaves the same on a machine with internet): a one-line
  error at once, without tfds's minutes of download retries."""
  conftest.require("tensorflow_datasets")
  import socket  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core.download import downloader
  lookups = []

  def no_dns(host, *args, **kwargs):
    lookups.append(host)
    raise socket.gaierror(-3, "Temporary failure in name resolution")

  monkeypatch.setattr(socket, "getaddrinfo", no_dns)
  monkeypatch.setattr(downloader, "MAX_RETRIES", 0)  # were it to try anyway
  with pytest.raises(DataError, match="there is no network .*idx_dir"):
    _load(_config(tfds_data_dir=str(tmp_path)))
  assert lookups == ["storage.googleapis.com"]
  assert not list(tmp_path.rglob("*.tar.gz"))  # nothing was downloaded


def test_tfds_download_path_dependencies_installed():
  # download_and_prepare imports these lazily; without them a machine with
  # internet fails to download with a ModuleNotFoundError.
  conftest.require("tensorflow_datasets")
  from tensorflow_datasets.core import dataset_builder
  assert dataset_builder.importlib_resources.abc.Traversable is not None
  assert dataset_builder.termcolor.colored is not None


def _split(n):
  return input_pipeline.Split(np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1),
                              np.arange(n, dtype=np.int32))


def test_train_batches_depend_only_on_seed_and_step():
  split = _split(50)
  stream = input_pipeline.train_batches(split, 8, seed=1)
  first = [next(stream)["label"] for _ in range(13)]  # 6 steps per epoch
  epoch0 = np.concatenate(first[:6])
  assert len(set(epoch0.tolist())) == 48  # no example twice in an epoch
  assert not np.array_equal(first[0], first[6])  # a new order per epoch
  resumed = input_pipeline.train_batches(split, 8, seed=1, start_step=7)
  np.testing.assert_array_equal(next(resumed)["label"], first[7])
  other = input_pipeline.train_batches(split, 8, seed=2)
  assert not np.array_equal(next(other)["label"], first[0])


def test_eval_batches_cover_every_example_once():
  split = _split(21)
  batches = list(input_pipeline.eval_batches(split, 8))
  assert len(batches) == 3
  mask = np.concatenate([b["mask"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  np.testing.assert_array_equal(labels[mask == 1], np.arange(21))
  assert mask.sum() == 21 and all(b["image"].shape[0] == 8 for b in batches)
  # Process shards differ by at most one example and together are the split.
  shards = [input_pipeline._shard(split.labels, i, 4) for i in range(4)]
  assert {len(s) for s in shards} <= {5, 6}
  np.testing.assert_array_equal(np.concatenate(shards), np.arange(21))
  # shard_offset is where each starts (tfds.even_splits cuts the same way).
  for n, p in [(21, 4), (24300, 8), (7, 7), (3, 5)]:
    sizes = [len(s) for s in np.array_split(np.arange(n), p)]
    assert [input_pipeline.shard_offset(n, i, p) for i in range(p)] == list(
        np.cumsum([0] + sizes[:-1]))


def test_every_process_runs_enough_batches_for_the_largest_share(
    monkeypatch):
  """smallNORB's reference setup doubles each process's records (one example
  a camera), so 24,300 records on 8 processes are shares of 6,076 and 6,074
  examples: a count from the total (ceil(48,600 / 8) = 6,075) would leave
  the last example of the larger shares out."""
  from capsnet_jax import processes  # pylint: disable=g-import-not-at-top
  from capsnet_jax.training import loop  # pylint: disable=g-import-not-at-top
  shares = [2 * len(s) for s in np.array_split(np.arange(24300), 8)]
  assert shares == [6076] * 4 + [6074] * 4
  monkeypatch.setattr(loop.jax, "process_count", lambda: 8)
  monkeypatch.setattr(processes, "process_allgather",
                      lambda x, what: np.array(shares))
  for local in (6074, 6076):  # Every process, small share or large, agrees.
    assert loop.num_eval_batches(local, 25) == 244  # 244 * 25 >= 6,076
