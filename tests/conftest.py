"""Shared test set-up: quiet TensorFlow, repository root on sys.path, and
synthetic MNIST-format IDX folders."""

import gzip
import os
import pathlib
import struct
import sys

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# No persistent XLA compilation cache by default: with one shared by the
# session (and its main.py subprocesses) a cache read segfaulted in the
# full suite (jax 0.10.2, CPU; test_tricks' fixture). Set
# JAX_COMPILATION_CACHE_DIR yourself to use one, at that risk.
ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"


def subprocess_env(devices: int | None = None, pythonpath=ROOT,
                   **extra: str) -> dict[str, str]:
  """Environment of a test's python subprocess (main.py, a script): this
  checkout importable, JAX on the CPU, TensorFlow quiet, and with
  ``devices`` that many forced host devices."""
  env = dict(os.environ, PYTHONPATH=str(pythonpath), JAX_PLATFORMS="cpu",
             TF_CPP_MIN_LOG_LEVEL="2")
  if devices is not None:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env.update(extra)
  return env


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
