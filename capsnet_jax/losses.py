"""CapsNet losses: margin loss and reconstruction loss.

Synopsis::

  m = losses.margin_loss(lengths, labels)          # [B]
  r = losses.reconstruction_sse(recon, images)     # [B], per-image SSE
  total = jnp.mean(m + alpha * r)

Several objects per image (MultiMNIST): labels [B, T] make T_k = 1 for each
present class in the margin loss; targets_sse / matched_targets_sse sum the
per-object SSE; top_k_correct is the paper's accuracy rule.
"""

import jax
import jax.numpy as jnp


def margin_loss(lengths: jax.Array, labels: jax.Array, m_plus: float = 0.9,
                m_minus: float = 0.1, down_weight: float = 0.5) -> jax.Array:
  """Per-example margin loss.

  sum_k T_k max(0, m+ - |v_k|)^2 + lambda (1 - T_k) max(0, |v_k| - m-)^2.

  Args:
    lengths: [B, K] class-capsule lengths.
    labels: [B] integer labels, or [B, T] for T objects per image (T_k = 1
      for each class present).

  Returns:
    [B] float32.
  """
  t = class_targets(labels, lengths.shape[-1])
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


# --------------------------------------------------------------------------
# Several objects per image (MultiMNIST).


def class_targets(labels: jax.Array, num_classes: int) -> jax.Array:
  """T_k: [B] labels -> one-hot [B, K]; [B, T] -> 1 for every class present."""
  t = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  return jnp.max(t, axis=1) if labels.ndim == 2 else t


def targets_sse(reconstructions: jax.Array, targets: jax.Array) -> jax.Array:
  """Sum over the T objects of each one's per-image SSE.

  Args:
    reconstructions, targets: [B, T, H, W, C]; reconstruction t from object
      t's capsule, target t that object's image alone.

  Returns:
    [B] float32.
  """
  diff = reconstructions.astype(jnp.float32) - targets.astype(jnp.float32)
  return jnp.sum(jnp.square(diff), axis=(1, 2, 3, 4))


def matched_targets_sse(reconstructions: jax.Array, targets: jax.Array
                        ) -> jax.Array:
  """targets_sse for two objects whose reconstructions come from predicted
  capsules: the smaller of the two ways to pair them with the targets.

  Args:
    reconstructions, targets: [B, 2, H, W, C].
  """
  swapped = reconstructions[:, ::-1]
  return jnp.minimum(targets_sse(reconstructions, targets),
                     targets_sse(swapped, targets))


def top_k_labels(lengths: jax.Array, k: int) -> jax.Array:
  """The k longest capsules of each example, longest first: [B, K] -> [B, k]."""
  return jax.lax.top_k(lengths, k)[1]


def top_k_correct(lengths: jax.Array, labels: jax.Array) -> jax.Array:
  """The paper's MultiMNIST rule: the T longest capsules are exactly the T
  (distinct) labels [B, T]. Returns [B] bool."""
  predicted = top_k_labels(lengths, labels.shape[1])
  found = jnp.any(labels[:, :, None] == predicted[:, None, :], axis=-1)
  return jnp.all(found, axis=-1)


def top_k_partly_correct(lengths: jax.Array, labels: jax.Array) -> jax.Array:
  """At least one of the labels [B, T] among the T longest capsules (the
  authors' "almost correct"). Returns [B] bool."""
  predicted = top_k_labels(lengths, labels.shape[1])
  found = jnp.any(labels[:, :, None] == predicted[:, None, :], axis=-1)
  return jnp.any(found, axis=-1)
