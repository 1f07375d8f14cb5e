"""MultiMNIST (Sabour et al. 2017, section 6): two overlapping digits.

Synopsis::

  train = multimnist.PairSplit(mnist_train.images, mnist_train.labels)
  for batch in multimnist.train_batches(train, 128, seed=0, start_step=0):
    ...  # image uint8 [128, 36, 36, 1], label int32 [128, 2],
         # targets uint8 [128, 2, 36, 36, 1] (each digit alone, shifted)
  test = multimnist.PairSplit(mnist_test.images, mnist_test.labels,
                              multimnist.fixed_pairs(mnist_test.labels, 10000))

Each example overlays two MNIST digits of DIFFERENT classes from the same
split. Each digit is padded from 28x28 to 36x36 (4 px each side) and shifted
by an integer in [-4, 4] px along each axis (so it never leaves the canvas);
the two are added and clipped to 255 (the authors' mnist_shift.py:
``np.minimum(a + b, 255)``), which is clip(a/255 + b/255, 0, 1) as a float.

Training pairs are drawn afresh at every step on the host: the first digit of
each example follows the shuffled epoch order that single-digit MNIST uses
(an "epoch" is one pair per training digit, 60,000 pairs), and the second
digit and both shifts come from a generator seeded by (seed, process, step).
So the stream depends only on (seed, step) and a resumed run sees exactly
the pairs an uninterrupted one would. The cost is one gather and one
scatter of uint8 digits per step (numpy, well under a millisecond for 128).

The test set is a fixed list of pairs of the MNIST test split, the same for
every run (TEST_SEED): pair k takes test digit k mod N as its first digit, so
10,000 pairs use every test digit once and the paper's 10M (1,000 pairs per
test digit) every digit 1,000 times. Pairs are kept as indices and shifts and
composed batch by batch, so even 10M pairs need only 120 MB.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from capsnet_jax.errors import DataError

PAD = 4  # 28 -> 36 px
MAX_SHIFT = 4  # per axis, in each direction
DIGIT_SIZE = 28
CANVAS_SIZE = DIGIT_SIZE + 2 * PAD  # 36
NUM_TARGETS = 2
# The fixed test (and validation) pairs do not depend on the run's seed.
TEST_SEED = 20171107
_PARTNER_STREAM = 17  # tells the per-step generator apart from the epoch order


@dataclasses.dataclass(frozen=True)
class Pairs:
  """Which digits make each example and how they are shifted.

  first, second: int32 [K] indices into the split's digits (of different
    classes); shifts: int8 [K, 2, 2], (row, column) shift of each digit.
  """
  first: np.ndarray
  second: np.ndarray
  shifts: np.ndarray

  def __len__(self) -> int:
    return len(self.first)

  def __getitem__(self, index) -> "Pairs":
    return Pairs(self.first[index], self.second[index], self.shifts[index])


def place(digits: np.ndarray, shifts: np.ndarray, pad: int = PAD) -> np.ndarray:
  """Digits on a zero canvas, padded by ``pad`` on each side and shifted.

  Args:
    digits: uint8 [N, h, w, C].
    shifts: integers [N, 2], (rows down, columns right), each in [-pad, pad].

  Returns:
    uint8 [N, h + 2 pad, w + 2 pad, C]: digit n's pixel (i, j) lands at
    (pad + shifts[n, 0] + i, pad + shifts[n, 1] + j).
  """
  n, h, w, c = digits.shape
  shifts = np.asarray(shifts, np.int64)
  if shifts.size and np.abs(shifts).max() > pad:
    raise ValueError(f"shifts must be within [-{pad}, {pad}] px")
  canvas = np.zeros((n, h + 2 * pad, w + 2 * pad, c), digits.dtype)
  rows = pad + shifts[:, 0, None] + np.arange(h)  # [N, h]
  cols = pad + shifts[:, 1, None] + np.arange(w)  # [N, w]
  canvas[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]] = digits
  return canvas


def overlay(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Pixelwise a + b clipped to 255 (uint8 in, uint8 out)."""
  return np.minimum(a.astype(np.int16) + b.astype(np.int16), 255).astype(np.uint8)


class ClassIndex:
  """The examples of a split grouped by class, to draw different-class
  partners in O(batch): ``order`` lists the indices sorted by class, class c
  occupying order[starts[c]:starts[c] + counts[c]]."""

  def __init__(self, labels: np.ndarray, num_classes: int = 10):
    labels = np.asarray(labels, np.int64)
    self.n = len(labels)
    self.order = np.argsort(labels, kind="stable").astype(np.int32)
    self.counts = np.bincount(labels, minlength=num_classes)
    self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
    if np.count_nonzero(self.counts) < 2:
      raise DataError("MultiMNIST needs digits of at least two classes in "
                      "each split")

  def partners(self, first_labels: np.ndarray, rng: np.random.Generator
               ) -> np.ndarray:
    """For each label, the index of an example of another class, uniform
    over the n - count(label) examples of the other classes."""
    c = np.asarray(first_labels, np.int64)
    k = rng.integers(0, self.n - self.counts[c])  # rank among the others
    k = k + self.counts[c] * (k >= self.starts[c])  # skip class c's block
    return self.order[k]


def draw_pairs(first: np.ndarray, labels: np.ndarray, index: ClassIndex,
               rng: np.random.Generator) -> Pairs:
  """Pairs whose first digits are ``first``: a different-class partner and
  both shifts uniform in [-MAX_SHIFT, MAX_SHIFT] from ``rng``."""
  first = np.asarray(first, np.int32)
  second = index.partners(labels[first], rng)
  shifts = rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, size=(len(first), 2, 2))
  return Pairs(first, second.astype(np.int32), shifts.astype(np.int8))


def fixed_pairs(labels: np.ndarray, num_pairs: int, seed: int = TEST_SEED
                ) -> Pairs:
  """The fixed evaluation pairs of a split: pair k's first digit is k mod N,
  its partner and shifts drawn from ``seed``."""
  if num_pairs <= 0:
    raise DataError(f"the number of MultiMNIST test pairs must be > 0, got "
                    f"{num_pairs}")
  first = np.arange(num_pairs, dtype=np.int64) % len(labels)
  return draw_pairs(first, labels, ClassIndex(labels),
                    np.random.default_rng(seed))


def compose(digits: np.ndarray, labels: np.ndarray, pairs: Pairs
            ) -> dict[str, np.ndarray]:
  """A batch of pairs from the split's digits uint8 [N, 28, 28, C] and labels.

  Returns:
    image: uint8 [K, 36, 36, C], the overlay; label: int32 [K, 2] (first,
    second); targets: uint8 [K, 2, 36, 36, C], each digit alone as placed.
  """
  a = place(digits[pairs.first], pairs.shifts[:, 0])
  b = place(digits[pairs.second], pairs.shifts[:, 1])
  return {"image": overlay(a, b),
          "label": np.stack([labels[pairs.first], labels[pairs.second]],
                            axis=1).astype(np.int32),
          "targets": np.stack([a, b], axis=1)}


class _ComposedImages:
  """The overlays of a PairSplit as a read-only array-like: indexing composes
  only the pairs asked for (so 10M test pairs never sit in memory)."""

  def __init__(self, split: "PairSplit"):
    self._split = split
    c = split.digits.shape[-1]
    self.shape = (len(split), CANVAS_SIZE, CANVAS_SIZE, c)
    self.dtype = np.dtype(np.uint8)
    self.ndim = 4

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, index):
    if isinstance(index, (int, np.integer)):
      return self[np.array([index])][0]
    s = self._split
    return compose(s.digits, s.digit_labels, s.pairs[index])["image"]

  def __array__(self, dtype=None, copy=None):
    del copy
    out = self[np.arange(len(self))]
    return out if dtype is None else out.astype(dtype)


@dataclasses.dataclass(frozen=True)
class PairSplit:
  """One process's MultiMNIST examples.

  digits: uint8 [N, 28, 28, C] and digit_labels int32 [N]: the MNIST split
    the pairs are made of.
  pairs: the fixed pairs (test, validation), or None for training, whose
    pairs are drawn per step (train_batches); its length is then N, one pair
    per digit and epoch.

  ``images`` (uint8 [K, 36, 36, C], composed on indexing) and ``labels``
  (int32 [K, 2]) are the examples, as input_pipeline.Split has them.
  """
  digits: np.ndarray
  digit_labels: np.ndarray
  pairs: Pairs | None = None

  def __len__(self) -> int:
    return len(self.digit_labels) if self.pairs is None else len(self.pairs)

  @property
  def images(self) -> _ComposedImages:
    self._require_pairs()
    return _ComposedImages(self)

  @property
  def labels(self) -> np.ndarray:
    self._require_pairs()
    return np.stack([self.digit_labels[self.pairs.first],
                     self.digit_labels[self.pairs.second]], axis=1)

  def batch(self, index) -> dict[str, np.ndarray]:
    self._require_pairs()
    return compose(self.digits, self.digit_labels, self.pairs[index])

  def _require_pairs(self):
    if self.pairs is None:
      raise ValueError("a training PairSplit has no fixed pairs; use "
                       "multimnist.train_batches")


def train_batches(split: PairSplit, batch_size: int, seed: int,
                  start_step: int = 0, process_index: int = 0,
                  num_steps_per_epoch: int | None = None
                  ) -> Iterator[dict[str, np.ndarray]]:
  """Endless batches of fresh pairs from ``start_step`` (see compose).

  First digits: epoch e's permutation of (seed, e, process_index), the same
  order input_pipeline.train_batches gives single digits. Partners and
  shifts: a generator of (seed, process_index, step). Every batch depends
  only on (seed, step, process_index).
  """
  n = len(split.digit_labels)
  if batch_size > n:
    raise DataError(f"local batch size {batch_size} exceeds the {n} training "
                    "digits of this process")
  per_epoch = num_steps_per_epoch or max(n // batch_size, 1)
  index = ClassIndex(split.digit_labels)
  step = start_step
  while True:
    epoch, i = divmod(step, per_epoch)
    if i == 0 or step == start_step:
      order = np.random.default_rng([seed, epoch, process_index]).permutation(n)
    rng = np.random.default_rng([seed, process_index, step, _PARTNER_STREAM])
    pairs = draw_pairs(order[i * batch_size:(i + 1) * batch_size],
                       split.digit_labels, index, rng)
    yield compose(split.digits, split.digit_labels, pairs)
    step += 1


def eval_batches(split: PairSplit, batch_size: int,
                 num_batches: int | None = None
                 ) -> Iterator[dict[str, np.ndarray]]:
  """Every fixed pair once, in order, in ``num_batches`` batches; the padding
  at the end is zeros with mask 0 (real pairs mask 1)."""
  n = len(split)
  num_batches = num_batches or max(-(-n // batch_size), 1)
  for b in range(num_batches):
    lo, hi = min(b * batch_size, n), min((b + 1) * batch_size, n)
    batch = split.batch(np.arange(lo, hi))
    pad = batch_size - (hi - lo)
    batch["mask"] = np.concatenate([np.ones(hi - lo, np.float32),
                                    np.zeros(pad, np.float32)])
    if pad:
      for k in ("image", "label", "targets"):
        batch[k] = np.concatenate(
            [batch[k], np.zeros((pad, *batch[k].shape[1:]), batch[k].dtype)])
    yield batch
