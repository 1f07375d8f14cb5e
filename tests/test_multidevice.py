"""Data parallelism: 2 CPU devices in one process, and 2 processes.

Each case runs in a subprocess because the device count is fixed when JAX
starts (XLA_FLAGS=--xla_force_host_platform_device_count=2).
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

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


def test_two_processes_train_one_model(idx_dir, tmp_path):
  port = _free_port()
  workdir = tmp_path / "w"
  procs = [
      subprocess.Popen(
          _main_args(idx_dir, workdir) + [
              f"--coordinator_address=127.0.0.1:{port}",
              "--num_processes=2", f"--process_id={i}"],
          env=_env(devices=1), cwd=ROOT, stdout=subprocess.PIPE,
          stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "process 0 of 2" in outs[0][1] and "process 1 of 2" in outs[1][1]
  assert "2 global devices" in outs[0][1]
  with open(workdir / "results.json") as f:
    results = json.load(f)
  assert results["processes"] == 2 and results["devices"] == 2
  assert results["step"] == 4
