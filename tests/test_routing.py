"""Tests of dynamic routing: axis, vmapping, iterations and options."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from capsnet_jax.model import routing
from capsnet_jax.model.layers import squash

NUM_IN, NUM_OUT, DIM = 12, 4, 6


@pytest.fixture(name="u_hat")
def fixture_u_hat():
  return jax.random.normal(jax.random.key(1), (3, NUM_IN, NUM_OUT, DIM)) * 0.3


@pytest.fixture(name="bias")
def fixture_bias():
  return jax.random.normal(jax.random.key(2), (NUM_OUT, DIM)) * 0.1


def _numpy_routing(u_hat, bias, iterations, leaky=False):
  """Procedure 1 of Sabour et al. written out in numpy, float64, softmax
  included in every iteration: u_hat [num_in, num_out, dim]."""
  u_hat, bias = np.asarray(u_hat, np.float64), np.asarray(bias, np.float64)
  logits = np.zeros(u_hat.shape[:2])
  for r in range(iterations):
    padded = np.concatenate([logits, np.zeros_like(logits[:, :1])], 1) \
        if leaky else logits
    e = np.exp(padded - padded.max(axis=1, keepdims=True))
    c = (e / e.sum(axis=1, keepdims=True))[:, :logits.shape[1]]
    s = (c[:, :, None] * u_hat).sum(axis=0) + bias
    n2 = (s ** 2).sum(axis=-1, keepdims=True)
    v = n2 / (1 + n2) * s / np.sqrt(n2 + 1e-7)
    if r < iterations - 1:
      logits = logits + (u_hat * v[None]).sum(axis=-1)
  return v, c


@pytest.mark.parametrize("iterations,leaky", [(1, False), (2, False),
                                              (3, False), (3, True)])
@pytest.mark.parametrize("layout", ["ijd", "jid"])
def test_routing_matches_procedure_1_in_numpy(u_hat, bias, iterations, leaky,
                                              layout):
  u = u_hat[0] if layout == "ijd" else jnp.swapaxes(u_hat[0], 0, 1)
  v, c = routing.dynamic_routing(u, bias, iterations, leaky=leaky,
                                 layout=layout)
  v_np, c_np = _numpy_routing(u_hat[0], bias, iterations, leaky)
  assert c.shape == (NUM_IN, NUM_OUT)
  # Capsule lengths here are about 0.1-0.6.
  np.testing.assert_allclose(np.asarray(v), v_np, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(c), c_np, rtol=1e-5, atol=1e-7)


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


def test_invalid_iterations_and_layout():
  with pytest.raises(ValueError, match="iterations"):
    routing.dynamic_routing(jnp.zeros((2, 2, 2)), jnp.zeros((2, 2)), 0)
  with pytest.raises(ValueError, match="layout"):
    routing.dynamic_routing(jnp.zeros((2, 2, 2)), jnp.zeros((2, 2)), 1,
                            layout="dij")
