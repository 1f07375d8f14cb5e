"""Which class capsule the decoder sees.

Synopsis::

  masked = masking.mask_capsules(class_caps, labels)   # [B, K, D] -> [B, K * D]
  labels = masking.top_k_labels(lengths, 2)            # [B, K] -> [B, 2]
"""

import jax
import jax.numpy as jnp


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


def top_k_labels(lengths: jax.Array, k: int) -> jax.Array:
  """The k longest capsules of each example, longest first: [B, K] -> [B, k]."""
  return jax.lax.top_k(lengths, k)[1]
