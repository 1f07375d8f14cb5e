"""Training and inference throughput of CapsNet, as training runs it.

  python benchmarks/throughput.py --config=configs/mnist.py --mode=train
  python benchmarks/throughput.py --config=configs/mnist.py --mode=eval --config.batch_size=128
  python benchmarks/throughput.py --config=configs/mnist.py --mode=epoch \
      --config.idx_dir=../shared/data/mnist [--config.num_train_steps=100]

train / eval time the jit-compiled train_step and eval_step of
capsnet_jax.training.steps (on-device augmentation, donated state, the sharded mesh
of every device) on random uint8 batches: warm-up steps, then the median of
--repeats timed steps, each waited for. epoch times the training loop's own
path over the real input pipeline (host gathers, transfers, steps) for one
epoch or --config.num_train_steps steps, and reports the data-wait time.

The last line printed is one JSON object: mode, batch_size, images_per_sec,
gflops_per_sec (XLA's flop count of the compiled step / median time),
peak_gemm_gflops (a 4096^3 float32 matrix product timed in the same run on
the same device), device, step_seconds_median, peak_memory_mb (host RSS on
CPU; device peak bytes in use on GPU/TPU), huge_pages (whether malloc's
memory is in transparent huge pages: capsnet_jax.hostmem, as main.py runs),
and the configuration.
"""

import json
import os
import pathlib
import resource
import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=g-import-not-at-top,wrong-import-position
from capsnet_jax import hostmem
if __name__ == "__main__":
  hostmem.use_huge_pages()  # as main.py does, before JAX is imported

import jax
import jax.numpy as jnp
import numpy as np

import timing  # benchmarks/timing.py, beside this script
from capsnet_jax import experiment
from capsnet_jax.data import input_pipeline
from capsnet_jax.model import precision
from capsnet_jax.training import mesh as mesh_lib
from capsnet_jax.training import state as state_lib
from capsnet_jax.training import steps as steps_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration.",
                                lock_config=True)
flags.DEFINE_list("mode", ["train"], "What to time: train, eval, epoch, or a "
                  "comma-separated list of them (one JSON line each).")
flags.DEFINE_list("dtypes", [], "Compute dtypes to time side by side (e.g. "
                  "float32,bfloat16); default: the config's compute_dtype.")
flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
flags.DEFINE_integer("repeats", 7, "Timed steps (the median is reported).")
flags.mark_flags_as_required(["config"])


def peak_gemm_gflops(n: int = 4096, repeats: int = 5,
                     compute_dtype: str = "float32") -> float:
  """GFLOP/s of an n x n x n matrix product on the default device, operands
  in the resolved ``compute_dtype`` (float32, tf32 or bfloat16) at its
  precision, accumulated and returned in float32."""
  dtype = precision.array_dtype(compute_dtype)
  matmul_precision = precision.matmul_precision(compute_dtype)
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
  matmul = jax.jit(lambda x, y: jnp.matmul(
      x, y, precision=matmul_precision, preferred_element_type=jnp.float32))
  jax.block_until_ready(matmul(a, b))
  return 2 * n ** 3 / timing.median_seconds(lambda: matmul(a, b), repeats) / 1e9


def peak_memory_mb() -> float:
  device = jax.devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2 ** 20
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _flops(jitted, *args) -> float | None:
  try:
    analysis = jitted.lower(*args).compile().cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  return float(analysis["flops"]) if analysis and "flops" in analysis else None


def _random_batch(info, batch_size: int, rng: np.random.Generator,
                  num_targets: int = 1) -> dict:
  batch = {"image": rng.integers(0, 256, (batch_size, *info.stored_shape), np.uint8),
           "label": rng.integers(0, info.num_classes, batch_size).astype(np.int32),
           "mask": np.ones(batch_size, np.float32)}
  if num_targets > 1:  # MultiMNIST: distinct labels, each object's image
    batch["label"] = np.argsort(rng.random((batch_size, info.num_classes)),
                                axis=1)[:, :num_targets].astype(np.int32)
    batch["targets"] = rng.integers(
        0, 256, (batch_size, num_targets, *info.stored_shape), np.uint8)
  return batch


def time_steps(config, mode: str, warmup: int, repeats: int) -> dict:
  """Median step time of the compiled train or eval step on random data."""
  exp = experiment.resolve(config, "train")
  info = exp.info
  mesh = mesh_lib.make_mesh()
  steps = steps_lib.Steps(exp, mesh)
  state = state_lib.create(exp, mesh)
  batch = _random_batch(info, config.batch_size, np.random.default_rng(0),
                       exp.spec.num_targets)
  # XLA compiles inside _flops (lower().compile() fills jit's cache).
  t = time.perf_counter()
  if mode == "train":
    batch = mesh_lib.global_batch(
        {k: v for k, v in batch.items() if k != "mask"}, steps.sharded)
    flops = _flops(steps.train, state, batch)
    holder = {"state": state}

    def step():
      holder["state"], metrics = steps.train(holder["state"], batch)
      return metrics["loss"]
  else:
    batch = mesh_lib.global_batch(batch, steps.sharded)
    flops = _flops(steps.eval, state, batch)

    def step():
      return steps.eval(state, batch)["correct"]
  jax.block_until_ready(step())
  compile_seconds = time.perf_counter() - t
  for _ in range(warmup):
    jax.block_until_ready(step())
  seconds = timing.median_seconds(step, repeats)
  return dict(step_seconds_median=seconds, flops_per_step=flops,
              compile_and_first_step_seconds=compile_seconds)


def time_epoch(config) -> dict:
  """One epoch (or num_train_steps steps) through the real input pipeline."""
  exp = experiment.resolve(config, "train")
  mesh = mesh_lib.make_mesh()
  splits = exp.load_splits()
  train_split, info = splits.train, splits.info
  local_batch = config.batch_size // jax.process_count()
  per_epoch = input_pipeline.steps_per_epoch(info.num_train, config.batch_size)
  num_steps = min(config.num_train_steps, per_epoch) if (
      config.num_train_steps > 0) else per_epoch
  steps = steps_lib.Steps(exp, mesh, per_epoch)
  state = state_lib.create(exp, mesh)
  batches = input_pipeline.train_batches(train_split, local_batch, config.seed,
                                         0, jax.process_index(), per_epoch)
  state, metrics = steps.train(state, mesh_lib.global_batch(next(batches),
                                                            steps.sharded))
  jax.block_until_ready(metrics)  # compilation, not timed
  data_wait, t0 = 0.0, time.perf_counter()
  for _ in range(num_steps):
    t = time.perf_counter()
    batch = mesh_lib.global_batch(next(batches), steps.sharded)
    data_wait += time.perf_counter() - t
    state, metrics = steps.train(state, batch)
  jax.block_until_ready(metrics)
  seconds = time.perf_counter() - t0
  return dict(step_seconds_median=seconds / num_steps, timed_steps=num_steps,
              steps_per_epoch=per_epoch,
              epoch_seconds=seconds / num_steps * per_epoch,
              data_wait_seconds_per_step=data_wait / num_steps, flops_per_step=None)


def measure(config, mode: str, peaks: dict[str, float]) -> dict:
  """One JSON-able record: mode at config.compute_dtype."""
  if mode == "epoch":
    result = time_epoch(config)
  else:
    result = time_steps(config, mode, FLAGS.warmup, FLAGS.repeats)
  flops = result.pop("flops_per_step")
  seconds = result["step_seconds_median"]
  device = jax.devices()[0]
  dtype, why = precision.resolve_compute_dtype(config.compute_dtype)
  if dtype not in peaks:
    peaks[dtype] = peak_gemm_gflops(compute_dtype=dtype)
  if "float32" not in peaks:
    peaks["float32"] = peak_gemm_gflops()
  return dict(
      mode=mode, batch_size=config.batch_size,
      images_per_sec=config.batch_size / seconds,
      gflops_per_sec=flops / seconds / 1e9 if flops else None,
      peak_gemm_gflops=peaks["float32"],
      peak_gemm_gflops_compute_dtype=peaks[dtype],
      fraction_of_peak=(flops / seconds / 1e9 / peaks[dtype]) if flops else None,
      device=f"{device.platform}:{device.device_kind}",
      num_devices=jax.device_count(), **result,
      gflop_per_step=flops / 1e9 if flops else None,
      peak_memory_mb=peak_memory_mb(), dataset=config.dataset,
      decoder=config.decoder, batch_norm=bool(config.batch_norm),
      conv_impl=config.conv_impl, compute_dtype=config.compute_dtype,
      compute_dtype_resolved=dtype, compute_dtype_reason=why,
      matmul_precision=jax.config.jax_default_matmul_precision,
      cpu_bf16_units=precision.cpu_bf16_units(),
      huge_pages=hostmem.enabled(),
      jax_version=jax.__version__, cpu_count=os.cpu_count())


def main(argv):
  del argv
  config = FLAGS.config
  experiment.resolve(config, "train")  # fails fast on a bad config
  for mode in FLAGS.mode:
    if mode not in ("train", "eval", "epoch"):
      raise app.UsageError(f"--mode={mode}: valid: train, eval, epoch")
  peaks: dict[str, float] = {}
  for mode in FLAGS.mode:
    for dtype in FLAGS.dtypes or [config.compute_dtype]:
      with config.unlocked():
        config.compute_dtype = dtype
      print(json.dumps(measure(config, mode, peaks)), flush=True)


if __name__ == "__main__":
  app.run(main)
