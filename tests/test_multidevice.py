"""Data parallelism: 2 CPU devices in one process, and 2 processes, against
one device, on the tiny model.

The runs on 2 devices are subprocesses because the device count is fixed
when JAX starts (XLA_FLAGS=--xla_force_host_platform_device_count=2); the
one-device references are computed in this process, on the compiled steps
of the session's tiny_run.

Each comparison covers the per-step training losses and metrics, the
evaluation metrics and the whole state (parameters, Adam's moments, step):
a loss or gradient off by a constant factor shows in the losses and in
Adam's moments, though not in Adam's parameter updates.

Tolerances. One device and two add the same float32 numbers in other
orders (per-device partial sums of the batch's losses, metrics and
gradients, then the all-reduce), each sum within n 2^-24 = n 6e-8 of the
exact one relatively, n the number of terms:

* metrics, means over a training batch (32) or the test set (100): within
  METRIC_RTOL = 100 x 2^-24 = 6e-6 relatively (measured: 2.1e-7 at most);
  accuracies count whole examples: exact;
* the state: Adam divides each gradient entry by its own running RMS, so
  an entry that nearly cancels in the sum over examples (|g| near the sum's
  rounding error) may move its parameter by a visibly different fraction of
  the learning rate. Each array is compared within STATE_TOL = 2e-4 of its
  largest magnitude (measured: 5.4e-5 at most, in the class capsules' W;
  Adam's moments 3e-6). A wrong gradient moves parameters by about the
  learning rate, 3e-3, and a gradient scaled by a constant changes Adam's
  moments by that factor.
"""

import json
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from capsnet_jax import experiment
from capsnet_jax.analysis import curves
from capsnet_jax.data import input_pipeline
from capsnet_jax.inference import ensemble
from capsnet_jax.training import loop
from capsnet_jax.training import mesh as mesh_lib
from capsnet_jax.training import state as state_lib
from capsnet_jax.training.steps import Steps
from capsnet_jax.workdir import checkpoints
from capsnet_jax.workdir import history
import conftest

METRIC_RTOL = 100 * 2.0**-24
STATE_TOL = 2e-4
TRAIN_METRICS = ("loss", "margin_loss", "reconstruction_loss", "accuracy")
EVAL_METRICS = ("accuracy", "margin_loss", "reconstruction_loss", "loss",
                "reconstruction_std")


def _close(got, expected, what: str) -> None:
  """Metrics: equal up to float32 summation order (module doc)."""
  np.testing.assert_allclose(got, expected, rtol=METRIC_RTOL, atol=0,
                             err_msg=what)


def _close_states(got: list[np.ndarray], expected: list[np.ndarray]) -> None:
  """States as _leaves lists: integers (steps, Adam's count) exact, float
  arrays within STATE_TOL of their largest magnitude (module doc)."""
  assert len(got) == len(expected) == 39  # 3 steps, 12 params, mu, nu
  for i, (x, y) in enumerate(zip(got, expected)):
    assert (x.shape, x.dtype) == (y.shape, y.dtype), i
    if np.issubdtype(y.dtype, np.integer):
      np.testing.assert_array_equal(x, y, err_msg=f"state leaf {i}")
    else:
      np.testing.assert_allclose(x, y, rtol=0, atol=STATE_TOL * np.abs(y).max(),
                                 err_msg=f"state leaf {i}")


def _train(exp, mesh, steps_per_epoch, batches, n):
  """``n`` steps from the initial state on ``mesh``: (state, [metrics of
  each step]) with the metrics on the host."""
  steps = Steps(exp, mesh, steps_per_epoch)
  state = state_lib.create(exp, mesh)
  metrics = []
  for _ in range(n):
    state, m = steps.train(state, mesh_lib.global_batch(next(batches),
                                                        steps.sharded))
    metrics.append({k: float(m[k]) for k in TRAIN_METRICS})
  return steps, state, metrics


def _leaves(state) -> list[np.ndarray]:
  """The state's arrays (step, params, opt_state, batch_stats) in order."""
  return [np.asarray(x) for x in jax.tree.leaves(
      (state.step, state.params, state.opt_state, state.batch_stats))]


def _restore(workdir, exp, mesh) -> state_lib.TrainState:
  ckpt = checkpoints.Checkpointer(str(workdir), create=False)
  try:
    return ckpt.restore(state_lib.abstract(exp, mesh))
  finally:
    ckpt.close()


# Three training steps and an evaluation on 2 devices (the same batches and
# initial state as _one_device below), the errors of a batch size that the
# devices do not divide, then a whole tiny run on 2 devices. Arguments: the
# config (JSON), the output folder.
_TWO_DEVICES = """
import json, sys
import jax, ml_collections, numpy as np
from capsnet_jax import experiment
from capsnet_jax.errors import ConfigError
from capsnet_jax.data import input_pipeline
from capsnet_jax.training import loop, mesh as mesh_lib, state as state_lib
from capsnet_jax.training.steps import Steps
assert jax.device_count() == 2, jax.devices()
config, out = ml_collections.ConfigDict(json.loads(sys.argv[1])), sys.argv[2]
exp = experiment.resolve(config)
splits = exp.load_splits()
mesh = mesh_lib.make_mesh()
steps = Steps(exp, mesh, 7)
state = state_lib.create(exp, mesh)
batches = input_pipeline.train_batches(splits.train, 32, config.seed, 0, 0, 7)
metrics = []
for _ in range(3):
  state, m = steps.train(state, mesh_lib.global_batch(next(batches),
                                                      steps.sharded))
  metrics.append({k: float(v) for k, v in jax.device_get(m).items()})
evaluation = loop.evaluate(steps, state, splits.test, 32)
leaves = jax.tree.leaves(jax.device_get(
    (state.step, state.params, state.opt_state, state.batch_stats)))
np.savez(out + "/state.npz", *leaves)
errors = {}
for field in ("batch_size", "eval_batch_size"):
  try:
    experiment.resolve(ml_collections.ConfigDict({**config, field: 3}))
  except ConfigError as e:
    errors[field] = str(e)
results = loop.train_and_evaluate(exp, out + "/run")
with open(out + "/out.json", "w") as f:
  json.dump(dict(metrics=metrics, evaluation=evaluation, errors=errors,
                 results=results), f)
"""


@pytest.fixture(name="two_devices", scope="module")
def fixture_two_devices(idx_dir, tmp_path_factory):
  out = tmp_path_factory.mktemp("two_devices")
  config = conftest.tiny_config(idx_dir)
  proc = subprocess.run(
      [sys.executable, "-c", _TWO_DEVICES, json.dumps(config.to_dict()),
       str(out)], env=conftest.subprocess_env(devices=2), cwd=conftest.ROOT,
      capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out / "out.json") as f:
    ran = json.load(f)
  with np.load(out / "state.npz") as saved:
    ran["state"] = [saved[f"arr_{i}"] for i in range(len(saved.files))]
  ran["workdir"] = out / "run"
  return ran


def test_three_steps_on_two_devices_equal_one_device(idx_dir, two_devices):
  exp = experiment.resolve(conftest.tiny_config(idx_dir))
  splits = exp.load_splits()
  batches = input_pipeline.train_batches(splits.train, 32, exp.config.seed,
                                         0, 0, 7)
  steps, state, metrics = _train(exp, mesh_lib.make_mesh(), 7, batches, 3)
  for i, (got, expected) in enumerate(zip(two_devices["metrics"], metrics)):
    assert got["accuracy"] == expected["accuracy"], i
    for key in ("loss", "margin_loss", "reconstruction_loss"):
      _close(got[key], expected[key], f"step {i}: {key}")
  _close_states(two_devices["state"], _leaves(state))
  evaluation = loop.evaluate(steps, state, splits.test, 32)
  assert two_devices["evaluation"]["count"] == evaluation["count"] == 100
  assert (two_devices["evaluation"]["accuracy"] == evaluation["accuracy"])
  for key in EVAL_METRICS:
    _close(two_devices["evaluation"][key], evaluation[key], key)


def test_a_run_on_two_devices_equals_one_device(idx_dir, tiny_run,
                                                two_devices):
  assert two_devices["errors"] == {
      "batch_size": "batch_size=3 is not divisible by the 2 devices; use a "
                    "multiple of 2",
      "eval_batch_size": "eval_batch_size=3 is not divisible by the 2 "
                         "devices; use a multiple of 2"}
  results = two_devices["results"]
  assert (results["devices"], results["processes"]) == (2, 1)
  for key in ("step", "num_train", "num_validation", "best_step",
              "num_evaluations", "test_accuracy", "best_test_accuracy"):
    assert results[key] == tiny_run.results[key], key
  for key in ("test_margin_loss", "test_reconstruction_loss", "test_loss"):
    _close(results[key], tiny_run.results[key], key)
  workdir = two_devices["workdir"]
  for got, expected in zip(history.read(str(workdir)),
                           history.read(str(tiny_run.workdir))):
    for key, value in expected.items():
      if key.startswith(("test_", "validation_")):
        _close(got[key], value, f"step {expected['step']}: {key}")
  got, expected = curves.from_events(str(workdir)), curves.from_events(
      str(tiny_run.workdir))
  for key in ("train_loss", "train_margin_loss", "train_reconstruction_loss",
              "train_accuracy"):
    np.testing.assert_array_equal(got[key][0], [4, 8])
    _close(got[key][1], expected[key][1], key)
  exp = experiment.resolve(tiny_run.config)
  mesh = mesh_lib.make_mesh()
  _close_states(_leaves(_restore(workdir, exp, mesh)),
                _leaves(_restore(tiny_run.workdir, exp, mesh)))


def test_process_shards_are_disjoint_and_complete(idx_dir):
  exp = experiment.resolve(conftest.tiny_config(idx_dir,
                                                validation_fraction=0.0))
  whole = exp.load_splits(0, 1)
  shards = [exp.load_splits(p, 2) for p in (0, 1)]
  for split in ("train", "test"):
    parts = [getattr(s, split) for s in shards]
    full = getattr(whole, split)
    assert [len(p) for p in parts] == [len(full) // 2] * 2  # 128, 50
    np.testing.assert_array_equal(
        np.concatenate([p.images for p in parts]), full.images)
    np.testing.assert_array_equal(
        np.concatenate([p.labels for p in parts]), full.labels)
    seen = [{im.tobytes() for im in p.images} for p in parts]
    assert len(seen[0]) == len(parts[0]) and not seen[0] & seen[1]
  # The totals: every process reads the whole IDX file.
  assert shards[0].info.num_train == shards[1].info.num_train == 256


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start_two_processes(args: list[str]) -> list[subprocess.Popen]:
  """``args`` + the flags of process i of 2, one CPU device each."""
  port = _free_port()
  return [
      subprocess.Popen(
          args + [f"--coordinator_address=127.0.0.1:{port}",
                  "--num_processes=2", f"--process_id={i}"],
          env=conftest.subprocess_env(devices=1), cwd=conftest.ROOT,
          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]


def _wait(procs) -> list[tuple[str, str]]:
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  return outs


# 4 steps (log_every_steps=1: each step's metrics in the events),
# checkpoints at steps 2 and 4.
_TWO_PROCESS_FLAGS = ("--config.num_train_steps=4", "--config.log_every_steps=1",
                      "--config.checkpoint_every_steps=2")


@pytest.fixture(name="two_process_run", scope="module")
def fixture_two_process_run(idx_dir, tmp_path_factory):
  """main.py training the tiny model in 2 processes, started here and waited
  for by _finished: the tests do their one-device work meanwhile."""
  workdir = tmp_path_factory.mktemp("two_processes") / "w"
  run = {"workdir": workdir, "outs": None, "procs": _start_two_processes(
      [sys.executable, str(conftest.ROOT / "main.py"),
       *conftest.tiny_args(idx_dir, workdir, *_TWO_PROCESS_FLAGS)])}
  yield run
  for p in run["procs"]:
    if p.poll() is None:
      p.kill()
      p.communicate()


def _finished(run) -> list[tuple[str, str]]:
  """The training processes' (stdout, stderr), once they have succeeded."""
  if run["outs"] is None:
    run["outs"] = _wait(run["procs"])
  return run["outs"]


def test_two_processes_train_one_model(idx_dir, two_process_run):
  """Two processes of one device each, each reading its half of the data,
  train as one device does on the same global batches: process 0's 16
  examples then process 1's, at every step."""
  workdir = two_process_run["workdir"]
  # Meanwhile, the same 4 steps on one device in this process.
  exp = experiment.resolve(conftest.tiny_config(idx_dir))
  shards = [exp.load_splits(p, 2) for p in (0, 1)]
  # The processes hold out their parts of the one process's 25 examples
  # (10% of 256), so a run validates on the same images on any number of
  # processes.
  one = exp.load_splits(0, 1)
  held = np.concatenate([s.validation.images for s in shards])
  assert len(held) == 25
  np.testing.assert_array_equal(held, one.validation.images)
  per_epoch = input_pipeline.steps_per_epoch(256 - 25, 32)
  streams = [input_pipeline.train_batches(shards[p].train, 16, exp.config.seed,
                                          0, p, per_epoch) for p in (0, 1)]

  def global_batches():
    while True:
      parts = [next(s) for s in streams]
      yield {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  mesh = mesh_lib.make_mesh()
  steps, state, metrics = _train(exp, mesh, per_epoch, global_batches(), 4)
  test = loop.evaluate(steps, state, one.test, 32)
  validation = loop.evaluate(steps, state, input_pipeline.Split(
      np.concatenate([s.validation.images for s in shards]),
      np.concatenate([s.validation.labels for s in shards])), 32)

  outs = _finished(two_process_run)
  # Only process 0 writes INFO lines to the terminal (without --verbosity=1).
  assert "JAX process 0 of 2; 1 local / 2 global devices" in outs[0][1]
  assert "JAX process" not in outs[1][1]
  results = json.loads((workdir / "results.json").read_text())
  assert (results["processes"], results["devices"]) == (2, 2)
  assert (results["step"], results["num_train"],
          results["num_validation"]) == (4, 231, 25)
  ckpt = checkpoints.Checkpointer(str(workdir), create=False)
  assert ckpt.all_steps() == [2, 4]
  ckpt.close()
  # Each step's training metrics (the events of process 0).
  logged = curves.from_events(str(workdir))
  for key in TRAIN_METRICS:
    steps_logged, values = logged[f"train_{key}"]
    np.testing.assert_array_equal(steps_logged, [1, 2, 3, 4])
    _close(values, [m[key] for m in metrics], key)
  # The evaluation at step 4, of the whole test and validation sets.
  record = history.read(str(workdir))[-1]
  assert record["step"] == 4
  for prefix, expected in (("test", test), ("validation", validation)):
    assert record[f"{prefix}_accuracy"] == expected["accuracy"], prefix
    for key in EVAL_METRICS:
      _close(record[f"{prefix}_{key}"], expected[key], f"{prefix}_{key}")
  # The whole state.
  _close_states(_leaves(_restore(workdir, exp, mesh)), _leaves(state))


def test_two_processes_evaluate_an_ensemble(idx_dir, two_process_run,
                                            tmp_path):
  """main.py --mode=ensemble in 2 processes: each process reports the
  accuracies of the whole test set (not its shard), the same as one process
  does; process 0 writes the file. (--mode=visualize in several processes
  is not run here: its figures cost some 30 s of CPU time per process.)"""
  _finished(two_process_run)
  trained_dir = two_process_run["workdir"]
  # Two members: the latest checkpoint (step 4) and, in a copy without it,
  # step 2.
  step2 = tmp_path / "step2"
  shutil.copytree(trained_dir, step2)
  shutil.rmtree(step2 / "checkpoints" / "4")
  assert checkpoints.latest_step(str(step2)) == 2
  members = f"--config.ensemble_workdirs={trained_dir},{step2}"
  procs = _start_two_processes(
      [sys.executable, str(conftest.ROOT / "main.py"), "--mode=ensemble",
       *conftest.tiny_args(idx_dir, tmp_path / "two", members)])
  # Meanwhile, the same in this process on one device.
  config = conftest.tiny_config(
      idx_dir, ensemble_workdirs=f"{trained_dir},{step2}")
  expected = ensemble.evaluate_ensemble(config, str(tmp_path / "one"))
  outs = _wait(procs)
  assert expected["num_test"] == 100 and expected["num_models"] == 2
  for stdout, _ in outs:
    got = json.loads(stdout.strip().splitlines()[-1])
    assert got == expected
  saved = json.loads((tmp_path / "two" / "ensemble_results.json").read_text())
  assert saved == expected
