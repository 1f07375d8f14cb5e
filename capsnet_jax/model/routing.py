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

from capsnet_jax.model.layers import squash


def routing_softmax(logits: jax.Array, leaky: bool = False,
                    axis: int = -1) -> jax.Array:
  """Coupling coefficients from routing logits.

  Args:
    logits: [num_in, num_out] (or any layout; see ``axis``).
    leaky: add an all-zero "orphan" logit to the softmax along ``axis`` and
      drop it afterwards (the authors' leaky routing), so an input capsule
      may route to none of the outputs.
    axis: the output-capsule axis, over which the coefficients sum to 1.

  Returns:
    Coefficients shaped like ``logits``; they sum to 1 along ``axis`` (to
    less than 1 when leaky).
  """
  if not leaky:
    return jax.nn.softmax(logits, axis=axis)
  axis = axis % logits.ndim
  orphan = jnp.zeros_like(jax.lax.slice_in_dim(logits, 0, 1, axis=axis))
  padded = jnp.concatenate([logits, orphan], axis=axis)
  return jax.lax.slice_in_dim(jax.nn.softmax(padded, axis=axis), 0,
                              logits.shape[axis], axis=axis)


def dynamic_routing(u_hat: jax.Array, bias: jax.Array, iterations: int = 3,
                    leaky: bool = False, stop_gradient: bool = False,
                    layout: str = "ijd") -> tuple[jax.Array, jax.Array]:
  """Routing-by-agreement for ONE example (Sabour et al. 2017, Procedure 1).

  b = 0; repeat r times: c = softmax(b) over the output capsules;
  s_j = sum_i c_ij u_hat_ij + bias_j; v_j = squash(s_j); b_ij += <u_hat_ij, v_j>
  (the last update is skipped since its logits are never used). The first
  iteration's coefficients are the uniform 1 / num_out (1 / (num_out + 1)
  when leaky) that softmax(0) gives, without computing it.

  Args:
    u_hat: prediction vectors, [num_in, num_out, dim] (layout "ijd") or
      [num_out, num_in, dim] (layout "jid").
    bias: [num_out, dim].
    iterations: r >= 1. r = 1 is uniform coupling.
    leaky: see ``routing_softmax``.
    stop_gradient: stop gradients through u_hat in all but the final
      iteration (the coefficients then act as constants for backprop).
    layout: "jid" is what ``ClassCapsules`` uses: with the input capsules
      next to the capsule dimension, every sum over them reads contiguous
      memory (docs/performance.md, "What makes it fast").

  Returns:
    v: [num_out, dim] output capsules; c: [num_in, num_out] the coupling
    coefficients used for the final iteration (in either layout).
  """
  if iterations < 1:
    raise ValueError(f"routing iterations must be >= 1, got {iterations}")
  if layout == "ijd":
    u_hat = jnp.swapaxes(u_hat, 0, 1)
  elif layout != "jid":
    raise ValueError(f"layout must be 'ijd' or 'jid', got {layout!r}")
  num_out, num_in = u_hat.shape[:2]
  uniform = 1.0 / (num_out + 1 if leaky else num_out)
  u_hat_inner = jax.lax.stop_gradient(u_hat) if stop_gradient else u_hat
  c = logits = None  # c, logits: [num_out, num_in]
  for r in range(iterations):
    last = r == iterations - 1
    u = u_hat if last else u_hat_inner
    if r == 0:
      s = uniform * u.sum(axis=1) + bias
    else:
      c = routing_softmax(logits, leaky, axis=0)
      s = jnp.einsum("ji,jid->jd", c, u) + bias
    v = squash(s)
    if not last:
      agreement = jnp.einsum("jid,jd->ji", u, v)
      logits = agreement if r == 0 else logits + agreement
  if c is None:
    c = jnp.full((num_out, num_in), uniform, u_hat.dtype)
  return v, c.T


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
  bias_init: Callable[..., jax.Array] = nn.initializers.zeros

  @nn.compact
  def __call__(self, u: jax.Array) -> tuple[jax.Array, jax.Array]:
    """u: [B, num_in, in_dim] -> (v [B, num_out, dim], c [B, num_in, num_out])."""
    _, num_in, in_dim = u.shape
    w = self.param("W", self.w_init, (num_in, self.num_out, self.dim, in_dim),
                   jnp.float32)
    bias = self.param("bias", self.bias_init, (self.num_out, self.dim),
                      jnp.float32)
    # One product per input capsule over the whole batch: the weights are
    # shared, never copied per example. u_hat[b, j, i] = W[i, j] @ u[b, i],
    # laid out [B, num_out, num_in, dim] for the routing (see its layout).
    # As a product batched over i ([i, B, k] x [i, j*d, k]) the routing's
    # backward pass ran 1.4-1.8x faster than with einsum("ijdk,bik->bjid")
    # on 2 CPU cores under load (the forward pass equally fast).
    batch = u.shape[0]
    u_hat = jax.lax.dot_general(
        jnp.swapaxes(u.astype(jnp.float32), 0, 1),
        w.reshape(num_in, self.num_out * self.dim, in_dim),
        (((2,), (2,)), ((0,), (0,))))  # [num_in, B, num_out * dim]
    u_hat = u_hat.reshape(num_in, batch, self.num_out, self.dim)
    u_hat = u_hat.transpose(1, 2, 0, 3)
    route = functools.partial(dynamic_routing, iterations=self.iterations,
                              leaky=self.leaky,
                              stop_gradient=self.stop_gradient, layout="jid")
    return jax.vmap(route, in_axes=(0, None))(u_hat, bias)
