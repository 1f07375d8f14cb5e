"""The model and loss settings of each data setup (its recipe).

Synopsis::

  recipes.RECIPES["paper"].init            # "authors"
  recipes.resolve(config, "init")          # config.init, or the setup's

A config field set to "auto" (or, for lr_min, to a negative number) takes
the value of its data setup's recipe; any other value overrides it. Sources
(docs/reference.md, "Recipes"):

* ``reference``: the PyTorch reference project: its initialisation
  (tools.py), its primary-capsule grouping (model.py, ``stack`` + ``view``),
  the paper's margin loss summed over the classes (train.py), a constant
  learning rate.
* ``paper``: Sabour et al.'s released code (research/capsules): truncated
  normal initialisers and biases of 0.1 (models/layers/variables.py:29-67,
  models/capsule_model.py:181-184, models/layers/layers.py:459-461), the
  primary capsules' votes scaled by 1 / 32 (layers.py:110 with
  capsule_model.py:55-65), the margin loss averaged over the classes
  (layers.py:341-362, 396), the learning rate floored at 1e-6
  (models/model.py:63-68).
* ``efficient``: Efficient-CapsNet's MNIST recipe; its model has its own
  initialisers, and the CapsNet fields keep our defaults.

Workdirs recorded before a field existed hold none of it: ``LEGACY`` is the
value those runs used.
"""

from __future__ import annotations

import dataclasses

from capsnet_jax.data import datasets
from capsnet_jax.workdir import record


@dataclasses.dataclass(frozen=True)
class Recipe:
  """init: a scheme of capsnet_jax.model.initializers; primary_grouping: "paper" |
  "reference" (layers.PrimaryCapsules); primary_vote_scale: "none" (1) |
  "authors" (1 / primary_types); margin_reduction: losses.MARGIN_REDUCTIONS;
  lr_min: floor of the decayed learning rate (0: none);
  decoder_output_bias: where the deconv decoder's output bias starts,
  "init" (the init scheme's bias: the reference's PyTorch default U(-0.5,
  0.5)) | "data_mean" (logit of the target's mean, decoders.DeconvDecoder)."""
  init: str
  primary_grouping: str
  primary_vote_scale: str
  margin_reduction: str
  lr_min: float
  decoder_output_bias: str


# The reference starts its output ConvTranspose2d(64, 1, 2) at PyTorch's
# default bias (model.py:224). The authors' code has no deconv decoder, and
# their bias of 0.1 starts every pixel at sigmoid(0.1) = 0.52 against MNIST's
# mean of 0.13: the other setups start at the data mean (docs/reference.md,
# "Recipes").
RECIPES = {
    "reference": Recipe("reference", "reference", "none", "sum", 0.0, "init"),
    "paper": Recipe("authors", "paper", "authors", "authors", 1e-6,
                    "data_mean"),
    "efficient": Recipe("default", "paper", "none", "sum", 0.0, "data_mean"),
    # The paper's 40x40 protocol is the paper setup on a bigger canvas.
    "expanded": Recipe("authors", "paper", "authors", "authors", 1e-6,
                       "data_mean"),
}
FIELDS = tuple(f.name for f in dataclasses.fields(Recipe))
VOTE_SCALES = ("auto", "none", "authors")
OUTPUT_BIASES = ("auto", "init", "data_mean")

# What runs recorded before these fields existed used.
LEGACY = record.LEGACY_FIELDS


def resolve(config, field: str):
  """config.<field>, or the data setup's where it is "auto" (lr_min: < 0);
  the fields of datasets.Spec (lr_schedule, validation_fraction) are
  datasets.resolve's."""
  if field not in FIELDS:
    return datasets.resolve(config, field)
  value = config.get(field, LEGACY[field])
  recipe = RECIPES[config.data_setup]
  if field == "lr_min":
    return getattr(recipe, field) if value is None or value < 0 else float(value)
  if value in (None, "auto"):
    return getattr(recipe, field)
  return value


def vote_scale(config, primary_types: int) -> float:
  """The factor on the primary-capsule convolution: 1, or the authors'
  1 / primary_types."""
  kind = resolve(config, "primary_vote_scale")
  if kind == "authors":
    return 1.0 / primary_types
  if kind == "none":
    return 1.0
  raise ValueError(f"Unknown primary_vote_scale {kind!r}; valid: "
                   f"{', '.join(VOTE_SCALES)}")
