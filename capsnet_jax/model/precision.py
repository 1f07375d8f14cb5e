"""Compute precision: float32 (really float32 on GPUs), tf32 or bfloat16.

Synopsis::

  resolved = precision.use_compute_dtype("auto")   # "float32" on CPUs
  dtype = precision.array_dtype(resolved)          # what the model computes in
"""

import jax
import jax.numpy as jnp


def cpu_bf16_units() -> list[str]:
  """The CPU's bfloat16 instruction sets (amx_bf16, avx512_bf16), if any."""
  try:
    with open("/proc/cpuinfo") as f:
      flags = next((l for l in f if l.startswith("flags")), "").split()
  except OSError:
    return []
  return [f for f in ("amx_bf16", "avx512_bf16") if f in flags]


COMPUTE_DTYPES = ("float32", "tf32", "bfloat16", "auto")


def resolve_compute_dtype(name: str) -> tuple[str, str]:
  """(float32 | tf32 | bfloat16, why) for compute_dtype float32 | tf32 |
  bfloat16 | auto.

  auto: bfloat16 on GPUs and TPUs (bfloat16 matrix units); float32 on CPUs,
  where our measured bfloat16 train step is not faster yet, even with
  AVX512-BF16 or AMX (docs/performance.md).
  """
  if name != "auto":
    return name, "set by compute_dtype"
  backend = jax.default_backend()
  if backend in ("gpu", "tpu", "cuda", "rocm"):
    return "bfloat16", f"auto: {backend} has bfloat16 matrix units"
  units = cpu_bf16_units()
  return "float32", ("auto: CPU" + (f" with {', '.join(units)}" if units else
                                    " without bfloat16 units") +
                     "; the bfloat16 step is not faster than float32 on CPU yet")


def array_dtype(resolved: str) -> jnp.dtype:
  """The arrays' dtype of a resolved compute dtype (tf32 computes on float32
  arrays)."""
  return jnp.dtype(jnp.bfloat16 if resolved == "bfloat16" else jnp.float32)


def matmul_precision(resolved: str) -> str | None:
  """jax_default_matmul_precision for a resolved compute dtype.

  On NVIDIA GPUs JAX runs float32 matrix products and convolutions as TF32
  by default (TPUs: bfloat16 passes), so "float32" asks for "highest", full
  float32; "tf32" for "tensorfloat32"; bfloat16 operands need neither.
  CPUs compute float32 products in float32 whatever the setting.
  """
  return {"float32": "highest", "tf32": "tensorfloat32"}.get(resolved)


def use_compute_dtype(name: str) -> str:
  """Resolves compute_dtype ``name`` and sets JAX's default matmul
  precision to match (for every computation traced afterwards in this
  process). Returns the resolved name."""
  resolved, _ = resolve_compute_dtype(name)
  jax.config.update("jax_default_matmul_precision", matmul_precision(resolved))
  return resolved
