"""The fast convolution formulations equal XLA's convolution, forward and
gradients, and a model built on them equals one built on XLA's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from capsnet_jax import conv
from capsnet_jax import models
from configs import default


@pytest.mark.parametrize("impl", ["patches", "rows"])
@pytest.mark.parametrize("shape,kernel,stride", [
    ((2, 11, 11, 3), (9, 9, 3, 5), 1),
    ((2, 20, 20, 4), (9, 9, 4, 6), 2),
    ((1, 13, 10, 2), (3, 5, 2, 3), 2),  # odd, non-square, ragged stride
])
def test_conv_equals_xla_forward_and_gradients(impl, shape, kernel, stride):
  x = jax.random.normal(jax.random.key(0), shape)
  k = jax.random.normal(jax.random.key(1), kernel)
  w = jax.random.normal(jax.random.key(2), conv.conv2d(x, k, stride, "xla").shape)

  def loss(impl_):
    return lambda x_, k_: jnp.sum(w * conv.conv2d(x_, k_, stride, impl_))

  np.testing.assert_allclose(conv.conv2d(x, k, stride, impl),
                             conv.conv2d(x, k, stride, "xla"), rtol=1e-5, atol=1e-4)
  got = jax.grad(loss(impl), argnums=(0, 1))(x, k)
  want = jax.grad(loss("xla"), argnums=(0, 1))(x, k)
  for g, h in zip(got, want):
    np.testing.assert_allclose(g, h, rtol=1e-5, atol=1e-4)


def test_auto_resolves_per_backend():
  cpu = jax.default_backend() == "cpu"
  assert conv.resolve("auto") == ("patches" if cpu else "xla")
  assert conv.inference_impl("auto") == ("rows" if cpu else "xla")
  assert conv.inference_impl("xla") == "xla"
  with pytest.raises(ValueError, match="valid"):
    conv.conv2d(jnp.zeros((1, 9, 9, 1)), jnp.zeros((9, 9, 1, 1)), 1, "fft")


def test_tiny_capsnet_same_outputs_and_gradients_for_every_impl():
  config = default.get_config()
  config.model = "tiny"
  images = jax.random.uniform(jax.random.key(0), (2, 28, 28, 1))
  labels = jnp.array([3, 7])
  results = {}
  for impl in ("xla", "patches", "rows"):
    config.conv_impl = impl
    model = models.create_model(config, (28, 28, 1), 10)
    params = model.init(jax.random.key(1), images)["params"]

    def loss(p, model=model):
      out = model.apply({"params": p}, images, labels, train=True)
      return jnp.sum(out["lengths"]) + jnp.sum(out["reconstructions"])

    results[impl] = (loss(params), jax.grad(loss)(params))
  for impl in ("patches", "rows"):
    np.testing.assert_allclose(results[impl][0], results["xla"][0], rtol=1e-5)
    for g, h in zip(jax.tree.leaves(results[impl][1]),
                    jax.tree.leaves(results["xla"][1])):
      np.testing.assert_allclose(g, h, rtol=2e-4, atol=1e-6)
