"""Compute precision (capsnet_jax.model.precision): what each compute_dtype
resolves to, the arrays' dtype and JAX's matmul precision it sets."""

import io

import jax
import jax.numpy as jnp
import pytest

from capsnet_jax.model import precision


def test_float32_asks_for_full_precision_products_and_tf32_is_its_own_dtype():
  """JAX's GPU default for float32 products is TF32: compute_dtype=float32
  must set "highest", tf32 "tensorfloat32", bfloat16 nothing."""
  assert precision.matmul_precision("float32") == "highest"
  assert precision.matmul_precision("tf32") == "tensorfloat32"
  assert precision.matmul_precision("bfloat16") is None
  assert precision.array_dtype("float32") == jnp.float32
  assert precision.array_dtype("tf32") == jnp.float32
  assert precision.array_dtype("bfloat16") == jnp.bfloat16
  before = jax.config.jax_default_matmul_precision
  try:
    assert precision.use_compute_dtype("tf32") == "tf32"
    assert jax.config.jax_default_matmul_precision == "tensorfloat32"
    assert precision.use_compute_dtype("float32") == "float32"
    assert jax.config.jax_default_matmul_precision == "highest"
    assert precision.use_compute_dtype("bfloat16") == "bfloat16"
    assert jax.config.jax_default_matmul_precision is None
  finally:
    jax.config.update("jax_default_matmul_precision", before)


def test_explicit_compute_dtypes_are_kept():
  for name in ("float32", "tf32", "bfloat16"):
    assert precision.resolve_compute_dtype(name) == (name,
                                                     "set by compute_dtype")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU's choice")
def test_auto_is_float32_on_cpu_and_says_why(monkeypatch):
  monkeypatch.setattr(precision, "cpu_bf16_units", lambda: ["amx_bf16"])
  resolved, why = precision.resolve_compute_dtype("auto")
  assert resolved == "float32"
  assert why.startswith("auto: CPU with amx_bf16;"), why
  monkeypatch.setattr(precision, "cpu_bf16_units", lambda: [])
  assert precision.resolve_compute_dtype("auto")[1].startswith(
      "auto: CPU without bfloat16 units;")


@pytest.mark.skipif(jax.default_backend() == "cpu", reason="accelerators' choice")
def test_auto_is_bfloat16_on_accelerators():
  assert precision.resolve_compute_dtype("auto")[0] == "bfloat16"


def test_cpu_bf16_units_read_the_flags_line(monkeypatch):
  cpuinfo = ("processor\t: 0\nmodel name\t: Xeon\n"
             "flags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile amx_bf16\n")
  monkeypatch.setattr(precision, "open", lambda path: io.StringIO(cpuinfo),
                      raising=False)
  assert precision.cpu_bf16_units() == ["amx_bf16", "avx512_bf16"]

  def unreadable(path):
    raise FileNotFoundError(path)

  monkeypatch.setattr(precision, "open", unreadable, raising=False)
  assert precision.cpu_bf16_units() == []
