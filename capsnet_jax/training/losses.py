"""CapsNet losses: margin loss and reconstruction loss (and the baseline
CNN's softmax cross-entropy).

Synopsis::

  m = losses.margin_loss(lengths, labels)          # [B]
  r = losses.reconstruction_sse(recon, images)     # [B], per-image SSE
  total = jnp.mean(m + alpha * r)

  r = losses.reconstruction_loss(recon, images, "l1")   # [B], per-image SAE

The reference's reconstruction tricks (its --loss, --anneal, --leaky options)
are here: L1 or L2 reconstruction loss (alpha annealed by the epoch is in
capsnet_jax.training.schedules), and the
margin term of an "orphan" class capsule that is never a target.

Several objects per image (MultiMNIST): labels [B, T] make T_k = 1 for each
present class in the margin loss; targets_sse / matched_targets_sse sum the
per-object SSE; top_k_correct is the paper's accuracy rule.
"""

import jax
import jax.numpy as jnp

from capsnet_jax import validation
from capsnet_jax.model.masking import top_k_labels

RECONSTRUCTION_LOSSES = validation.RECONSTRUCTION_LOSSES
MARGIN_REDUCTIONS = validation.MARGIN_REDUCTIONS


def margin_loss(lengths: jax.Array, labels: jax.Array, m_plus: float = 0.9,
                m_minus: float = 0.1, down_weight: float = 0.5,
                orphan_lengths: jax.Array | None = None) -> jax.Array:
  """Per-example margin loss.

  sum_k T_k max(0, m+ - |v_k|)^2 + lambda (1 - T_k) max(0, |v_k| - m-)^2.

  Args:
    lengths: [B, K] class-capsule lengths.
    labels: [B] integer labels, or [B, T] for T objects per image (T_k = 1
      for each class present).
    orphan_lengths: [B] lengths of the reference's orphan capsule (its
      --leaky), a class that is never the target: it adds
      lambda max(0, |v_orphan| - m-)^2.

  Returns:
    [B] float32.
  """
  t = class_targets(labels, lengths.shape[-1])
  lengths = lengths.astype(jnp.float32)
  present = t * jnp.square(jnp.maximum(0.0, m_plus - lengths))
  absent = (1.0 - t) * jnp.square(jnp.maximum(0.0, lengths - m_minus))
  loss = jnp.sum(present + down_weight * absent, axis=-1)
  if orphan_lengths is not None:
    orphan = jnp.maximum(0.0, orphan_lengths.astype(jnp.float32) - m_minus)
    loss = loss + down_weight * jnp.square(orphan)
  return loss


def authors_margin_loss(lengths: jax.Array, labels: jax.Array,
                        orphan_lengths: jax.Array | None = None
                        ) -> jax.Array:
  """The margin term of the authors' released code, per example.

  research/capsules models/layers/layers.py:341-362 (``_margin_loss``):
  with l = |v_k| - 0.5, each class costs 0.5 [l < 0.4] (l - 0.4)^2 if it is
  present and 0.5 * 0.5 [l > -0.4] (l + 0.4)^2 if not; ``evaluate``
  (layers.py:396) then takes tf.reduce_mean over the batch AND the classes.
  Per example that is the mean over the K classes, 1 / (2 K) of the paper's
  sum (1/20 for 10 classes), while the reconstruction term stays 0.0005 x
  the per-image SSE: relative to the margin, the reconstruction weighs 2 K
  times more than with the paper's equation.

  Args:
    lengths: [B, K]; labels: [B] or [B, T] (T_k = 1 for each present class);
    orphan_lengths: [B], an extra class that is never present (counted in
      the mean).

  Returns:
    [B] float32: the per-class costs averaged over the classes.
  """
  t = class_targets(labels, lengths.shape[-1])
  lengths = lengths.astype(jnp.float32)
  if orphan_lengths is not None:
    lengths = jnp.concatenate(
        [lengths, orphan_lengths.astype(jnp.float32)[:, None]], axis=-1)
    t = jnp.pad(t, ((0, 0), (0, 1)))
  logits = lengths - 0.5
  margin = 0.4
  positive = t * (logits < margin) * jnp.square(logits - margin)
  negative = (1.0 - t) * (logits > -margin) * jnp.square(logits + margin)
  return jnp.mean(0.5 * positive + 0.5 * 0.5 * negative, axis=-1)


def margin_objective(lengths: jax.Array, labels: jax.Array,
                     reduction: str = "sum",
                     orphan_lengths: jax.Array | None = None) -> jax.Array:
  """The margin term the optimiser sees, per example: ``margin_loss``
  (reduction "sum") or ``authors_margin_loss`` ("authors")."""
  if reduction == "sum":
    return margin_loss(lengths, labels, orphan_lengths=orphan_lengths)
  if reduction == "authors":
    return authors_margin_loss(lengths, labels, orphan_lengths)
  raise ValueError(f"Unknown margin_reduction {reduction!r}; valid: "
                   f"{', '.join(MARGIN_REDUCTIONS)}")


def reconstruction_sse(reconstructions: jax.Array,
                       images: jax.Array) -> jax.Array:
  """Per-image sum of squared errors over all pixels and channels.

  Args:
    reconstructions, images: [B, H, W, C]; images in [0, 1].

  Returns:
    [B] float32.
  """
  return reconstruction_loss(reconstructions, images, "l2")


def reconstruction_loss(reconstructions: jax.Array, images: jax.Array,
                        kind: str = "l2") -> jax.Array:
  """Per-image sum over pixels and channels of squared (l2) or absolute (l1)
  errors: the reference's nn.MSELoss / nn.L1Loss(reduction="none") summed
  per image (its --loss L2|L1).

  Args:
    reconstructions, images: [B, H, W, C]; images in [0, 1].
    kind: one of RECONSTRUCTION_LOSSES.

  Returns:
    [B] float32.
  """
  diff = reconstructions.astype(jnp.float32) - images.astype(jnp.float32)
  if kind == "l2":
    return jnp.sum(jnp.square(diff), axis=(1, 2, 3))
  if kind == "l1":
    return jnp.sum(jnp.abs(diff), axis=(1, 2, 3))
  raise ValueError(f"Unknown reconstruction loss {kind!r}; valid: "
                   f"{RECONSTRUCTION_LOSSES}")


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy: the baseline CNN's loss.

  Args:
    logits: [B, K]; labels: [B] integer classes.

  Returns:
    [B] float32: -log softmax(logits)[label].
  """
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_p, labels[:, None].astype(jnp.int32),
                              axis=-1)[:, 0]


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
