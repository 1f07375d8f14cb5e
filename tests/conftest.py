"""Shared test set-up: quiet TensorFlow, one XLA compilation cache for the
session, repository root on sys.path, and synthetic MNIST-format IDX
folders."""

import atexit
import gzip
import os
import pathlib
import shutil
import struct
import sys
import tempfile

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Many tests train the same tiny model, in this process and in main.py
# subprocesses (which inherit the environment): XLA compiles each step once
# per session instead of once per run. On the 2-core machine under load a
# tiny train step took 61 s and its CPU evaluation step 101 s to compile,
# 7 s and 3 s from the cache. Set JAX_COMPILATION_CACHE_DIR to choose the
# folder (and keep it between sessions).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _XLA_CACHE = tempfile.mkdtemp(prefix="capsnet_jax_tests_xla_cache_")
  atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"


def write_idx(path, array: np.ndarray, compress: bool = True) -> None:
  """Writes uint8 ``array`` ([N] labels or [N, H, W] images) as an IDX file."""
  array = np.asarray(array, np.uint8)
  magic = 0x00000801 if array.ndim == 1 else 0x00000803
  header = struct.pack(">I", magic) + b"".join(
      struct.pack(">I", d) for d in array.shape)
  data = header + array.tobytes()
  opener = gzip.open if compress else open
  with opener(str(path) + (".gz" if compress else ""), "wb") as f:
    f.write(data)


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """[n, 28, 28] uint8 images whose class is a bright 6x6 block's position."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, size=n).astype(np.uint8)
  images = rng.integers(0, 40, size=(n, 28, 28)).astype(np.uint8)
  for i, label in enumerate(labels):
    r, c = 4 + 7 * (label // 5), 2 + 5 * (label % 5)
    images[i, r:r + 6, c:c + 6] = 255
  return images, labels


def make_idx_dir(directory, n_train: int = 256, n_test: int = 100,
                 seed: int = 0):
  """A folder of MNIST-format IDX files holding synthetic_digits."""
  directory.mkdir(parents=True, exist_ok=True)
  for prefix, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
    images, labels = synthetic_digits(n, s)
    write_idx(directory / f"{prefix}-images-idx3-ubyte", images)
    write_idx(directory / f"{prefix}-labels-idx1-ubyte", labels)
  return directory


@pytest.fixture(name="idx_dir", scope="session")
def fixture_idx_dir(tmp_path_factory):
  return make_idx_dir(tmp_path_factory.mktemp("idx"))
