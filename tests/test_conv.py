"""The fast convolution formulations equal XLA's convolution, forward and
gradients, and a model built on them equals one built on XLA's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from capsnet_jax.model import conv
from capsnet_jax.model import models


@pytest.mark.parametrize("impl", ["patches", "rows", "dft", "fft"])
@pytest.mark.parametrize("shape,kernel,stride", [
    ((2, 9, 9, 3), (5, 5, 3, 5), 1),
    ((2, 20, 20, 4), (9, 9, 4, 6), 2),  # the primary capsules' geometry
    ((1, 13, 10, 2), (3, 5, 2, 3), 2),  # odd, non-square, ragged stride
    ((2, 14, 13, 2), (4, 3, 2, 3), 3),  # 9 phases, odd transform sizes
])
def test_conv_equals_xla_forward_and_gradients(impl, shape, kernel, stride):
  x = jax.random.normal(jax.random.key(0), shape)
  k = jax.random.normal(jax.random.key(1), kernel)
  w = jax.random.normal(jax.random.key(2), conv.conv2d(x, k, stride, "xla").shape)

  # Jitted: one compilation each, not one per operation (several times
  # faster for the unrolled "patches" and "rows" forms).
  def value_and_grads(impl_):
    def loss(x_, k_):
      y = conv.conv2d(x_, k_, stride, impl_)
      return jnp.sum(w * y), y
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(x, k)

  (_, y), got = value_and_grads(impl)
  (_, want_y), want = value_and_grads("xla")
  np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-4)
  for g, h in zip(got, want):
    np.testing.assert_allclose(g, h, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("impl", ["xla", "patches", "rows", "fft"])
@pytest.mark.parametrize("shape,kernel,stride", [
    ((2, 6, 6, 3), (9, 9, 3, 4), 2),   # the deconv decoder's first layer
    ((2, 7, 7, 4), (5, 5, 4, 5), 1),
    ((2, 9, 9, 3), (2, 2, 3, 1), 1),   # its output layer
    ((1, 5, 4, 2), (3, 5, 2, 3), 2),   # odd, non-square
])
def test_conv_transpose_equals_flax_forward_and_gradients(impl, shape, kernel,
                                                          stride):
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.key(0), shape)
  k = jax.random.normal(jax.random.key(1), kernel)
  flax_layer = nn.ConvTranspose(kernel[-1], kernel[:2], strides=(stride, stride),
                                padding="VALID", use_bias=False)

  def reference(x_, k_):
    return flax_layer.apply({"params": {"kernel": k_}}, x_)

  want_y = jax.jit(reference)(x, k)
  assert want_y.shape[1:3] == ((shape[1] - 1) * stride + kernel[0],
                               (shape[2] - 1) * stride + kernel[1])
  w = jax.random.normal(jax.random.key(2), want_y.shape)

  def grads(f):  # jitted: one compilation, not one per operation
    return jax.jit(jax.grad(lambda x_, k_: jnp.sum(w * f(x_, k_)),
                            argnums=(0, 1)))(x, k)

  def ours(x_, k_):
    return conv.conv_transpose2d(x_, k_, stride, impl)

  np.testing.assert_allclose(jax.jit(ours)(x, k), want_y, rtol=1e-5, atol=1e-4)
  for g, h in zip(grads(ours), grads(reference)):
    np.testing.assert_allclose(g, h, rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU's choice")
def test_auto_on_cpu_trains_with_patches_and_infers_with_infer():
  assert conv.resolve("auto") == "patches"
  assert conv.inference_impl("auto") == "infer"


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU's choice")
def test_auto_on_cpu_takes_fft_for_large_float32_transposed_kernels():
  """The deconv decoder's 9 x 9 transposed convolutions run by FFT under
  "auto" (and "infer"), its 2 x 2 output layer and bfloat16 ones as
  patches: read from the traced program (FFTs or none). Traced only."""
  def ffts(x_shape, k_shape, impl, dtype=jnp.float32):
    x = jax.ShapeDtypeStruct(x_shape, dtype)
    k = jax.ShapeDtypeStruct(k_shape, dtype)
    text = str(jax.make_jaxpr(
        lambda a, b: conv.conv_transpose2d(a, b, 1, impl))(x, k))
    return text.count("fft[")
  assert ffts((2, 19, 19, 32), (9, 9, 32, 64), "auto") == 3
  assert ffts((2, 19, 19, 32), (9, 9, 32, 64), "infer") == 3
  assert ffts((2, 7, 7, 4), (5, 5, 4, 5), "auto") == 3
  assert ffts((2, 27, 27, 64), (2, 2, 64, 1), "auto") == 0
  assert ffts((2, 19, 19, 32), (9, 9, 32, 64), "patches") == 0
  assert ffts((2, 19, 19, 32), (9, 9, 32, 64), "auto", jnp.bfloat16) == 0


def test_infer_uses_the_fourier_form_for_batches_of_primary_capsules():
  """The documented choice: the primary capsules' convolution (20 x 20 x 256
  -> 6 x 6 x 256) from a batch of 64 on; conv1, small batches, the deconv
  decoder's and Efficient-CapsNet's convolutions stay direct."""
  primary = (9, 9, 256, 256)
  assert conv._dft_pays((64, 20, 20, 256), primary, 2)  # pylint: disable=protected-access
  assert conv._dft_pays((128, 20, 20, 256), primary, 2)  # pylint: disable=protected-access
  for x, k, s in [((32, 20, 20, 256), primary, 2),
                  ((128, 28, 28, 1), (9, 9, 1, 256), 1),  # conv1
                  ((128, 22, 22, 16), (9, 9, 16, 32), 1),  # a deconv layer
                  ((128, 24, 24, 32), (3, 3, 32, 64), 1)]:  # Efficient stem
    assert not conv._dft_pays(x, k, s), (x, k, s)  # pylint: disable=protected-access


def test_infer_takes_patches_where_the_patch_matrix_is_small_or_short():
  """The documented choice between the direct forms: "patches" under 16 MiB
  of patches or with a contraction of at most 128, "rows" elsewhere."""
  pays = conv._patches_pay  # pylint: disable=protected-access
  primary = (9, 9, 256, 256)
  assert pays((4, 20, 20, 256), primary, 2)  # 11.9 MB
  assert not pays((8, 20, 20, 256), primary, 2)  # 23.9 MB
  assert not pays((32, 20, 20, 256), primary, 2)
  assert pays((500, 28, 28, 1), (9, 9, 1, 256), 1)  # conv1: 81 long
  assert pays((16, 24, 24, 32), (3, 3, 32, 64), 1)  # Efficient stem, 8.9 MB
  assert not pays((500, 24, 24, 32), (3, 3, 32, 64), 1)  # 279 MB, 288 long


def _numpy_conv(x, k, stride):
  """VALID convolution in numpy (float64 products of the patches)."""
  kh, kw = k.shape[:2]
  windows = np.lib.stride_tricks.sliding_window_view(
      np.asarray(x, np.float64), (kh, kw), axis=(1, 2))[:, ::stride, ::stride]
  return np.tensordot(windows, np.asarray(k, np.float64),
                      axes=([3, 4, 5], [2, 0, 1]))


@pytest.mark.parametrize("x_shape,k_shape,form", [
    ((64, 20, 20, 32), (9, 9, 32, 256), "dft"),
    ((8, 20, 20, 256), (9, 9, 256, 8), "rows"),
    ((2, 20, 20, 256), (9, 9, 256, 8), "patches"),
])
def test_infer_equals_a_numpy_convolution_on_each_side_of_its_choices(
    x_shape, k_shape, form):
  """The primary capsules' geometry (20 x 20, 9 x 9, stride 2), with
  channels chosen so that each case is small and "infer" takes each form.
  (Against numpy: XLA's own convolution runs unoptimised in the suite, at
  --xla_backend_optimization_level=0, in tens of seconds at these sizes.)"""
  k = jax.random.normal(jax.random.key(1), k_shape) * 0.01
  x = jax.random.normal(jax.random.key(0), x_shape)
  assert conv._dft_pays(x_shape, k_shape, 2) == (form == "dft")  # pylint: disable=protected-access
  if form != "dft":
    assert conv._patches_pay(x_shape, k_shape, 2) == (form == "patches")  # pylint: disable=protected-access
  # Jitted: eagerly each of the 81 slices of the patches compiles apart.
  infer = jax.jit(conv.conv2d, static_argnums=(2, 3))
  np.testing.assert_allclose(infer(x, k, 2, "infer"), _numpy_conv(x, k, 2),
                             rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(jax.default_backend() == "cpu", reason="GPU/TPU's choice")
def test_auto_on_accelerators_is_xla():
  assert conv.resolve("auto") == "xla"
  assert conv.inference_impl("auto") == "xla"


def test_explicit_impls_are_kept_and_unknown_ones_refused():
  for impl in ("xla", "patches", "rows", "dft", "fft"):
    assert conv.resolve(impl) == impl
    assert conv.inference_impl(impl) == impl
  with pytest.raises(ValueError, match="valid"):
    conv.conv2d(jnp.zeros((1, 9, 9, 1)), jnp.zeros((9, 9, 1, 1)), 1,
                "winograd")
  with pytest.raises(ValueError, match="valid"):
    conv.conv_transpose2d(jnp.zeros((1, 3, 3, 1)), jnp.zeros((2, 2, 1, 1)), 1,
                          "winograd")


# A CapsNet at toy sizes: 22 x 22 inputs, conv1 5 x 5 (8 filters, -> 18 x
# 18), primary capsules 5 x 5 stride 2 (-> 7 x 7 x 2 types of 4D), 4 classes.
TOY = dict(num_classes=4, image_shape=(22, 22, 1), conv_filters=8,
           conv_kernel=5, primary_types=2, primary_dim=4, primary_kernel=5,
           class_dim=4, decoder_hidden=(16, 32))


def test_toy_capsnet_same_outputs_and_gradients_for_every_impl():
  """The whole model's outputs and gradients under "patches" (the CPU's
  training form) equal XLA's; "rows" and "dft", forms for forward passes
  whose gradients are checked layer by layer above, give the same outputs.
  Jitted: one compilation per form, several times faster than op-by-op."""
  images = jax.random.uniform(jax.random.key(0), (2, 22, 22, 1))
  labels = jnp.array([3, 1])
  results = {}
  for impl in ("xla", "patches", "rows", "dft", "fft"):
    model = models.CapsNet(**TOY, conv_impl=impl)
    params = jax.jit(model.init)(jax.random.key(1), images)["params"]

    def loss(p, model=model):
      out = model.apply({"params": p}, images, labels, train=True)
      return (jnp.sum(out["lengths"]) + jnp.sum(out["reconstructions"]),
              (out["lengths"], out["reconstructions"]))

    if impl in ("rows", "dft"):
      results[impl] = (jax.jit(loss)(params), None)
    else:
      results[impl] = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  (want_loss, want_outputs), want_grads = results["xla"]
  for impl in ("patches", "rows", "dft", "fft"):
    (got_loss, got_outputs), got_grads = results[impl]
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
    for g, h in zip(got_outputs, want_outputs):
      np.testing.assert_allclose(g, h, rtol=1e-4, atol=1e-6)
    if got_grads is not None:
      for g, h in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(g, h, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("decoder,convolutions", [("fc", 2), ("deconv", 5)])
def test_every_convolution_of_the_model_takes_its_conv_impl(decoder,
                                                            convolutions):
  """conv1, the primary capsules and the deconv decoder's three transposed
  convolutions are XLA's convolutions under "xla" and none is under the
  other forms (whose sums equal XLA's, layer by layer, above). Traced
  only, not compiled."""
  images = jnp.zeros((2, 22, 22, 1))
  for impl in ("xla", "patches", "rows", "dft", "fft"):
    model = models.CapsNet(**TOY, decoder=decoder, conv_impl=impl)
    variables = jax.eval_shape(model.init, jax.random.key(1), images)
    text = str(jax.make_jaxpr(model.apply)(variables, images))
    assert text.count("conv_general_dilated") == (
        convolutions if impl == "xla" else 0), impl


@pytest.mark.parametrize("rows", [24, 9])  # split into blocks of 8; no split
def test_row_major_transpose_is_the_transpose(rows):
  x = np.arange(rows * 5, dtype=np.float32).reshape(rows, 5)
  np.testing.assert_array_equal(
      np.asarray(jax.jit(conv._row_major_transpose)(jnp.asarray(x))), x.T)


def test_matmul_bf16_and_its_gradients():
  """Float32 accumulation of bfloat16 products: the result equals float32
  products of the bfloat16-rounded inputs (each product exact in float32);
  the gradients are those products rounded to bfloat16."""
  k = jax.random.split(jax.random.key(0), 3)
  a = jax.random.normal(k[0], (24, 40)).astype(jnp.bfloat16)
  b = jax.random.normal(k[1], (40, 16)).astype(jnp.bfloat16)
  g = jax.random.normal(k[2], (24, 16)).astype(jnp.bfloat16)
  out, pull = jax.vjp(conv.matmul_bf16, a, b)
  da, db = pull(g.astype(jnp.float32))
  a32, b32, g32 = (np.asarray(v, np.float32) for v in (a, b, g))
  assert out.dtype == jnp.float32
  assert da.dtype == db.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out), a32 @ b32, rtol=1e-5, atol=1e-5)
  u = 2.0 ** -8  # bfloat16's rounding of the float32 gradients
  np.testing.assert_allclose(np.asarray(da, np.float32), g32 @ b32.T,
                             rtol=u, atol=1e-6)
  np.testing.assert_allclose(np.asarray(db, np.float32), a32.T @ g32,
                             rtol=u, atol=1e-6)


def test_matmul_bf16_float32_operand_gets_a_float32_gradient():
  """Float32 patches: rounded to bfloat16 for the product, their gradient
  the float32 product of the bfloat16 cotangent and operand, not rounded."""
  k = jax.random.split(jax.random.key(3), 3)
  a = jax.random.normal(k[0], (24, 40))
  b = jax.random.normal(k[1], (40, 16)).astype(jnp.bfloat16)
  g = jax.random.normal(k[2], (24, 16)).astype(jnp.bfloat16)
  out, pull = jax.vjp(conv.matmul_bf16, a, b)
  da, db = pull(g.astype(jnp.float32))
  a16 = np.asarray(a.astype(jnp.bfloat16), np.float32)
  b32, g32 = np.asarray(b, np.float32), np.asarray(g, np.float32)
  assert da.dtype == jnp.float32 and db.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out), a16 @ b32, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(da), g32 @ b32.T, rtol=1e-6, atol=1e-6)
  # Rounded to bfloat16, the float32 gradient would be off by up to 2^-9.
  assert np.abs(np.asarray(da) - np.asarray(
      jnp.asarray(g32 @ b32.T).astype(jnp.bfloat16), np.float32)).max() > 0


def test_bf16_patches_convolution_matches_xla():
  """conv2d on bfloat16 inputs through matmul_bf16 against XLA's bfloat16
  convolution with float32 accumulation, forward and gradients (bfloat16
  results: 2 units of 2^-8)."""
  k = jax.random.split(jax.random.key(1), 2)
  x = jax.random.normal(k[0], (2, 12, 12, 8)).astype(jnp.bfloat16)
  w = (0.1 * jax.random.normal(k[1], (3, 3, 8, 16))).astype(jnp.bfloat16)

  def loss(impl):
    def f(x, w):
      y = conv.conv2d(x, w, 2, impl)
      return jnp.sum(y.astype(jnp.float32) ** 2), y
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))

  (l1, y1), (dx1, dw1) = loss("patches")(x, w)
  (l2, y2), (dx2, dw2) = loss("xla")(x, w)
  assert y1.dtype == jnp.bfloat16
  for p, q in ((y1, y2), (dx1, dx2), (dw1, dw2)):
    p, q = np.asarray(p, np.float32), np.asarray(q, np.float32)
    np.testing.assert_allclose(p, q, rtol=2 * 2.0 ** -8,
                               atol=2 * 2.0 ** -8 * np.abs(q).max())
  assert float(l1) == pytest.approx(float(l2), rel=1e-2)


def test_dense_dot_general_bfloat16_through_matmul_bf16():
  """flax Dense with conv.dot_general: bfloat16 products go through
  matmul_bf16 (float32 sums, bfloat16 result within one rounding), float32
  Dense is lax.dot_general's unchanged."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  k = jax.random.split(jax.random.key(2), 2)
  x = jax.random.normal(k[0], (6, 40))
  dense = nn.Dense(12, dtype=jnp.bfloat16, dot_general=conv.dot_general)
  params = dense.init(k[1], x)
  kernel = np.asarray(params["params"]["kernel"].astype(jnp.bfloat16),
                      np.float32)
  x16 = np.asarray(x.astype(jnp.bfloat16), np.float32)
  y = dense.apply(params, x)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y, np.float32), x16 @ kernel,
                             rtol=2.0 ** -8, atol=1e-6)
  assert "custom_vjp_call" in str(jax.make_jaxpr(dense.apply)(params, x))
  grad = jax.grad(lambda p: jnp.sum(dense.apply(p, x).astype(jnp.float32)))
  dk = grad(params)["params"]["kernel"]
  # d sum(x @ W) / dW = x.T @ ones: column sums of the rounded inputs.
  want = np.repeat(x16.sum(0)[:, None], 12, axis=1)
  np.testing.assert_allclose(np.asarray(dk, np.float32), want,
                             rtol=2 * 2.0 ** -8, atol=1e-6)
  plain = nn.Dense(12)
  f32 = nn.Dense(12, dot_general=conv.dot_general)
  np.testing.assert_array_equal(np.asarray(f32.apply(params, x)),
                                np.asarray(plain.apply(params, x)))
