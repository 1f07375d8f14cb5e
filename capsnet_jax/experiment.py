"""A config, validated and resolved once: everything a run needs to know.

Synopsis::

  from configs import mnist
  exp = experiment.resolve(mnist.get_config(), mode="train")
  exp.spec.info.image_shape     # (28, 28, 1): the dataset's registry entry
  exp.model                     # the flax module, its options resolved
  exp.init, exp.margin_reduction, exp.lr_schedule   # "auto" fields resolved
  exp.identity()                # what a workdir's checkpoints depend on

The entry point (capsnet_jax.cli) calls ``resolve`` once; the training
loop, inference, the figures and the benchmark take the Experiment and read
its resolved fields. No module below looks a dataset, setup or model up by
name again. Library functions that take a config accept either (``ensure``).

Fields set to "auto" in the config take their data setup's value: the
recipe's (capsnet_jax.recipes: init, primary_grouping, primary_vote_scale,
margin_reduction, lr_min) and the dataset spec's (lr_schedule,
validation_fraction).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import ml_collections

from capsnet_jax import recipes
from capsnet_jax import validation
from capsnet_jax.data import datasets
from capsnet_jax.data import input_pipeline
from capsnet_jax.errors import ConfigError
from capsnet_jax.model import models
from capsnet_jax.model import precision
from capsnet_jax.workdir import record

IDENTITY_FIELDS = record.IDENTITY_FIELDS


@dataclasses.dataclass(frozen=True)
class Experiment:
  """A resolved config (see ``resolve``).

  config: the config as given (frozen), for its plain values (batch sizes,
    steps, seeds, logging).
  mode: the --mode it was validated for.
  spec: the (dataset, data_setup) entry of the dataset registry.
  model: the flax module for the dataset's shapes.
  model_name, primary_types (None for models without the field): the model.
  init, primary_grouping, primary_vote_scale, margin_reduction, lr_min,
    decoder_output_bias, lr_schedule, validation_fraction: the resolved
    "auto" fields.
  compute_dtype: float32 | tf32 | bfloat16 (compute_dtype "auto" resolved).
  source: where the data is read from.
  """
  config: ml_collections.FrozenConfigDict
  mode: str
  spec: datasets.Spec
  model: nn.Module
  model_name: str
  primary_types: int | None
  init: str
  primary_grouping: str
  primary_vote_scale: str
  margin_reduction: str
  lr_min: float
  decoder_output_bias: str
  lr_schedule: str
  validation_fraction: float
  compute_dtype: str
  source: input_pipeline.Source

  @property
  def info(self) -> datasets.DatasetInfo:
    """The dataset's nominal DatasetInfo (shapes, classes, split sizes
    before the validation hold-out)."""
    return self.spec.info

  @property
  def capsules(self) -> bool:
    """Whether the model is a capsule model (margin loss, decoder); False
    for the baseline CNNs (softmax cross-entropy; models.has_capsules)."""
    return models.has_capsules(self.model)

  @property
  def eval_batch_size(self) -> int:
    """The global evaluation batch (eval_batch_size, or batch_size)."""
    return int(self.config.eval_batch_size or self.config.batch_size)

  def identity(self) -> dict[str, Any]:
    """IDENTITY_FIELDS, resolved: a workdir's checkpoints fit only a run
    with the same values (workdir.record.check_compatible)."""
    identity = {k: self.config.get(k) for k in IDENTITY_FIELDS}
    identity.update(primary_grouping=self.primary_grouping,
                    primary_vote_scale=self.primary_vote_scale,
                    primary_types=self.primary_types)
    return identity

  def record(self) -> dict[str, Any]:
    """What WORKDIR/config.json holds: the config with its "auto" recipe
    fields and the model's default primary_types resolved."""
    record = self.config.to_dict()
    record.update({k: getattr(self, k) for k in recipes.FIELDS})
    record.update({k: v for k, v in self.identity().items() if v is not None})
    return record

  def load_splits(self, process_index: int | None = None,
                  process_count: int | None = None
                  ) -> input_pipeline.Splits:
    """This process's train, validation and test shards (data.input_pipeline)."""
    return input_pipeline.load_splits(
        self.spec, self.source, self.validation_fraction,
        multimnist_test_pairs=int(self.config.get("multimnist_test_pairs",
                                                  10000)),
        process_index=process_index, process_count=process_count)

  def replace_config(self, **fields) -> "Experiment":
    """The experiment of this config with ``fields`` changed (resolved
    again, for the same mode)."""
    config = ml_collections.ConfigDict(self.config.to_dict())
    for k, v in fields.items():
      config[k] = v
    return resolve(config, self.mode)


def _value(config, field: str):
  """A recipe field, legacy-filled for configs recorded before it existed."""
  return recipes.resolve(config, field)


def build_model(config, spec: datasets.Spec) -> tuple[nn.Module, str, int | None]:
  """(the flax module, its model name, its resolved primary_types) for a
  validated config and its dataset spec."""
  name = config.get("model", "capsnet")
  primary_types = (int(config.primary_types) if config.get("primary_types", 0)
                   else models.default_primary_types(name))
  if "primary_types" not in models.model_fields(name):
    primary_types = None
  leaky = bool(config.get("leaky_routing", False))
  variant = config.get("leaky_variant", "authors")
  compute = precision.resolve_compute_dtype(
      config.get("compute_dtype", "float32"))[0]
  kwargs = dict(
      num_classes=spec.info.num_classes,
      image_shape=tuple(spec.info.image_shape),
      decoder=config.decoder,
      batch_norm=bool(config.batch_norm),
      routing_iterations=int(config.routing_iterations),
      leaky_routing=leaky and variant == "authors",
      routing_stop_gradient=bool(config.get("routing_stop_gradient", False)),
      orphan_capsule=leaky and variant == "reference",
      conv_impl=config.get("conv_impl", "auto"),
      init_scheme=_value(config, "init"),
      primary_grouping=_value(config, "primary_grouping"),
      conv_padding=config.get("conv_padding", "valid"),
      decoder_output_mean=(spec.target_mean if _value(
          config, "decoder_output_bias") == "data_mean" else None),
      dtype=precision.array_dtype(compute),
  )
  if primary_types is not None:
    kwargs["primary_types"] = primary_types
    kwargs["primary_vote_scale"] = recipes.vote_scale(config, primary_types)
  return models.create(name, **kwargs), name, primary_types


def resolve(config, mode: str = "train", device_count: int | None = None
            ) -> Experiment:
  """Validates ``config`` for ``mode`` (errors.ConfigError naming the first
  bad field) and resolves it into an Experiment.

  device_count: the devices batch sizes must divide (default: all of JAX's).
  """
  if isinstance(config, Experiment):
    return config
  if device_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    device_count = jax.device_count()
  validation.validate_config(config, mode, device_count)
  spec = datasets.get(config.dataset, config.data_setup)
  model, name, primary_types = build_model(config, spec)
  try:
    vote = _value(config, "primary_vote_scale")
  except ValueError as e:
    raise ConfigError(str(e)) from None
  return Experiment(
      config=ml_collections.FrozenConfigDict(config),
      mode=mode,
      spec=spec,
      model=model,
      model_name=name,
      primary_types=primary_types,
      init=_value(config, "init"),
      primary_grouping=_value(config, "primary_grouping"),
      primary_vote_scale=vote,
      margin_reduction=_value(config, "margin_reduction"),
      lr_min=float(_value(config, "lr_min")),
      decoder_output_bias=_value(config, "decoder_output_bias"),
      lr_schedule=datasets.resolve(config, "lr_schedule"),
      validation_fraction=float(datasets.resolve(config,
                                                 "validation_fraction")),
      compute_dtype=precision.resolve_compute_dtype(
          config.get("compute_dtype", "float32"))[0],
      source=input_pipeline.Source(
          idx_dir=config.get("idx_dir", "") or "",
          tfds_data_dir=config.get("tfds_data_dir", "") or ""))


def ensure(config_or_experiment, mode: str = "train") -> Experiment:
  """An Experiment as is; a config resolved for ``mode``."""
  return resolve(config_or_experiment, mode)
