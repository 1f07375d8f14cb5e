"""VALID 2-D convolutions with implementations that are fast on CPU and GPU.

Synopsis::

  y = conv.conv2d(x, kernel, stride=2, impl="patches")   # x: [B, H, W, Cin]

XLA on CPU runs the backward pass of a strided 9x9 convolution about 20x slower
than its forward pass. Writing the convolution as an explicit matrix product of
image patches keeps all three products (forward, input gradient, kernel
gradient) on the GEMM path, which XLA runs near peak on every backend.

For inference on CPU, "rows" builds the patches one output row at a time
(each block stays in cache) and runs one product per row in a loop: the same
sums, a faster forward pass where the patch matrix is large, but a slower
backward pass.

"dft" computes the convolution through the discrete Fourier transform (real
DFT matrices, float32): for the primary capsules (20 x 20 x 256 -> 6 x 6 x
256, 9 x 9, stride 2) it needs about 0.4x the multiply-adds of the direct sum
at a batch of 128, and its gradients are the same kind of products. On CPU
"auto" picks it per convolution where it pays (see _dft_pays) and otherwise
"patches" to train; to infer ("infer", which inference_impl gives), "patches"
where the patch matrix is small or its contraction short, "rows" elsewhere
(see _patches_pay).

"fft" computes the convolution as a product of fast Fourier transforms
(jnp.fft, float32): a stride-1 correlation in full, then every stride-th
output. It pays for the deconv decoder's transposed convolutions, whose
zero-padded "patches" form spends most of its products on padding: on CPU
"auto" takes it for float32 transposed convolutions with kernels of at least
5 x 5 (the 19 x 19 x 32 -> 27 x 27 x 64 layer of the MNIST decoder, batch
128, forward and both gradients: 1.07 s as patches, 0.18 s by FFT on a
2-core Intel Xeon with AMX).

bfloat16 inputs (compute_dtype=bfloat16) go through ``matmul_bf16``: float32
accumulation, and gradient products whose transposed operands are laid out
row-major in memory. XLA on CPU otherwise folds the transposes of autodiff
into the products as column-major operands, which its bfloat16 kernels run
no faster than float32 (measured on the primary-capsule product).
"""

import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

Impl = Literal["auto", "xla", "patches", "rows", "dft", "fft", "infer"]
IMPLS = ("auto", "xla", "patches", "rows", "dft", "fft")
# "infer" is what inference_impl("auto") gives on CPU: per convolution, "dft"
# where it should beat the direct sum (_dft_pays), else "patches" or "rows"
# (_patches_pay).
_ALL = IMPLS + ("infer",)


def resolve(impl: Impl) -> str:
  """The implementation family "auto" stands for on this backend (for
  training): "patches" on CPU (conv2d then takes "dft" for the convolutions
  where it pays), "xla" elsewhere."""
  if impl == "auto":
    return "patches" if jax.default_backend() == "cpu" else "xla"
  return impl


def inference_impl(impl: Impl) -> str:
  """The implementation to run forward-only passes with: "auto" -> "infer"
  on CPU (see conv2d), "xla" elsewhere; an explicit choice is kept."""
  if impl == "auto":
    return "infer" if jax.default_backend() == "cpu" else "xla"
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


@functools.lru_cache(maxsize=None)
def _dft_plan(h: int, w: int, kh: int, kw: int, stride: int) -> dict:
  """Sizes and real DFT matrices of conv2d's "dft" form (see _conv2d_dft)."""
  s = stride
  ho, wo = output_size(h, kh, s), output_size(w, kw, s)
  am, bm = -(-kh // s), -(-kw // s)  # taps of the kernel's phases
  n1, n2 = ho + am - 1, wo + bm - 1  # transform sizes: no wrap-around
  # One frequency of each conjugate pair: the transforms of real arrays are
  # Hermitian, so the other adds the same real part again (52 of the 100
  # frequencies of a 10 x 10 transform).
  kept, seen = [], set()
  for f in np.ndindex(n1, n2):
    if f not in seen:
      kept.append(f)
      seen.update({f, (-f[0] % n1, -f[1] % n2)})
  f1, f2 = (np.array(a)[:, None, None] for a in zip(*kept))

  def theta(rows, cols):  # [F, rows * cols]
    r = np.arange(rows)[None, :, None]
    c = np.arange(cols)[None, None, :]
    return (2 * np.pi * (f1 * r / n1 + f2 * c / n2)).reshape(-1, rows * cols)

  tx, tk, ty = theta(n1, n2), theta(am, bm), theta(ho, wo)
  freqs = tx.shape[0]
  self_conjugate = ((-f1 % n1 == f1) & (-f2 % n2 == f2)).reshape(-1, 1)
  weight = np.where(self_conjugate, 1.0, 2.0) / (n1 * n2)
  f32 = lambda a: a.astype(np.float32)
  return dict(
      ho=ho, wo=wo, am=am, bm=bm, n1=n1, n2=n2, freqs=freqs,
      # X(f) = sum_n x[n] e^{-i theta}: rows (f, real/imaginary) interleaved.
      x=f32(np.stack([np.cos(tx), -np.sin(tx)], 1).reshape(2 * freqs, -1)),
      # conj(K(f)) = sum_a k[a] e^{+i theta}: all real parts, then imaginary.
      k=f32(np.concatenate([np.cos(tk), np.sin(tk)])),
      # y[n] = Re sum_f weight(f) Y(f) e^{+i theta}: [2F, ho * wo].
      y=f32(np.concatenate([np.cos(ty) * weight, -np.sin(ty) * weight])))


def _dft_pays(x_shape, kernel_shape, stride: int) -> bool:
  """Whether the "dft" form should beat the direct sum for this batch.

  Its multiply-adds, with the transforms weighted by how much slower than
  the products they run (small contractions: the input's at about half the
  products' rate, the kernel's, shared by the batch, at about a quarter;
  measured for the primary capsules on a 2-core AMD EPYC), against 0.75x the
  direct sum's (a single large product, faster per multiply-add than the F
  smaller ones). For the primary capsules that picks "dft" from a batch of
  64 on: forward-only, "rows" took 0.22 s at a batch of 32 (dft 0.25 s) and
  0.37 s at 64 (dft 0.28 s).
  """
  b, h, w, cin = x_shape
  kh, kw, _, cout = kernel_shape
  if output_size(h, kh, stride) < 1 or output_size(w, kw, stride) < 1:
    return False
  plan = _dft_plan(h, w, kh, kw, stride)
  f, phases = plan["freqs"], stride * stride
  direct = plan["ho"] * plan["wo"] * kh * kw * cin * cout
  dft = (4 * f * phases * cin * cout  # the complex products
         + 2 * 2 * f * plan["n1"] * plan["n2"] * phases * cin  # input
         + 2 * f * plan["ho"] * plan["wo"] * cout  # inverse transform
         + 4 * 2 * f * plan["am"] * plan["bm"] * phases * cin * cout / b)
  return dft < 0.75 * direct


def _conv2d_dft(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """VALID convolution by the discrete Fourier transform, in float32.

  The strided convolution is split into stride x stride phases (every
  stride-th row and column of the input and of the kernel), each a
  stride-1 correlation; their sum is computed per frequency of an
  n1 x n2 transform big enough that nothing wraps around. The transforms
  are real matrix products with fixed DFT matrices, and the products over
  input channels are, for each of the F frequencies, one [B, P * Cin] x
  [P * Cin, Cout] complex product (as two real ones with Xr and Xi stacked).
  For the primary capsules (20 x 20 x 256 -> 6 x 6 x 256, 9 x 9, stride 2):
  F = 52 and P * Cin = 1,024, about 0.4x the multiply-adds of the direct sum.
  """
  dtype = x.dtype
  x, kernel = x.astype(jnp.float32), kernel.astype(jnp.float32)
  b, h, w, cin = x.shape
  kh, kw, _, cout = kernel.shape
  s = stride
  plan = _dft_plan(h, w, kh, kw, s)
  n1, n2, f = plan["n1"], plan["n2"], plan["freqs"]
  pc = s * s * cin
  # xm[(m, n), (b, p, q, c)] = x[b, s m + p, s n + q, c].
  x = x[:, :s * n1, :s * n2]
  x = jnp.pad(x, ((0, 0), (0, s * n1 - x.shape[1]), (0, s * n2 - x.shape[2]),
                  (0, 0)))
  xm = x.reshape(b, n1, s, n2, s, cin).transpose(1, 3, 0, 2, 4, 5)
  xm = xm.reshape(n1 * n2, b * pc)
  # km[(a, c'), (p, q, c, o)] = kernel[s a + p, s c' + q, c, o].
  k = jnp.pad(kernel, ((0, s * plan["am"] - kh), (0, s * plan["bm"] - kw),
                       (0, 0), (0, 0)))
  km = k.reshape(plan["am"], s, plan["bm"], s, cin, cout)
  km = km.transpose(0, 2, 1, 3, 4, 5).reshape(plan["am"] * plan["bm"], -1)
  xs = (plan["x"] @ xm).reshape(f, 2 * b, pc)  # [F, (Xr; Xi), P * Cin]
  kf = (plan["k"] @ km).reshape(2, f, pc, cout)  # Kr, Ki
  z_r = jnp.einsum("fbk,fko->fbo", xs, kf[0])  # Xr Kr; Xi Kr
  z_i = jnp.einsum("fbk,fko->fbo", xs, kf[1])  # Xr Ki; Xi Ki
  y = jnp.concatenate([z_r[:, :b] - z_i[:, b:], z_i[:, :b] + z_r[:, b:]])
  y = jnp.einsum("fbo,fs->bso", y, plan["y"])
  return y.reshape(b, plan["ho"], plan["wo"], cout).astype(dtype)


def _full_correlation_fft(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """z[b, n, m, o] = sum x[b, n - kh + 1 + a, m - kw + 1 + c, i] *
  kernel[a, c, i, o] over the kernel's taps and input channels, where x is
  zero outside itself: [B, H + kh - 1, W + kw - 1, Cout], the full linear
  convolution of x with the flipped kernel, by real FFTs of that size (no
  wrap-around) and one complex product over channels per frequency."""
  dtype = x.dtype
  x, kernel = x.astype(jnp.float32), kernel.astype(jnp.float32)
  kh, kw = kernel.shape[:2]
  n1, n2 = x.shape[1] + kh - 1, x.shape[2] + kw - 1
  xf = jnp.fft.rfft2(x, s=(n1, n2), axes=(1, 2))
  kf = jnp.fft.rfft2(kernel[::-1, ::-1], s=(n1, n2), axes=(0, 1))
  z = jnp.fft.irfft2(jnp.einsum("bxyi,xyio->bxyo", xf, kf), s=(n1, n2),
                     axes=(1, 2))
  return z.astype(dtype)


def _conv2d_fft(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """VALID correlation by FFT: y[o] = z[stride o + k - 1] of the full
  correlation z (_full_correlation_fft)."""
  kh, kw = kernel.shape[:2]
  ho = output_size(x.shape[1], kh, stride)
  wo = output_size(x.shape[2], kw, stride)
  z = _full_correlation_fft(x, kernel)
  return z[:, kh - 1:kh - 1 + stride * (ho - 1) + 1:stride,
           kw - 1:kw - 1 + stride * (wo - 1) + 1:stride]


def _conv_transpose2d_fft(x: jax.Array, kernel: jax.Array,
                          stride: int) -> jax.Array:
  """flax's VALID ConvTranspose by FFT: the input dilated by ``stride``,
  then the full correlation, [B, (H - 1) s + kh, (W - 1) s + kw, Cout]."""
  if stride > 1:
    x = jax.lax.pad(x, jnp.zeros((), x.dtype),
                    [(0, 0, 0), (0, 0, stride - 1), (0, 0, stride - 1),
                     (0, 0, 0)])
  return _full_correlation_fft(x, kernel)


# Transposed convolutions with at least this many kernel taps take "fft"
# under "auto" on CPU (float32); smaller ones (the decoder's 2 x 2 output
# layer: 0.067 s as patches, 0.10 s by FFT, same host) stay "patches".
_FFT_MIN_TAPS = 25


def _conv2d_rows(x: jax.Array, matrix: jax.Array, kh: int, kw: int,
                 stride: int) -> jax.Array:
  """The "rows" form: for each output row, the patches of its kh input rows
  times the matrix, as one compiled loop body (lax.map), not one unrolled
  product per row: the same sums (bitwise, measured), and the loop compiles
  in a quarter of the time (primary capsules: 2.9 s against 11.3 s)."""

  def row(r):
    strip = jax.lax.dynamic_slice_in_dim(x, stride * r, kh, axis=1)
    return _matmul(_patches(strip, kh, kw, stride), matrix)[:, 0]

  out = jax.lax.map(row, jnp.arange(output_size(x.shape[1], kh, stride)))
  return jnp.moveaxis(out, 0, 1)  # [Ho, B, Wo, Cout] -> [B, Ho, Wo, Cout]


# Forward-only passes ("infer") on CPU take "patches" where the patch matrix
# is small or its contraction short, "rows" elsewhere (2-core AMD EPYC,
# forward, ms, rows / patches: conv1 [81 x 256] at a batch of 500 345 / 204;
# primary capsules [20,736 x 256] at 4 32 / 17, at 8 39 / 55, at 16 86 / 104;
# Efficient-CapsNet's second conv [288 x 64] at 16 8.2 / 5.3, at 500
# 267 / 434).
_SMALL_PATCHES_BYTES = 16 * 2**20
_SHORT_CONTRACTION = 128


def _patches_pay(x_shape, kernel_shape, stride: int) -> bool:
  """Whether a forward-only pass should take "patches" over "rows"."""
  b, h, w, cin = x_shape
  kh, kw, _, _ = kernel_shape
  k = kh * kw * cin
  rows = output_size(h, kh, stride) * output_size(w, kw, stride)
  return k <= _SHORT_CONTRACTION or 4 * b * rows * k <= _SMALL_PATCHES_BYTES


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1,
           impl: Impl = "auto") -> jax.Array:
  """VALID convolution without bias.

  Args:
    x: [B, H, W, Cin].
    kernel: [kh, kw, Cin, Cout] (HWIO, as flax stores it).
    stride: stride in both directions.
    impl: "xla" (lax.conv_general_dilated), "patches" (patches times a
      matrix), "rows" (the same, one output row at a time), "dft" (by the
      discrete Fourier transform as matrix products, float32), "fft"
      (by jnp.fft, float32; _conv2d_fft), "auto" (XLA on GPU/TPU; on CPU
      "dft" where it should beat the direct sum for this batch, float32
      only, see _dft_pays: the primary capsules from a batch of 64 on; and
      "patches" elsewhere) or "infer" (forward-only, what
      inference_impl("auto") gives on CPU: "dft" where it pays as for
      "auto"; elsewhere "patches" where the patch matrix is under 16 MiB or
      its contraction at most 128 long, see _patches_pay, else "rows").

  Returns:
    [B, Ho, Wo, Cout].
  """
  if impl not in _ALL:
    raise ValueError(f"Unknown conv impl {impl!r}; valid: {IMPLS}")
  chosen = resolve(impl)
  if impl in ("auto", "infer") and chosen != "xla":
    if (x.dtype == kernel.dtype == jnp.float32 and
        _dft_pays(x.shape, kernel.shape, stride)):
      chosen = "dft"
    elif impl == "infer":
      chosen = ("patches" if _patches_pay(x.shape, kernel.shape, stride)
                else "rows")
  impl = chosen
  if impl == "dft":
    return _conv2d_dft(x, kernel, stride)
  if impl == "fft":
    return _conv2d_fft(x, kernel, stride)
  kh, kw, cin, cout = kernel.shape
  if impl == "xla":
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(stride, stride), padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  matrix = kernel.reshape(kh * kw * cin, cout)
  if impl == "rows":
    return _conv2d_rows(x, matrix, kh, kw, stride)
  return _matmul(_patches(x, kh, kw, stride), matrix)


def conv_transpose2d(x: jax.Array, kernel: jax.Array, stride: int = 1,
                     impl: Impl = "auto") -> jax.Array:
  """VALID transposed convolution without bias, as flax.linen.ConvTranspose.

  Equals ``lax.conv_transpose(x, kernel, (stride, stride), "VALID")`` (no
  kernel flip, flax's default): the input is dilated by ``stride`` and padded
  by ``k - 1`` (plus the stride's remainder), then convolved at stride 1 by
  ``conv2d`` with ``impl``. On CPU "patches" makes the backward pass two
  matrix products and a slice instead of XLA's slow gradient of a dilated
  convolution; "fft" (what "auto" takes on CPU for float32 kernels of at
  least 25 taps) skips the padding's products altogether.

  Args:
    x: [B, H, W, Cin].
    kernel: [kh, kw, Cin, Cout] (as flax.linen.ConvTranspose stores it).
    stride: stride in both directions.
    impl: as for conv2d.

  Returns:
    [B, (H - 1) * stride + kh, (W - 1) * stride + kw, Cout].
  """
  if impl not in _ALL:
    raise ValueError(f"Unknown conv impl {impl!r}; valid: {IMPLS}")
  auto = impl in ("auto", "infer")
  impl = resolve(impl)
  if (auto and impl != "xla" and x.dtype == kernel.dtype == jnp.float32 and
      kernel.shape[0] * kernel.shape[1] >= _FFT_MIN_TAPS):
    impl = "fft"
  if impl == "fft":
    return _conv_transpose2d_fft(x, kernel, stride)
  if impl == "xla":
    return jax.lax.conv_transpose(x, kernel, (stride, stride), "VALID",
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))
  kh, kw = kernel.shape[:2]
  # lax.conv_transpose's VALID padding of the dilated input.
  pads = [(k - 1, stride - 1 + max(k - stride, 0), stride - 1)
          for k in (kh, kw)]
  x = jax.lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), *pads, (0, 0, 0)])
  return conv2d(x, kernel, 1, impl)
