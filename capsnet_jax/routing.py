"""Class capsules with dynamic routing by agreement.

Synopsis::

  caps = routing.ClassCapsules(num_out=10, dim=16, iterations=3)
  v, c = caps(u)       # u: [B, num_in, 8] -> v: [B, 10, 16], c: [B, num_in, 10]

Routing is written for one example (``dynamic_routing``) and vmapped over the
batch; it runs inside whatever ``jax.jit`` compiles the model.
"""

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from capsnet_jax.layers import squash


def routing_softmax(logits: jax.Array, leaky: bool = False) -> jax.Array:
  """Coupling coefficients from routing logits.

  Args:
    logits: [num_in, num_out].
    leaky: add an all-zero "orphan" logit column to the softmax and drop it
      afterwards (the authors' leaky routing), so an input capsule may route
      to none of the outputs.

  Returns:
    [num_in, num_out]; each row sums to 1 (to less than 1 when leaky).
  """
  if not leaky:
    return jax.nn.softmax(logits, axis=-1)
  padded = jnp.concatenate([logits, jnp.zeros_like(logits[:, :1])], axis=-1)
  return jax.nn.softmax(padded, axis=-1)[:, :-1]


def dynamic_routing(u_hat: jax.Array, bias: jax.Array, iterations: int = 3,
                    leaky: bool = False,
                    stop_gradient: bool = False) -> tuple[jax.Array, jax.Array]:
  """Routing-by-agreement for ONE example (Sabour et al. 2017, Procedure 1).

  b = 0; repeat r times: c = softmax(b) over the output capsules;
  s_j = sum_i c_ij u_hat_ij + bias_j; v_j = squash(s_j); b_ij += <u_hat_ij, v_j>
  (the last update is skipped since its logits are never used).

  Args:
    u_hat: [num_in, num_out, dim] prediction vectors.
    bias: [num_out, dim].
    iterations: r >= 1. r = 1 is uniform coupling.
    leaky: see ``routing_softmax``.
    stop_gradient: stop gradients through u_hat in all but the final
      iteration (the coefficients then act as constants for backprop).

  Returns:
    v: [num_out, dim] output capsules; c: [num_in, num_out] the coupling
    coefficients used for the final iteration.
  """
  if iterations < 1:
    raise ValueError(f"routing iterations must be >= 1, got {iterations}")
  u_hat_inner = jax.lax.stop_gradient(u_hat) if stop_gradient else u_hat
  logits = jnp.zeros(u_hat.shape[:2], u_hat.dtype)
  for r in range(iterations):
    last = r == iterations - 1
    u = u_hat if last else u_hat_inner
    c = routing_softmax(logits, leaky)
    s = jnp.einsum("ij,ijd->jd", c, u) + bias
    v = squash(s)
    if not last:
      logits = logits + jnp.einsum("ijd,jd->ij", u, v)
  return v, c


class ClassCapsules(nn.Module):
  """Fully connected capsule layer with dynamic routing.

  Parameters: W [num_in, num_out, dim, in_dim] and bias [num_out, dim].
  """
  num_out: int
  dim: int = 16
  iterations: int = 3
  leaky: bool = False
  stop_gradient: bool = False
  w_init: Callable[..., jax.Array] = nn.initializers.normal(0.01)

  @nn.compact
  def __call__(self, u: jax.Array) -> tuple[jax.Array, jax.Array]:
    """u: [B, num_in, in_dim] -> (v [B, num_out, dim], c [B, num_in, num_out])."""
    _, num_in, in_dim = u.shape
    w = self.param("W", self.w_init, (num_in, self.num_out, self.dim, in_dim),
                   jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.num_out, self.dim),
                      jnp.float32)
    # One einsum over the batch: the weights are shared, never copied per
    # example. u_hat: [B, num_in, num_out, dim].
    u_hat = jnp.einsum("ijdk,bik->bijd", w, u.astype(jnp.float32))
    route = functools.partial(dynamic_routing, iterations=self.iterations,
                              leaky=self.leaky,
                              stop_gradient=self.stop_gradient)
    return jax.vmap(route, in_axes=(0, None))(u_hat, bias)
