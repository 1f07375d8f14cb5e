"""VALID 2-D convolutions with implementations that are fast on CPU and GPU.

Synopsis::

  y = conv.conv2d(x, kernel, stride=2, impl="patches")   # x: [B, H, W, Cin]

XLA on CPU runs the backward pass of a strided 9x9 convolution about 20x slower
than its forward pass. Writing the convolution as an explicit matrix product of
image patches keeps all three products (forward, input gradient, kernel
gradient) on the GEMM path, which XLA runs near peak on every backend.

For inference on CPU, "rows" builds the patches one output row at a time
(each block stays in cache) and runs one product per row: the same sums, a
faster forward pass, but a slower backward pass, so training uses "patches"
and evaluation "rows" (see inference_impl).

bfloat16 inputs (compute_dtype=bfloat16) go through ``matmul_bf16``: float32
accumulation, and gradient products whose transposed operands are laid out
row-major in memory. XLA on CPU otherwise folds the transposes of autodiff
into the products as column-major operands, which its bfloat16 kernels run
no faster than float32 (measured on the primary-capsule product).
"""

from typing import Literal

import jax
import jax.numpy as jnp

Impl = Literal["auto", "xla", "patches", "rows"]
IMPLS = ("auto", "xla", "patches", "rows")


def resolve(impl: Impl) -> str:
  """The implementation "auto" stands for on this backend (for training)."""
  if impl == "auto":
    return "patches" if jax.default_backend() == "cpu" else "xla"
  return impl


def inference_impl(impl: Impl) -> str:
  """The implementation to run forward-only passes with: "auto" -> "rows" on
  CPU, "xla" elsewhere; an explicit choice is kept."""
  if impl == "auto":
    return "rows" if jax.default_backend() == "cpu" else "xla"
  return impl


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """(before, after) zeros of TensorFlow's SAME padding: the output has
  ceil(size / stride) positions, the odd zero goes after."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def pad_same(x: jax.Array, kernel: int, stride: int) -> jax.Array:
  """x [B, H, W, C] padded so that a VALID convolution gives SAME's output."""
  ph = same_padding(x.shape[1], kernel, stride)
  pw = same_padding(x.shape[2], kernel, stride)
  return jnp.pad(x, ((0, 0), ph, pw, (0, 0)))


def output_size(size: int, kernel: int, stride: int) -> int:
  """Spatial output size of a VALID convolution."""
  return (size - kernel) // stride + 1


def extract_patches(x: jax.Array, kh: int, kw: int, stride: int) -> jax.Array:
  """Image patches of a VALID convolution.

  Args:
    x: [B, H, W, C].
    kh, kw: kernel height and width.
    stride: stride in both directions.

  Returns:
    [B, Ho, Wo, kh * kw * C], ordered (row offset, column offset, channel) so
    that it multiplies ``kernel.reshape(kh * kw * C, Cout)`` of an HWIO kernel.
  """
  _, h, w, _ = x.shape
  ho, wo = output_size(h, kh, stride), output_size(w, kw, stride)
  cols = [
      x[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
      for i in range(kh) for j in range(kw)
  ]
  return jnp.concatenate(cols, axis=-1)


def _row_major_transpose(x: jax.Array) -> jax.Array:
  """x.T [c, r] materialised row-major. A plain transpose feeding a dot
  becomes a layout change of the dot's operand; splitting the rows first
  (a reshape the transposed layout cannot be a bitcast of) makes XLA write
  the transposed array out."""
  r, c = x.shape
  block = next((b for b in (8, 4, 2) if r % b == 0), 1)
  if block == 1:
    return x.T
  return x.reshape(r // block, block, c).transpose(2, 0, 1).reshape(c, r)


def _dot_f32(a: jax.Array, b: jax.Array) -> jax.Array:
  return jax.lax.dot(a, b, preferred_element_type=jnp.float32)


@jax.custom_vjp
def matmul_bf16(a: jax.Array, b: jax.Array) -> jax.Array:
  """a [M, K] @ b [K, N] rounded to bfloat16, accumulated and returned in
  float32; the gradients are bfloat16 products with float32 accumulation,
  their transposed operands materialised row-major, each returned in its
  operand's dtype (a float32 ``a``, such as float32 patches, gets its
  float32 gradient without a round trip through bfloat16)."""
  return _dot_f32(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16))


def _matmul_bf16_fwd(a, b):
  a16, b16 = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
  # Zero-size arrays carry the operands' dtypes to the backward pass.
  dtypes = (jnp.zeros((0,), a.dtype), jnp.zeros((0,), b.dtype))
  return _dot_f32(a16, b16), (a16, b16, dtypes)


def _matmul_bf16_bwd(res, g):
  a16, b16, (a_dtype, b_dtype) = res
  g = g.astype(jnp.bfloat16)
  da = _dot_f32(g, _row_major_transpose(b16))
  db = _dot_f32(_row_major_transpose(a16), g)
  return da.astype(a_dtype.dtype), db.astype(b_dtype.dtype)


matmul_bf16.defvjp(_matmul_bf16_fwd, _matmul_bf16_bwd)


def dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers,
                precision=None, preferred_element_type=None) -> jax.Array:
  """``lax.dot_general`` for ``flax.linen.Dense(dot_general=...)``: a
  bfloat16 [..., K] x [K, N] product goes through matmul_bf16 (float32
  accumulation, row-major gradient operands) and is returned in bfloat16;
  anything else is lax.dot_general itself."""
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
  if (lhs.dtype == jnp.bfloat16 and rhs.dtype == jnp.bfloat16 and
      rhs.ndim == 2 and tuple(lhs_contract) == (lhs.ndim - 1,) and
      tuple(rhs_contract) == (0,) and not lhs_batch and not rhs_batch):
    return _matmul(lhs, rhs)
  return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                             preferred_element_type=preferred_element_type)


def _patches(x: jax.Array, kh: int, kw: int, stride: int) -> jax.Array:
  """extract_patches; bfloat16 images are cut in float32 (exact), and the
  patches stay float32 until matmul_bf16 rounds them back: XLA on CPU runs
  the gradient of bfloat16 slices (pads and adds) and bfloat16 converts many
  times slower than float32 ones (benchmarks/step_parts.py)."""
  if x.dtype == jnp.bfloat16:
    return extract_patches(x.astype(jnp.float32), kh, kw, stride)
  return extract_patches(x, kh, kw, stride)


def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
  """a [..., K] @ b [K, N]; with a bfloat16 ``b`` (compute_dtype=bfloat16)
  through matmul_bf16, the result cast to bfloat16."""
  if b.dtype == jnp.bfloat16:
    out = matmul_bf16(a.reshape(-1, a.shape[-1]), b)
    return out.reshape(*a.shape[:-1], b.shape[-1]).astype(b.dtype)
  return a @ b


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1,
           impl: Impl = "auto") -> jax.Array:
  """VALID convolution without bias.

  Args:
    x: [B, H, W, Cin].
    kernel: [kh, kw, Cin, Cout] (HWIO, as flax stores it).
    stride: stride in both directions.
    impl: "xla" (lax.conv_general_dilated), "patches" (patches times a
      matrix), "rows" (the same, one output row at a time) or "auto"
      (patches on CPU, XLA elsewhere).

  Returns:
    [B, Ho, Wo, Cout].
  """
  if impl not in IMPLS:
    raise ValueError(f"Unknown conv impl {impl!r}; valid: {IMPLS}")
  impl = resolve(impl)
  kh, kw, cin, cout = kernel.shape
  if impl == "xla":
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(stride, stride), padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  matrix = kernel.reshape(kh * kw * cin, cout)
  if impl == "rows":
    ho = output_size(x.shape[1], kh, stride)
    rows = [_matmul(_patches(x[:, stride * r:stride * r + kh], kh, kw,
                             stride), matrix)
            for r in range(ho)]
    return jnp.concatenate(rows, axis=1)
  return _matmul(_patches(x, kh, kw, stride), matrix)


def conv_transpose2d(x: jax.Array, kernel: jax.Array, stride: int = 1,
                     impl: Impl = "auto") -> jax.Array:
  """VALID transposed convolution without bias, as flax.linen.ConvTranspose.

  Equals ``lax.conv_transpose(x, kernel, (stride, stride), "VALID")`` (no
  kernel flip, flax's default): the input is dilated by ``stride`` and padded
  by ``k - 1`` (plus the stride's remainder), then convolved at stride 1 by
  ``conv2d`` with ``impl``. On CPU "patches" makes the backward pass two
  matrix products and a slice instead of XLA's slow gradient of a dilated
  convolution.

  Args:
    x: [B, H, W, Cin].
    kernel: [kh, kw, Cin, Cout] (as flax.linen.ConvTranspose stores it).
    stride: stride in both directions.
    impl: as for conv2d.

  Returns:
    [B, (H - 1) * stride + kh, (W - 1) * stride + kw, Cout].
  """
  if impl not in IMPLS:
    raise ValueError(f"Unknown conv impl {impl!r}; valid: {IMPLS}")
  impl = resolve(impl)
  if impl == "xla":
    return jax.lax.conv_transpose(x, kernel, (stride, stride), "VALID",
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))
  kh, kw = kernel.shape[:2]
  # lax.conv_transpose's VALID padding of the dilated input.
  pads = [(k - 1, stride - 1 + max(k - stride, 0), stride - 1)
          for k in (kh, kw)]
  x = jax.lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), *pads, (0, 0, 0)])
  return conv2d(x, kernel, 1, impl)
