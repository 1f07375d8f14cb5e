"""Data parallelism: 2 CPU devices in one process, and 2 processes.

The runs on 2 devices are subprocesses because the device count is fixed
when JAX starts (XLA_FLAGS=--xla_force_host_platform_device_count=2); the
one-device references are computed in this process.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np

from capsnet_jax import checkpoints
from capsnet_jax import input_pipeline
from capsnet_jax import train
from capsnet_jax import trained
from configs import mnist

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _env(devices: int = 2) -> dict[str, str]:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["PYTHONPATH"] = str(ROOT)
  env["JAX_PLATFORMS"] = "cpu"
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"
  return env


def test_one_step_on_two_devices_equals_one_device(idx_dir):
  script = textwrap.dedent(f"""
      import jax, numpy as np
      from capsnet_jax import input_pipeline, train
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


def test_two_processes_train_one_model(idx_dir, tmp_path):
  """Two processes of one device each, each reading its half of the data,
  end with the parameters that one device reaches on the same global
  batches: process 0's 8 examples then process 1's, at every step."""
  port = _free_port()
  workdir = tmp_path / "w"
  # XLA's convolutions: the forward-only CPU default ("rows") compiles in
  # some 25 s, XLA's in about one.
  procs = [
      subprocess.Popen(
          _main_args(idx_dir, workdir) + [
              "--config.conv_impl=xla",
              f"--coordinator_address=127.0.0.1:{port}",
              "--num_processes=2", f"--process_id={i}"],
          env=_env(devices=1), cwd=ROOT, stdout=subprocess.PIPE,
          stderr=subprocess.PIPE, text=True)
      for i in range(2)]
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

  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "process 0 of 2" in outs[0][1] and "process 1 of 2" in outs[1][1]
  assert "2 global devices" in outs[0][1]
  with open(workdir / "results.json") as f:
    results = json.load(f)
  assert results["processes"] == 2 and results["devices"] == 2
  assert results["step"] == 4
  ckpt = checkpoints.Checkpointer(str(workdir), create=False)
  restored = ckpt.restore(trained.abstract_state(config, model, mesh))
  ckpt.close()
  assert int(restored.step) == 4
  # Equal up to the order of the gradient all-reduce's sums.
  leaves = jax.tree.leaves(jax.device_get(restored.params))
  assert len(leaves) == len(jax.tree.leaves(expected)) == 12  # 6 kernels, 6 biases
  for a, b in zip(leaves, jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
