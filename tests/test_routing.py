"""Tests of dynamic routing: axis, vmapping, iterations and options."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from capsnet_jax import routing
from capsnet_jax.layers import squash

NUM_IN, NUM_OUT, DIM = 12, 4, 6


@pytest.fixture(name="u_hat")
def fixture_u_hat():
  return jax.random.normal(jax.random.key(1), (3, NUM_IN, NUM_OUT, DIM)) * 0.3


@pytest.fixture(name="bias")
def fixture_bias():
  return jax.random.normal(jax.random.key(2), (NUM_OUT, DIM)) * 0.1


def test_coupling_sums_to_one_over_output_capsules(u_hat, bias):
  _, c = routing.dynamic_routing(u_hat[0], bias, iterations=3)
  assert c.shape == (NUM_IN, NUM_OUT)
  np.testing.assert_allclose(np.asarray(c.sum(axis=1)), 1.0, rtol=1e-5)
  # Routing moved the coefficients away from uniform.
  assert np.abs(np.asarray(c) - 1 / NUM_OUT).max() > 1e-3


def test_vmapped_routing_equals_per_example_loop(u_hat, bias):
  layer = functools.partial(routing.dynamic_routing, iterations=3)
  v, c = jax.jit(jax.vmap(layer, in_axes=(0, None)))(u_hat, bias)
  for b in range(u_hat.shape[0]):
    vb, cb = layer(u_hat[b], bias)
    np.testing.assert_allclose(np.asarray(v[b]), np.asarray(vb), atol=1e-6)
    np.testing.assert_allclose(np.asarray(c[b]), np.asarray(cb), atol=1e-6)


def test_one_iteration_is_uniform_coupling(u_hat, bias):
  v, c = routing.dynamic_routing(u_hat[0], bias, iterations=1)
  np.testing.assert_allclose(np.asarray(c), 1 / NUM_OUT, rtol=1e-6)
  expected = squash(u_hat[0].mean(axis=0) * NUM_IN / NUM_OUT + bias)
  np.testing.assert_allclose(np.asarray(v), np.asarray(expected), atol=1e-6)


def test_leaky_routing_leaves_mass_for_the_orphan(u_hat, bias):
  v, c = routing.dynamic_routing(u_hat[0], bias, iterations=1, leaky=True)
  # With zero logits the orphan takes 1 / (K + 1) of every input's mass.
  np.testing.assert_allclose(np.asarray(c), 1 / (NUM_OUT + 1), rtol=1e-6)
  v_plain, _ = routing.dynamic_routing(u_hat[0], bias, iterations=1)
  assert not np.allclose(np.asarray(v), np.asarray(v_plain))
  _, c3 = routing.dynamic_routing(u_hat[0], bias, iterations=3, leaky=True)
  assert np.all(np.asarray(c3.sum(axis=1)) < 1.0)


def test_stop_gradient_changes_gradients_not_values(u_hat, bias):
  def run(stop):
    f = lambda uh: routing.dynamic_routing(uh, bias, 3, stop_gradient=stop)[0]
    value = f(u_hat[0])
    grad = jax.grad(lambda uh: jnp.sum(f(uh) ** 2))(u_hat[0])
    return value, grad
  v_plain, g_plain = run(False)
  v_stop, g_stop = run(True)
  np.testing.assert_allclose(np.asarray(v_plain), np.asarray(v_stop), atol=1e-7)
  assert not np.allclose(np.asarray(g_plain), np.asarray(g_stop))
  # With stop_gradient the gradient is that of the last iteration with the
  # coefficients held constant.
  _, c = routing.dynamic_routing(u_hat[0], bias, 3)
  c = jax.lax.stop_gradient(c)
  g_const = jax.grad(lambda uh: jnp.sum(
      squash(jnp.einsum("ij,ijd->jd", c, uh) + bias) ** 2))(u_hat[0])
  np.testing.assert_allclose(np.asarray(g_stop), np.asarray(g_const),
                             atol=1e-6)


def test_class_capsules_shapes_and_parameter_count():
  layer = routing.ClassCapsules(num_out=NUM_OUT, dim=DIM, iterations=2)
  u = jax.random.normal(jax.random.key(0), (5, NUM_IN, 8))
  variables = layer.init(jax.random.key(1), u)
  w = variables["params"]["W"]
  assert w.shape == (NUM_IN, NUM_OUT, DIM, 8)
  assert variables["params"]["bias"].shape == (NUM_OUT, DIM)
  v, c = layer.apply(variables, u)
  assert v.shape == (5, NUM_OUT, DIM) and c.shape == (5, NUM_IN, NUM_OUT)
  # u_hat is W[i, j] @ u[i] for each example.
  u_hat0 = jnp.einsum("ijdk,ik->ijd", w, u[0])
  v0, _ = routing.dynamic_routing(u_hat0, variables["params"]["bias"], 2)
  np.testing.assert_allclose(np.asarray(v[0]), np.asarray(v0), atol=1e-6)


def test_invalid_iterations():
  with pytest.raises(ValueError, match="iterations"):
    routing.dynamic_routing(jnp.zeros((2, 2, 2)), jnp.zeros((2, 2)), 0)
