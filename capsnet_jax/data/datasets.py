"""The dataset registry: one spec per (dataset, setup) holding everything
about it.

Synopsis::

  spec = datasets.get("mnist", "reference")
  spec.info.image_shape            # (28, 28, 1): the model input
  x = spec.train_fn(uint8_batch, rng)   # on-device augmentation + scaling
  fn = spec.preprocess(train=False)     # fn(uint8_batch, rng=None)
  x = spec.eval_fn(uint8_batch)         # deterministic test-time input
  t = spec.target(x, mask)              # what the decoder reconstructs

Two setups per dataset (../shared/REFERENCE.md, "Recipes side by side"):

* ``reference``: the PyTorch reference project (data_loaders.py, train.py):
  inputs normalised (MNIST (x - 0.1307) / 0.3081, smallNORB x / 0.3081,
  CIFAR10 x / 0.5), reconstruction target the per-batch min-max of the
  normalised input, 10% of the training set held out for validation,
  constant learning rate; MNIST
  shifts as torchvision's RandomAffine(translate=0.08) draws them
  (round(U(-2.24, 2.24)) px per axis, so not uniform over -2..2).
* ``paper``: the authors' released code (research/capsules): inputs in [0, 1]
  (MNIST) or standardised per image (smallNORB, CIFAR10), the whole training
  set, continuous exponential decay 0.96 every 2,000 steps; MNIST shifts
  uniform in -2..2 px (pad 2 and crop).

MNIST has two more setups: ``efficient`` (Efficient-CapsNet's augmentation)
and ``expanded``, the paper's 40x40 protocol (section 5.2): the paper setup's
recipe on each digit padded by 6 px to 40x40 at load and shifted by up to
6 px per axis at training time; the test split is the centred 40x40 digits,
the paper's "expanded MNIST test set".

A config field set to "auto" (lr_schedule, validation_fraction) takes
the setup's value from here; any other value overrides it. Adding a dataset
or setup is one entry in SPECS plus its test.

MultiMNIST (``multimnist``, paper setup only) is built from MNIST on the fly
(capsnet_jax.data.multimnist); its spec has num_targets = 2.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from capsnet_jax.data import augment

PreprocessFn = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the model needs to know about a dataset (after preprocessing).

  image_shape: the model input (H, W, C), after crops.
  num_train, num_test: examples in each split over all processes (num_train
    after the validation hold-out).
  num_validation: examples held out of the training split for validation.
  stored_shape: the images as held in memory, before crops.
  """
  name: str
  setup: str
  image_shape: tuple[int, int, int]
  num_classes: int
  num_train: int
  num_test: int
  class_names: tuple[str, ...]
  stored_shape: tuple[int, int, int]
  num_validation: int = 0


@dataclasses.dataclass(frozen=True)
class Spec:
  """One (dataset, setup).

  train_fn(uint8 [B, H, W, C] as stored, rng) -> float32 model input.
  eval_fn(uint8 batch) -> float32 model input (deterministic).
  target_rule: "input" (the model input, in [0, 1]), "batch_minmax" (the
    input min-max scaled over the batch, the reference's rule) or
    "image_minmax" (per image, for standardised inputs).
  standardized: whether the model input has zero mean per image.
  validation_fraction, lr_schedule: the setup's defaults for the config
    fields of the same names when they are "auto" / negative.
  tfds_name, tfds_keys: what to read from tfds.
  num_targets: objects per example. 1: a batch has label [B]; 2
    (MultiMNIST): label [B, 2] and targets [B, 2, H, W, C], each object's
    own image, which the decoder reconstructs from that object's capsule.
  target_mean: the mean pixel of the reconstruction target over the
    training set, where known: the deconv decoder starts its output there
    (decoders.DeconvDecoder); None: unknown (its scheme's output bias).
  input_range: (low, high) of the test-time model inputs, for the checks of
    raw model inputs (inference.trained.TrainedModel.predict_preprocessed);
    None where the inputs are standardised per image instead.
  pad: zero pixels the loader adds on every side of each image it reads
    (input_pipeline.load_splits), so that info.stored_shape is the image
    as read plus 2 * pad: the expanded setup's 28x28 digits become 40x40.
  """
  info: DatasetInfo
  train_fn: PreprocessFn
  eval_fn: Callable[[jax.Array], jax.Array]
  target_rule: str
  standardized: bool
  validation_fraction: float
  lr_schedule: str
  tfds_name: str
  tfds_keys: tuple[str, ...] = ("image", "label")
  num_targets: int = 1
  target_mean: float | None = None
  input_range: tuple[float, float] | None = (0.0, 1.0)
  pad: int = 0

  def preprocess(self, train: bool) -> PreprocessFn:
    """fn(uint8 images [B, H, W, C] as stored, rng) -> float32 model input;
    the test-time function ignores ``rng`` and is deterministic."""
    if train:
      return self.train_fn
    return lambda x, rng=None: self.eval_fn(x)

  def target(self, images: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """What the sigmoid decoder reconstructs from model inputs [B, H, W, C].

    mask [B] (1 for real examples) keeps padding out of batch statistics.
    """
    return reconstruction_target(images, self.target_rule, mask)


def reconstruction_target(images: jax.Array, rule: str,
                          mask: jax.Array | None = None) -> jax.Array:
  """See Spec.target_rule. Results are in [0, 1]."""
  if rule == "input":
    return images
  if rule == "image_minmax":
    lo = jnp.min(images, axis=(1, 2, 3), keepdims=True)
    hi = jnp.max(images, axis=(1, 2, 3), keepdims=True)
    return (images - lo) / jnp.maximum(hi - lo, 1e-6)
  if rule == "batch_minmax":
    if mask is None:
      lo, hi = jnp.min(images), jnp.max(images)
    else:
      keep = mask.astype(bool)[:, None, None, None]
      lo = jnp.min(jnp.where(keep, images, jnp.inf))
      hi = jnp.max(jnp.where(keep, images, -jnp.inf))
    return jnp.clip((images - lo) / jnp.maximum(hi - lo, 1e-6), 0.0, 1.0)
  raise ValueError(f"unknown reconstruction target rule {rule!r}")


# --------------------------------------------------------------------------
# Input scaling.


def _normalize(mean: float, std: float):
  return lambda x: (x - mean) / std


MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # torchvision Normalize in the reference
# The mean of MNIST's 60,000 training images in [0, 1] is 0.13066; a
# MultiMNIST target is one digit on a 36 x 36 canvas: 0.13066 x 784 / 1296.
MNIST_TARGET_MEAN = 0.1307
MULTIMNIST_TARGET_MEAN = 0.0790
# An expanded-MNIST target is one digit on a 40 x 40 canvas: 0.13066 x 784
# / 1600.
EXPANDED_TARGET_MEAN = 0.0640
# The paper's 40x40 protocol: each digit padded by 6 px (28 -> 40) and
# shifted by up to 6 px per axis (the authors' mnist_shift.py --pad=6
# --shift=6).
EXPANDED_PAD = 6
EXPANDED_MAX_SHIFT = 6
_F = augment.to_float


def _mnist(setup: str) -> Spec:
  info = DatasetInfo("mnist", setup, (28, 28, 1), 10, 60000, 10000,
                     tuple(str(i) for i in range(10)), (28, 28, 1))
  if setup == "reference":
    norm = _normalize(MNIST_MEAN, MNIST_STD)
    return Spec(
        info,
        train_fn=lambda x, rng: norm(augment.random_translate(_F(x), rng, 0.08)),
        eval_fn=lambda x: norm(_F(x)),
        target_rule="batch_minmax", standardized=False,
        validation_fraction=0.1, lr_schedule="constant",
        tfds_name="mnist", target_mean=MNIST_TARGET_MEAN,
        input_range=(norm(0.0), norm(1.0)))
  return Spec(
      info,
      train_fn=lambda x, rng: augment.random_shift(_F(x), rng, 2),
      eval_fn=_F, target_rule="input", standardized=False,
      validation_fraction=0.0, lr_schedule="exponential",
      tfds_name="mnist", target_mean=MNIST_TARGET_MEAN)


def _mnist_efficient() -> Spec:
  """Efficient-CapsNet's MNIST pipeline (their utils/pre_process_mnist.py):
  pixels / 256 at train and test time; training images rotated, shifted
  within their margins, squished and partly erased (augment.py)."""
  info = DatasetInfo("mnist", "efficient", (28, 28, 1), 10, 60000, 10000,
                     tuple(str(i) for i in range(10)), (28, 28, 1))
  return Spec(info, train_fn=augment.efficient_mnist_train,
              eval_fn=lambda x: x.astype(jnp.float32) / 256.0,
              target_rule="input", standardized=False,
              validation_fraction=0.0, lr_schedule="staircase",
              tfds_name="mnist", target_mean=MNIST_TARGET_MEAN,
              input_range=(0.0, 255.0 / 256.0))


def _mnist_expanded() -> Spec:
  """The paper's 40x40 protocol (Sabour et al. 2017, section 5.2: "trained
  on randomly placed MNIST digits on a black background of 40x40 pixels",
  tested on the expanded MNIST test set and on affNIST).

  The loader pads every 28x28 digit by EXPANDED_PAD = 6 px of zeros on each
  side (stored 40x40). Training images are shifted by a uniform integer in
  [-6, 6] px per axis, drawn for every example at every step, zero fill
  (augment.random_shift: the digit never leaves the canvas). The authors'
  research/capsules/input_data/mnist/mnist_shift.py (--shift=6 --pad=6)
  instead writes every one of the 13 x 13 = 169 integer shifts of each
  padded digit to disk, once; drawing one of the same 169 shifts uniformly
  per example is the on-the-fly equivalent (the same distribution over
  shifts, without a 10.1M-image file). The test split is the centred 40x40
  digit (rows and columns 6..33 hold the 28x28 digit), the paper's
  "expanded MNIST test set". Everything else is the paper setup: pixels in
  [0, 1], all 60,000 training digits, exponential decay; the model input
  is the 40x40 image, and so is the reconstruction target (1,600 pixels).
  """
  size = 28 + 2 * EXPANDED_PAD
  info = DatasetInfo("mnist", "expanded", (size, size, 1), 10, 60000, 10000,
                     tuple(str(i) for i in range(10)), (size, size, 1))
  return Spec(
      info,
      train_fn=lambda x, rng: augment.random_shift(_F(x), rng,
                                                   EXPANDED_MAX_SHIFT),
      eval_fn=_F, target_rule="input", standardized=False,
      validation_fraction=0.0, lr_schedule="exponential",
      tfds_name="mnist", target_mean=EXPANDED_TARGET_MEAN, pad=EXPANDED_PAD)


_SMALLNORB_CLASSES = ("animal", "human", "airplane", "truck", "car")


def _smallnorb(setup: str) -> Spec:
  if setup == "reference":
    # Each camera's image is an example of its own: 2 x 24,300 per split.
    info = DatasetInfo("smallnorb", setup, (32, 32, 1), 5, 48600, 48600,
                       _SMALLNORB_CLASSES, (48, 48, 1))
    norm = _normalize(0.0, 0.3081)

    def train_fn(x, rng):
      x = augment.random_crop(_F(x), jax.random.fold_in(rng, 0), (32, 32))
      return norm(augment.color_jitter(x, jax.random.fold_in(rng, 1),
                                       (0.875, 1.125), (0.5, 1.5)))

    return Spec(info, train_fn,
                eval_fn=lambda x: norm(augment.center_crop(_F(x), (32, 32))),
                target_rule="batch_minmax", standardized=False,
                validation_fraction=0.1, lr_schedule="constant",
                tfds_name="smallnorb",
                tfds_keys=("image", "image2", "label_category"),
                input_range=(0.0, norm(1.0)))
  info = DatasetInfo("smallnorb", setup, (32, 32, 2), 5, 24300, 24300,
                     _SMALLNORB_CLASSES, (48, 48, 2))
  std = augment.per_image_standardization
  return Spec(info,
              train_fn=lambda x, rng: std(augment.random_crop(_F(x), rng, (32, 32))),
              eval_fn=lambda x: std(augment.center_crop(_F(x), (32, 32))),
              target_rule="image_minmax", standardized=True,
              validation_fraction=0.0, lr_schedule="exponential",
              tfds_name="smallnorb",
              tfds_keys=("image", "image2", "label_category"),
              input_range=None)


_CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog",
                    "frog", "horse", "ship", "truck")


def _cifar10(setup: str) -> Spec:
  if setup == "reference":
    info = DatasetInfo("cifar10", setup, (32, 32, 3), 10, 50000, 10000,
                       _CIFAR10_CLASSES, (32, 32, 3))
    norm = _normalize(0.0, 0.5)

    def train_fn(x, rng):
      x = augment.color_jitter(_F(x), jax.random.fold_in(rng, 0),
                               (0.75, 1.25), (0.2, 1.8))
      return norm(augment.random_flip_lr(x, jax.random.fold_in(rng, 2)))

    return Spec(info, train_fn, eval_fn=lambda x: norm(_F(x)),
                target_rule="batch_minmax", standardized=False,
                validation_fraction=0.1, lr_schedule="constant",
                tfds_name="cifar10", input_range=(0.0, norm(1.0)))
  info = DatasetInfo("cifar10", setup, (24, 24, 3), 10, 50000, 10000,
                     _CIFAR10_CLASSES, (32, 32, 3))
  std = augment.per_image_standardization

  def paper_train(x, rng):
    # cifar10_input.py of the authors: crop, flip, brightness (max delta
    # 63/255), contrast [0.2, 1.8] (unclipped, per channel), standardise.
    x = augment.random_crop(_F(x), jax.random.fold_in(rng, 0), (24, 24))
    x = augment.random_flip_lr(x, jax.random.fold_in(rng, 1))
    x = augment.random_brightness_delta(x, jax.random.fold_in(rng, 2), 63 / 255)
    x = augment.random_contrast_tf(x, jax.random.fold_in(rng, 3), 0.2, 1.8)
    return std(x)

  return Spec(info, paper_train,
              eval_fn=lambda x: std(augment.center_crop(_F(x), (24, 24))),
              target_rule="image_minmax", standardized=True,
              validation_fraction=0.0, lr_schedule="exponential",
              tfds_name="cifar10", input_range=None)


def _multimnist() -> Spec:
  """MultiMNIST (Sabour et al., section 6; capsnet_jax.data.multimnist): two
  MNIST digits of different classes, each padded to 36x36 and shifted by up
  to 4 px, added and clipped. The host composes the pairs (stored uint8
  36x36 overlays, fresh every step), so the device only scales them; the
  targets are each digit's own shifted image in [0, 1]. The paper's setup
  only: pixels in [0, 1], all 60,000 training digits, exponential decay.
  num_test is the default number of fixed test pairs
  (config.multimnist_test_pairs)."""
  info = DatasetInfo("multimnist", "paper", (36, 36, 1), 10, 60000, 10000,
                     tuple(str(i) for i in range(10)), (36, 36, 1))
  return Spec(info, train_fn=lambda x, rng: _F(x), eval_fn=_F,
              target_rule="input", standardized=False,
              validation_fraction=0.0, lr_schedule="exponential",
              tfds_name="mnist", num_targets=2,
              target_mean=MULTIMNIST_TARGET_MEAN)


_BUILDERS = {"mnist": _mnist, "smallnorb": _smallnorb, "cifar10": _cifar10}
DATASETS = tuple(_BUILDERS) + ("multimnist",)
SPECS = {(d, s): _BUILDERS[d](s) for d in _BUILDERS
         for s in ("reference", "paper")}
SPECS[("mnist", "efficient")] = _mnist_efficient()
SPECS[("mnist", "expanded")] = _mnist_expanded()
SPECS[("multimnist", "paper")] = _multimnist()
SETUPS = ("reference", "paper", "efficient", "expanded")


def get(dataset: str, setup: str = "reference") -> Spec:
  """The spec of (dataset, setup); ValueError naming the valid ones."""
  if dataset not in DATASETS:
    raise ValueError(f"Unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
  if setup not in SETUPS:
    raise ValueError(f"Unknown data_setup {setup!r}; valid: {', '.join(SETUPS)}")
  if (dataset, setup) not in SPECS:
    valid = [s for d, s in SPECS if d == dataset]
    raise ValueError(f"data_setup {setup!r} is not defined for {dataset}; "
                     f"valid: {', '.join(valid)}")
  return SPECS[(dataset, setup)]


def resolve(config, field: str):
  """config.<field>, or the setup's default where it is "auto" (or < 0 for
  validation_fraction)."""
  value = config.get(field)
  spec = get(config.dataset, config.data_setup)
  if field == "validation_fraction":
    return spec.validation_fraction if value is None or value < 0 else float(value)
  if value in (None, "auto"):
    return getattr(spec, field)
  return value
