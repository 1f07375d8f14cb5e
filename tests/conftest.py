"""Shared test set-up: quiet TensorFlow, repository root on sys.path, and
synthetic MNIST-format IDX folders."""

import atexit
import gc
import gzip
import os
import pathlib
import shutil
import struct
import sys
import tempfile

import jax
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One persistent XLA compilation cache for the session, shared by this
# process and the python subprocesses the tests start (main.py runs,
# scripts). Most tests build the same tiny model's steps under a fresh
# jax.jit (a new training run, a restored model), which the in-memory cache
# cannot reuse, and _release_compiled_code below empties that cache after
# every module; the persistent cache is keyed by the program itself. On the
# 2-core AMD EPYC without AVX-512: tests/test_history.py 415 s without it,
# 181 s with it from cold; test_reliability's kill/resume tests (subprocesses
# only) 331 s -> 170 s. Set JAX_COMPILATION_CACHE_DIR to choose the folder
# yourself (it is then kept).
ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"


_CACHE_DIR = os.environ.get("JAX_COMPILATION_CACHE_DIR")
if not _CACHE_DIR:
  _CACHE_DIR = tempfile.mkdtemp(prefix="capsnet-test-xla-cache-")
  atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
# Every program, however quick to compile: the tiny model's are all quick.
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


# XLA's CPU backend spends most of a tiny model's compile time in LLVM's
# optimisation passes (one jax.random.bits program: 1.6 s at the default
# level, 0.2 s at 0), and the tests run tiny models. So the suite compiles
# at --xla_backend_optimization_level=0 unless XLA_FLAGS already sets a
# level: run it with XLA_FLAGS=--xla_backend_optimization_level=2 to test
# the default. Set here, before JAX starts its backend, so that this process
# and its subprocesses (subprocess_env) see it.
def _with_xla_flag(flags: str | None, flag: str) -> str:
  return " ".join(filter(None, [flags, flag]))


if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = _with_xla_flag(
      os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0")


def subprocess_env(devices: int | None = None,
                   pythonpath=ROOT) -> dict[str, str]:
  """Environment of a test's python subprocess (main.py, a script): this
  checkout importable, JAX on the CPU, TensorFlow quiet, the session's
  compilation cache, and with ``devices`` that many forced host devices."""
  env = dict(os.environ, PYTHONPATH=str(pythonpath), JAX_PLATFORMS="cpu",
             TF_CPP_MIN_LOG_LEVEL="2")
  env.update(JAX_COMPILATION_CACHE_DIR=_CACHE_DIR,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  if devices is not None:
    env["XLA_FLAGS"] = _with_xla_flag(
        env.get("XLA_FLAGS"),
        f"--xla_force_host_platform_device_count={devices}")
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


# Modules in the order the suite starts them, longest first (their wall
# time in one process, 2-core AMD EPYC without AVX-512); the rest follow in
# file order. With `-n 2 --dist loadfile` (the README's command) each module
# runs whole on one worker, and a long module started last leaves the other
# core idle. pytest-xdist would otherwise start modules with the most tests
# first, which puts the few long end-to-end tests last.
LONGEST_MODULES_FIRST = (
    "test_reliability", "test_multidevice", "test_models", "test_bundled",
    "test_datasets", "test_conv", "test_train", "test_gpu_run",
    "test_efficient", "test_history", "test_visualize", "test_multimnist",
    "test_tricks", "test_ensemble", "test_predict", "test_trained",
)


def pytest_configure(config):
  if hasattr(config.option, "loadscopereorder"):  # pytest-xdist
    config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_MODULES_FIRST)}
  items.sort(key=lambda item: rank.get(item.module.__name__.rsplit(".", 1)[-1]
                                       if item.module else "",
                                       len(rank)))


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
  """Drops JAX's compiled executables after each test module.

  Every executable XLA compiles keeps its code mapped in the process (about
  two memory mappings each), and one pytest process compiles thousands over
  the suite: 29,510 mappings by the eighth module. Linux refuses
  mappings past vm.max_map_count (65,530 by default), and XLA then aborts
  mid-compilation, which killed the suite late in its run ("Fatal Python
  error: Aborted" in backend_compile_and_load). After jax.clear_caches()
  the mappings are released (4,100 -> 540 in a 400-function check).
  """
  yield
  jax.clear_caches()
  gc.collect()


@pytest.fixture(autouse=True, scope="session")
def _tempfile_folders_under_basetemp(tmp_path_factory):
  """tempfile's folders go under pytest's basetemp (pruned by pytest), not
  /tmp: tfds leaves an empty tmp*tfds folder there for every dataset builder
  that cannot reach its GCS metadata (DatasetInfo.initialize_from_bucket),
  about 19 per suite run on a machine without internet."""
  before = tempfile.tempdir
  tempfile.tempdir = str(tmp_path_factory.mktemp("tempfile"))
  yield
  tempfile.tempdir = before


@pytest.fixture(name="idx_dir", scope="session")
def fixture_idx_dir(tmp_path_factory):
  return make_idx_dir(tmp_path_factory.mktemp("idx"))
