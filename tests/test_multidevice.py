"""Data parallelism: 2 CPU devices in one process, and 2 processes.

The runs on 2 devices are subprocesses because the device count is fixed
when JAX starts (XLA_FLAGS=--xla_force_host_platform_device_count=2); the
one-device references are computed in this process.
"""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from capsnet_jax.workdir import checkpoints
from capsnet_jax.inference import ensemble
from capsnet_jax.data import input_pipeline
from capsnet_jax.training import train
from capsnet_jax.inference import trained
from capsnet_jax.analysis import visualize
from configs import mnist
from conftest import subprocess_env

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _env(devices: int = 2) -> dict[str, str]:
  return subprocess_env(devices=devices)


def test_one_step_on_two_devices_equals_one_device(idx_dir):
  script = textwrap.dedent(f"""
      import jax, numpy as np
      from capsnet_jax.data import input_pipeline
      from capsnet_jax.training import train
      from configs import default
      assert jax.device_count() == 2, jax.devices()
      config = default.get_config()
      config.model = "tiny"; config.idx_dir = {str(idx_dir)!r}
      config.batch_size = 8
      train_split, _, info = input_pipeline.load_datasets(config)
      batch = next(input_pipeline.train_batches(train_split, 8, 0))
      params = []
      for devices in (jax.devices()[:1], jax.devices()):
        mesh = jax.sharding.Mesh(np.array(devices), (train.DATA_AXIS,))
        model, state = train.setup_model_and_state(config, info, mesh)
        steps = train.Steps(config, model, mesh)
        state, metrics = steps.train(state, train.global_batch(batch, steps.sharded))
        params.append(jax.device_get(state.params))
      for a, b in zip(jax.tree.leaves(params[0]), jax.tree.leaves(params[1])):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
      print("EQUAL")
  """)
  out = subprocess.run([sys.executable, "-c", script], env=_env(), cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "EQUAL" in out.stdout


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _main_args(idx_dir, workdir, steps=4):
  return [sys.executable, str(ROOT / "main.py"), "--config=configs/mnist.py",
          f"--workdir={workdir}", "--config.model=tiny",
          f"--config.idx_dir={idx_dir}", "--config.batch_size=16",
          f"--config.num_train_steps={steps}", "--config.log_every_steps=2",
          "--config.num_summary_images=2"]


def test_main_logs_two_devices(idx_dir, tmp_path):
  out = subprocess.run(_main_args(idx_dir, tmp_path / "w"), env=_env(),
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "2 global devices" in out.stderr
  with open(tmp_path / "w" / "results.json") as f:
    assert json.load(f)["devices"] == 2


def _tiny_mnist_config(idx_dir, steps=4):
  """The config _main_args gives main.py."""
  config = mnist.get_config()
  config.update(model="tiny", idx_dir=str(idx_dir), batch_size=16,
                num_train_steps=steps, log_every_steps=2, num_summary_images=2)
  return config


def test_process_shards_are_disjoint_and_complete(idx_dir):
  config = _tiny_mnist_config(idx_dir)
  whole = input_pipeline.load_splits(config, 0, 1)
  shards = [input_pipeline.load_splits(config, p, 2) for p in (0, 1)]
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
  assert shards[0].info.num_train == shards[1].info.num_train == 256


def _start_two_processes(args) -> list[subprocess.Popen]:
  """``args`` + the flags of process i of 2, one CPU device each."""
  port = _free_port()
  return [
      subprocess.Popen(
          args + [f"--coordinator_address=127.0.0.1:{port}",
                  "--num_processes=2", f"--process_id={i}"],
          env=_env(devices=1), cwd=ROOT, stdout=subprocess.PIPE,
          stderr=subprocess.PIPE, text=True)
      for i in range(2)]


def _wait(procs) -> list[tuple[str, str]]:
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  return outs


@pytest.fixture(name="two_process_run", scope="module")
def fixture_two_process_run(idx_dir, tmp_path_factory):
  """main.py training the tiny model for 4 steps in 2 processes (checkpoints
  at steps 2 and 4), started here and waited for by _finished: the tests
  do their one-device work meanwhile. XLA's convolutions: the forward-only
  CPU default ("rows") compiles in some 25 s, XLA's in about one."""
  workdir = tmp_path_factory.mktemp("two_processes") / "w"
  run = {"workdir": workdir, "outs": None, "procs": _start_two_processes(
      _main_args(idx_dir, workdir) + ["--config.conv_impl=xla",
                                      "--config.checkpoint_every_steps=2"])}
  yield run
  for p in run["procs"]:
    if p.poll() is None:
      p.kill()


def _finished(run) -> list[tuple[str, str]]:
  """The training processes' (stdout, stderr), once they have succeeded."""
  if run["outs"] is None:
    run["outs"] = _wait(run["procs"])
  return run["outs"]


def test_two_processes_train_one_model(idx_dir, two_process_run):
  """Two processes of one device each, each reading its half of the data,
  end with the parameters that one device reaches on the same global
  batches: process 0's 8 examples then process 1's, at every step."""
  workdir = two_process_run["workdir"]
  # Meanwhile, the same 4 steps on one device in this process.
  config = _tiny_mnist_config(idx_dir)
  config.conv_impl = "xla"
  shards = [input_pipeline.load_splits(config, p, 2).train for p in (0, 1)]
  per_epoch = input_pipeline.steps_per_epoch(256, 16)
  streams = [input_pipeline.train_batches(shards[p], 8, config.seed, 0,
                                          process_index=p,
                                          num_steps_per_epoch=per_epoch)
             for p in (0, 1)]
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), (train.DATA_AXIS,))
  info = input_pipeline.dataset_info(config.dataset, config.data_setup)
  model, state = train.setup_model_and_state(config, info, mesh)
  steps = train.Steps(config, model, mesh)
  for _ in range(4):
    parts = [next(s) for s in streams]
    batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    state, _ = steps.train(state, train.global_batch(batch, steps.sharded))
  expected = jax.device_get(state.params)

  outs = _finished(two_process_run)
  assert "process 0 of 2" in outs[0][1] and "process 1 of 2" in outs[1][1]
  assert "2 global devices" in outs[0][1]
  with open(workdir / "results.json") as f:
    results = json.load(f)
  assert results["processes"] == 2 and results["devices"] == 2
  assert results["step"] == 4
  ckpt = checkpoints.Checkpointer(str(workdir), create=False)
  assert ckpt.all_steps() == [2, 4]
  restored = ckpt.restore(trained.abstract_state(config, model, mesh))
  ckpt.close()
  assert int(restored.step) == 4
  # Equal up to the order of the gradient all-reduce's sums.
  leaves = jax.tree.leaves(jax.device_get(restored.params))
  assert len(leaves) == len(jax.tree.leaves(expected)) == 12  # 6 kernels, 6 biases
  for a, b in zip(leaves, jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# Small figures: 3 rotation angles, 3 decoder steps, 4 images shown.
_VISUALIZE = dict(conv_impl="xla", visualize_rotation_step=180,
                  visualize_primary_steps=3, visualize_primary_examples=32,
                  visualize_num_images=4)

# Each of 2 processes: main.py's flags and jax.distributed, then
# --mode=visualize and --mode=ensemble; every process saves what it got.
# Arguments: config overrides (JSON), visualize's and ensemble's workdirs,
# then the process flags.
_FIGURES_AND_ENSEMBLE = """
import json, sys
import numpy as np
from capsnet_jax import cli
from capsnet_jax.inference import ensemble
from capsnet_jax.analysis import visualize

def flat(tree, prefix=""):
  if isinstance(tree, dict):
    return {k: v for key, sub in tree.items()
            for k, v in flat(sub, f"{prefix}{key}/").items()}
  return {prefix[:-1]: np.asarray(tree)}

flags = cli._parse_flags(sys.argv[:1] + ["--config=configs/mnist.py"]
                         + sys.argv[4:])
cli._initialize_distributed()
config = cli.FLAGS.config
config.update(json.loads(sys.argv[1]))
summary, arrays = visualize.make_figures(config, sys.argv[2])
results = ensemble.evaluate_ensemble(config, sys.argv[3])
out = sys.argv[2] + f".process{cli.FLAGS.process_id}"
np.savez(out + ".npz", **flat(arrays))
with open(out + ".json", "w") as f:
  json.dump(dict(summary=summary, results=results), f)
"""


def _flat(tree, prefix="") -> dict[str, np.ndarray]:
  """Nested dicts of arrays -> {"a/b": array} (as the script saves them)."""
  if isinstance(tree, dict):
    return {k: v for key, sub in tree.items()
            for k, v in _flat(sub, f"{prefix}{key}/").items()}
  return {prefix[:-1]: np.asarray(tree)}


def _assert_close(got, expected):
  """JSON-like values equal, floats to 1e-5."""
  if isinstance(expected, dict):
    assert sorted(got) == sorted(expected)
    for key in expected:
      _assert_close(got[key], expected[key])
  elif isinstance(expected, (list, tuple)):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
      _assert_close(g, e)
  elif isinstance(expected, float):
    assert got == pytest.approx(expected, rel=1e-5)
  else:
    assert got == expected


def test_two_processes_visualize_and_ensemble(idx_dir, two_process_run,
                                             tmp_path):
  """--mode=visualize and --mode=ensemble in 2 processes: each process gets
  the figures' arrays and the ensemble accuracies of one process (the whole
  test set, not its shard); process 0 writes the same files."""
  _finished(two_process_run)
  trained_dir = two_process_run["workdir"]
  # Two members: the latest checkpoint (step 4) and, in a copy without it,
  # step 2. Each visualize run gets its own copy of the workdir: none
  # reads another's cached primary decoder.
  for name in ("one", "two", "step2"):
    shutil.copytree(trained_dir, tmp_path / name)
  shutil.rmtree(tmp_path / "step2" / "checkpoints" / "4")
  ckpt = checkpoints.Checkpointer(str(tmp_path / "step2"), create=False)
  assert ckpt.latest_step() == 2
  ckpt.close()
  overrides = dict(model="tiny", idx_dir=str(idx_dir), batch_size=16,
                   ensemble_workdirs=f"{trained_dir},{tmp_path / 'step2'}",
                   **_VISUALIZE)
  procs = _start_two_processes(
      [sys.executable, "-c", _FIGURES_AND_ENSEMBLE, json.dumps(overrides),
       str(tmp_path / "two"), str(tmp_path / "ensemble_two")])
  # Meanwhile, the same in this process on one device.
  config = mnist.get_config()
  config.update(overrides)
  summary, arrays = visualize.make_figures(config, str(tmp_path / "one"))
  results = ensemble.evaluate_ensemble(config, str(tmp_path / "ensemble_one"))
  _wait(procs)

  assert summary["num_test"] == results["num_test"] == 100
  expected = _flat(arrays)
  assert expected["confusion_matrix/matrix"].sum() == 100
  for i in range(2):
    out = str(tmp_path / "two") + f".process{i}"
    with np.load(out + ".npz") as saved:
      got = dict(saved)
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
      np.testing.assert_allclose(got[key], value, rtol=1e-4, atol=1e-5,
                                 err_msg=key)
    with open(out + ".json") as f:
      saved = json.load(f)
    saved["summary"]["seconds"] = summary["seconds"]
    _assert_close(saved["summary"], summary)
    _assert_close(saved["results"], results)
  # Process 0 wrote the files that one process writes.
  assert sorted(os.listdir(tmp_path / "one" / "figures")) == sorted(
      os.listdir(tmp_path / "two" / "figures"))
  with open(tmp_path / "two" / "figures" / "summary.json") as f:
    assert json.load(f)["confusion_trace"] == summary["confusion_trace"]
  with open(tmp_path / "ensemble_two" / "ensemble_results.json") as f:
    _assert_close(json.load(f), results)
