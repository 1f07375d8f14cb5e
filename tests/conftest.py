"""Shared test set-up and helpers.

Helpers every test module uses (none imports another test module):

  ROOT, SHARED_MNIST        the checkout and the real MNIST beside it
  shared_mnist()            SHARED_MNIST, or a skip (a failure under CI=true)
  require(module)           importorskip that fails under CI=true
  tiny_config(idx_dir)      the tiny test model on a synthetic IDX folder
  run_main(*args)           main.py in a subprocess, its exit status checked
                            (tty=True: standard error on a pseudo-terminal)
  subprocess_env(devices)   the environment of a test's python subprocess
  idx_dir (fixture)         a synthetic MNIST-format IDX folder
  tiny_run (fixture)        one tiny training run of the session, read-only

Quiet TensorFlow, the repository root on sys.path, one persistent XLA
compilation cache and XLA's optimisation level 0 for the tiny models.
"""

import atexit
import gc
import gzip
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import tempfile

import jax
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"
# Under CI a dependency of the suite that is missing is a failure.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# One persistent XLA compilation cache for the session, shared by this
# process and the python subprocesses the tests start (main.py runs,
# scripts): most tests build the same tiny model's steps under a fresh
# jax.jit, which the in-memory cache cannot reuse. Set
# JAX_COMPILATION_CACHE_DIR to choose the folder yourself (it is then kept).
_CACHE_DIR = os.environ.get("JAX_COMPILATION_CACHE_DIR")
if not _CACHE_DIR:
  _CACHE_DIR = tempfile.mkdtemp(prefix="capsnet-test-xla-cache-")
  atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


# XLA's CPU backend spends most of a tiny model's compile time in LLVM's
# optimisation passes, so the suite compiles at
# --xla_backend_optimization_level=0 unless XLA_FLAGS already sets a level.
# Set before JAX starts its backend, so that subprocesses see it too.
def _with_xla_flag(flags: str | None, flag: str) -> str:
  return " ".join(filter(None, [flags, flag]))


if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = _with_xla_flag(
      os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0")


# --------------------------------------------------------------------------
# Dependencies: skipped outside CI, failures in it.


def _missing(what: str) -> None:
  if IN_CI:
    pytest.fail(f"{what} is missing, and CI=true requires it", pytrace=False)
  pytest.skip(f"{what} is missing")


def shared_mnist() -> pathlib.Path:
  """The real MNIST IDX folder beside the checkout (../shared/data/mnist)."""
  if not (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").exists():
    _missing(f"the real MNIST ({SHARED_MNIST})")
  return SHARED_MNIST


def require(module: str):
  """The imported ``module``, or a skip (a failure under CI=true)."""
  try:
    return __import__(module, fromlist=["_"])
  except ImportError:
    _missing(f"the Python package {module!r}")


# --------------------------------------------------------------------------
# Subprocesses.


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


def run_main(*args: str, expect: int | None = 0, devices: int | None = None,
             env: dict[str, str] | None = None, timeout: float = 600,
             stdin=None, cwd=ROOT, tty: bool = False
             ) -> subprocess.CompletedProcess:
  """``python main.py ARGS`` from the checkout's root, output captured as
  text. ``expect``: the exact exit status required (None: any). ``tty``:
  standard error is a pseudo-terminal (what a person watching sees; its
  line ends read as "\\r\\n"), standard output a pipe."""
  command = [sys.executable, str(ROOT / "main.py"), *args]
  if tty:
    proc = _run_on_tty(command, env=env or subprocess_env(devices), cwd=cwd,
                       timeout=timeout, stdin=stdin)
  else:
    proc = subprocess.run(command, env=env or subprocess_env(devices),
                          cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=stdin)
  if expect is not None and proc.returncode != expect:
    raise AssertionError(
        f"main.py {' '.join(args)}: exit status {proc.returncode}, expected "
        f"{expect}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n"
        f"{proc.stderr[-5000:]}")
  return proc


def _run_on_tty(command, env, cwd, timeout, stdin, columns: int = 120
                ) -> subprocess.CompletedProcess:
  """``command`` with standard error on a pseudo-terminal of ``columns``
  columns (read while it runs), standard output captured."""
  import fcntl  # pylint: disable=g-import-not-at-top
  import pty  # pylint: disable=g-import-not-at-top
  import termios  # pylint: disable=g-import-not-at-top
  import threading  # pylint: disable=g-import-not-at-top
  master, slave = pty.openpty()
  fcntl.ioctl(slave, termios.TIOCSWINSZ,
              struct.pack("HHHH", 40, columns, 0, 0))
  chunks = []

  def read():
    while True:
      try:
        data = os.read(master, 65536)
      except OSError:  # EIO: every holder of the terminal closed it
        return
      if not data:
        return
      chunks.append(data)

  try:
    child = subprocess.Popen(command, env=env, cwd=cwd, stdin=stdin,
                             stdout=subprocess.PIPE, stderr=slave)
  finally:
    os.close(slave)
  reader = threading.Thread(target=read, daemon=True)
  reader.start()
  try:
    stdout, _ = child.communicate(timeout=timeout)
  finally:
    if child.poll() is None:
      child.kill()
      child.wait()
    reader.join(timeout=30)
    os.close(master)
  return subprocess.CompletedProcess(
      command, child.returncode, stdout.decode(errors="replace"),
      b"".join(chunks).decode(errors="replace"))


# --------------------------------------------------------------------------
# Data and the tiny model.


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
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  for prefix, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
    images, labels = synthetic_digits(n, s)
    write_idx(directory / f"{prefix}-images-idx3-ubyte", images)
    write_idx(directory / f"{prefix}-labels-idx1-ubyte", labels)
  return directory


def tiny_config(idx_dir, **overrides):
  """The tiny test model (models._CapsNetTiny: 234,896 parameters) on the
  synthetic digits of ``idx_dir``: the reference's setup (10% of the 256
  training digits held out for validation) with our default
  initialisation, batch 32, 8 steps, one evaluation at the end. It reaches
  100% test accuracy (2-core Intel Xeon)."""
  from configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.model = "tiny"
  config.data_setup = "reference"
  config.init = "default"
  config.idx_dir = str(idx_dir)
  config.batch_size = 32
  config.num_train_steps = 8
  config.log_every_steps = 4
  config.num_summary_images = 2
  config.learning_rate = 3e-3
  config.update(overrides)
  return config


def tiny_args(idx_dir, workdir, *extra: str) -> list[str]:
  """main.py's flags for tiny_config (the same values, on the command line)."""
  return ["--config=configs/mnist.py:reference", f"--workdir={workdir}",
          "--config.model=tiny", "--config.init=default",
          f"--config.idx_dir={idx_dir}", "--config.batch_size=32",
          "--config.num_train_steps=8", "--config.log_every_steps=4",
          "--config.num_summary_images=2", "--config.learning_rate=0.003",
          *extra]


# --------------------------------------------------------------------------
# Fixtures.


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
  """Drops JAX's compiled executables after each test module: every one
  keeps about two memory mappings, and Linux refuses mappings past
  vm.max_map_count, which made XLA abort late in the suite."""
  yield
  jax.clear_caches()
  gc.collect()


@pytest.fixture(autouse=True, scope="session")
def _tempfile_folders_under_basetemp(tmp_path_factory):
  """tempfile's folders go under pytest's basetemp (pruned by pytest), not
  /tmp (tfds leaves an empty folder there per dataset builder offline)."""
  before = tempfile.tempdir
  tempfile.tempdir = str(tmp_path_factory.mktemp("tempfile"))
  yield
  tempfile.tempdir = before


@pytest.fixture(name="idx_dir", scope="session")
def fixture_idx_dir(tmp_path_factory):
  return make_idx_dir(tmp_path_factory.mktemp("idx"))


class TinyRun:
  """A finished tiny training run (tiny_config, 8 steps): its workdir,
  config and results. Read-only: copy() it before changing anything."""

  def __init__(self, workdir: pathlib.Path, config, results: dict):
    self.workdir, self.config, self.results = workdir, config, results

  def copy(self, dest) -> pathlib.Path:
    """A copy of the workdir at ``dest`` (which must not exist)."""
    shutil.copytree(self.workdir, dest)
    return pathlib.Path(dest)


@pytest.fixture(name="tiny_run", scope="session")
def fixture_tiny_run(idx_dir, tmp_path_factory) -> TinyRun:
  from capsnet_jax.training import loop  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp("tiny_run")
  config = tiny_config(idx_dir)
  results = loop.train_and_evaluate(config, str(workdir))
  return TinyRun(workdir, config, results)


# The modules that take longest, started first, so that `-n 2 --dist
# loadfile` does not leave one core idle at the end.
LONGEST_MODULES_FIRST = (
    "test_loop", "test_reliability", "test_multidevice", "test_cluster",
    "test_explorer", "test_predict", "test_bundled", "test_tutorial",
)


def pytest_configure(config):
  if hasattr(config.option, "loadscopereorder"):  # pytest-xdist
    config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_MODULES_FIRST)}
  items.sort(key=lambda item: rank.get(
      item.module.__name__.rsplit(".", 1)[-1] if item.module else "",
      len(rank)))


# --------------------------------------------------------------------------
# Training states.


def restore_state(workdir, config):
  """The latest checkpoint of ``workdir``, restored into the TrainState's
  structure for ``config`` (nothing initialised or compiled)."""
  from capsnet_jax import experiment  # pylint: disable=g-import-not-at-top
  from capsnet_jax.training import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from capsnet_jax.training import state as state_lib  # pylint: disable=g-import-not-at-top
  from capsnet_jax.workdir import checkpoints  # pylint: disable=g-import-not-at-top
  exp = experiment.resolve(config)
  ckpt = checkpoints.Checkpointer(str(workdir), create=False)
  try:
    return ckpt.restore(state_lib.abstract(exp, mesh_lib.make_mesh()))
  finally:
    ckpt.close()


def assert_states_equal(a, b) -> None:
  """The whole TrainState (step, params, opt_state, batch_stats), bit for
  bit: CPU XLA is deterministic, so a resumed run must match exactly."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  for tree in ("step", "params", "opt_state", "batch_stats"):
    x, y = getattr(a, tree), getattr(b, tree)
    assert jax.tree.structure(x) == jax.tree.structure(y), tree
    for u, v in zip(jax.tree.leaves(x), jax.tree.leaves(y)):
      np.testing.assert_array_equal(np.asarray(u), np.asarray(v), err_msg=tree)


def snapshot(folder) -> dict[str, tuple[bytes, int]]:
  """{relative path: (bytes, mtime_ns)} of every file under folder: equal
  snapshots mean nothing there was written."""
  out = {}
  for d, _, names in os.walk(folder):
    for n in names:
      p = os.path.join(d, n)
      with open(p, "rb") as f:
        out[os.path.relpath(p, folder)] = (f.read(), os.stat(p).st_mtime_ns)
  return out
