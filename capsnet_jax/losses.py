"""CapsNet losses: margin loss and reconstruction loss.

Synopsis::

  m = losses.margin_loss(lengths, labels)          # [B]
  r = losses.reconstruction_sse(recon, images)     # [B], per-image SSE
  total = jnp.mean(m + alpha * r)
"""

import jax
import jax.numpy as jnp


def margin_loss(lengths: jax.Array, labels: jax.Array, m_plus: float = 0.9,
                m_minus: float = 0.1, down_weight: float = 0.5) -> jax.Array:
  """Per-example margin loss.

  sum_k T_k max(0, m+ - |v_k|)^2 + lambda (1 - T_k) max(0, |v_k| - m-)^2.

  Args:
    lengths: [B, K] class-capsule lengths.
    labels: [B] integer labels.

  Returns:
    [B] float32.
  """
  t = jax.nn.one_hot(labels, lengths.shape[-1], dtype=jnp.float32)
  lengths = lengths.astype(jnp.float32)
  present = t * jnp.square(jnp.maximum(0.0, m_plus - lengths))
  absent = (1.0 - t) * jnp.square(jnp.maximum(0.0, lengths - m_minus))
  return jnp.sum(present + down_weight * absent, axis=-1)


def reconstruction_sse(reconstructions: jax.Array,
                       images: jax.Array) -> jax.Array:
  """Per-image sum of squared errors over all pixels and channels.

  Args:
    reconstructions, images: [B, H, W, C]; images in [0, 1].

  Returns:
    [B] float32.
  """
  diff = reconstructions.astype(jnp.float32) - images.astype(jnp.float32)
  return jnp.sum(jnp.square(diff), axis=(1, 2, 3))


def mask_capsules(class_caps: jax.Array, labels: jax.Array) -> jax.Array:
  """Keep only the capsule of ``labels`` and flatten: the decoder's input.

  Args:
    class_caps: [B, K, D].
    labels: [B] integer class per example (true in training, predicted at
      evaluation).

  Returns:
    [B, K * D].
  """
  mask = jax.nn.one_hot(labels, class_caps.shape[1], dtype=class_caps.dtype)
  return (class_caps * mask[..., None]).reshape(class_caps.shape[0], -1)
