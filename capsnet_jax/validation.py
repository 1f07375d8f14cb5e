"""Fail-fast checks of a config, run before any heavy work.

Synopsis::

  validation.validate_config(config, mode="train")   # raises errors.ConfigError
"""

import os

from capsnet_jax.model import conv
from capsnet_jax.data import datasets
from capsnet_jax.model import decoders
from capsnet_jax.model import layers
from capsnet_jax.model import models
from capsnet_jax.model import precision
from capsnet_jax import recipes
from capsnet_jax.errors import ConfigError

DATASETS = datasets.DATASETS
SETUPS = datasets.SETUPS
LR_SCHEDULES = ("auto", "constant", "exponential", "staircase")
COMPUTE_DTYPES = precision.COMPUTE_DTYPES
MODES = ("train", "eval", "summary", "visualize", "ensemble", "predict",
         "explore", "robustness")
# Modes that need class capsules and a decoder: the baseline CNNs
# (models.has_capsules False) are refused there with one line.
CAPSULE_MODES = ("visualize", "explore")
LEAKY_VARIANTS = ("authors", "reference")
# The losses' options (capsnet_jax.training.losses and .schedules use them).
RECONSTRUCTION_LOSSES = ("l2", "l1")
# sum: the paper's equation, summed over the classes. authors: the authors'
# released code (losses.authors_margin_loss), 1 / (2 K) of it.
MARGIN_REDUCTIONS = ("sum", "authors")
# The reconstruction weight's schedules; the reference's --anneal values "1"
# and "2" are accepted as aliases.
ALPHA_SCHEDULES = ("none", "tanh_shifted", "tanh", "1", "2")


def _choice(config, name: str, valid, default=None) -> None:
  value = config.get(name, default)
  if value not in valid:
    raise ConfigError(f"Unknown {name} {value!r}; valid: {', '.join(map(str, valid))}")


def _positive(config, name: str, allow_zero: bool = False,
              default=None) -> None:
  value = config.get(name, default)
  ok = value >= 0 if allow_zero else value > 0
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok:
    bound = ">= 0" if allow_zero else "> 0"
    raise ConfigError(f"{name} must be {bound}, got {value!r}")


def ensemble_members(config) -> list[str]:
  """The workdirs of --config.ensemble_workdirs=DIR1,DIR2,... (blanks and
  empty items dropped)."""
  return [w.strip() for w in str(config.get("ensemble_workdirs", "")).split(",")
          if w.strip()]


def validate_config(config, mode: str = "train", device_count: int = 1) -> None:
  """Raises ConfigError naming the first invalid field and what is valid."""
  if mode not in MODES:
    raise ConfigError(f"Unknown mode {mode!r}; valid: {', '.join(MODES)}")
  _choice(config, "dataset", DATASETS)
  _choice(config, "data_setup", SETUPS)
  if config.data_setup == "efficient" and config.dataset != "mnist":
    raise ConfigError(f"data_setup 'efficient' (Efficient-CapsNet's MNIST "
                      f"augmentation) is for mnist, not {config.dataset!r}")
  if (config.dataset, config.data_setup) not in datasets.SPECS:
    valid = [s for d, s in datasets.SPECS if d == config.dataset]
    raise ConfigError(f"data_setup {config.data_setup!r} is not defined for "
                      f"{config.dataset}; valid: {', '.join(valid)}")
  if config.dataset == "multimnist":
    _positive(config, "multimnist_test_pairs")
  _choice(config, "model", tuple(models.MODELS))
  if mode in CAPSULE_MODES and not models.has_capsules(config.model):
    raise ConfigError(
        f"--mode={mode} shows capsules and reconstructions, and model "
        f"{config.model!r} is a baseline CNN without either (the other "
        "modes take it)")
  _choice(config, "decoder", decoders.DECODERS)
  _choice(config, "init", ("auto",) + models.INITS, "auto")
  _choice(config, "primary_grouping", ("auto",) + layers.GROUPINGS, "auto")
  _choice(config, "primary_vote_scale", recipes.VOTE_SCALES, "auto")
  _choice(config, "decoder_output_bias", recipes.OUTPUT_BIASES, "auto")
  _choice(config, "margin_reduction", ("auto",) + MARGIN_REDUCTIONS,
          "auto")
  _choice(config, "conv_impl", conv.IMPLS)
  _choice(config, "compute_dtype", COMPUTE_DTYPES)
  _choice(config, "lr_schedule", LR_SCHEDULES)
  _choice(config, "conv_padding", ("valid", "same"), "valid")
  # Defaults for workdirs recorded before these fields existed.
  _choice(config, "reconstruction_loss", RECONSTRUCTION_LOSSES, "l2")
  _choice(config, "alpha_schedule", ALPHA_SCHEDULES, "none")
  _choice(config, "leaky_variant", LEAKY_VARIANTS, "authors")
  _positive(config, "alpha_temperature", default=8.0)
  model = config.get("model", "capsnet")
  if (config.get("leaky_routing") and
      config.get("leaky_variant") == "reference" and
      "orphan_capsule" not in models.model_fields(model)):
    raise ConfigError(f"leaky_variant 'reference' (an orphan class capsule) "
                      f"is for the dynamic-routing CapsNet, not model "
                      f"{model!r}")
  if datasets.get(config.dataset, config.data_setup).num_targets > 1:
    if config.get("reconstruction_loss", "l2") != "l2":
      raise ConfigError(f"reconstruction_loss {config.reconstruction_loss!r} "
                        f"is for one object per image; {config.dataset} "
                        f"reconstructs each object with the SSE (l2)")
    if config.get("leaky_routing") and config.get("leaky_variant") == "reference":
      raise ConfigError(f"leaky_variant 'reference' (an orphan class capsule) "
                        f"is for one object per image, not {config.dataset}")
  if config.get("validation_fraction", -1.0) >= 1.0:
    raise ConfigError("validation_fraction must be < 1 (negative: the "
                      f"setup's), got {config.validation_fraction!r}")
  for name in ("batch_size", "learning_rate", "routing_iterations",
               "log_every_steps", "keep_checkpoints"):
    _positive(config, name)
  _positive(config, "margin_loss_scale", default=1.0)
  for name in ("primary_types", "alpha", "eval_batch_size", "eval_every_steps",
               "checkpoint_every_steps", "lr_decay_steps"):
    _positive(config, name, allow_zero=True)
  _positive(config, "num_summary_images", allow_zero=True, default=16)
  if mode == "visualize":
    for name in ("visualize_rotation_step", "visualize_num_images",
                 "visualize_primary_steps", "visualize_primary_examples"):
      _positive(config, name)
    _positive(config, "visualize_rotation_examples", allow_zero=True)
    _positive(config, "visualize_example", allow_zero=True, default=0)
  if config.num_train_steps <= 0:
    _positive(config, "num_epochs")
  if not 0 < config.lr_decay_rate <= 1:
    raise ConfigError(f"lr_decay_rate must be in (0, 1], got {config.lr_decay_rate!r}")
  for name in ("batch_size", "eval_batch_size"):
    value = config.get(name)
    if value and value % device_count:
      raise ConfigError(
          f"{name}={value} is not divisible by the {device_count} devices; "
          f"use a multiple of {device_count}")
  if config.idx_dir:
    if datasets.get(config.dataset, config.data_setup).tfds_name != "mnist":
      raise ConfigError(f"idx_dir is for MNIST-format data, but dataset is "
                        f"{config.dataset!r}")
    if not os.path.isdir(config.idx_dir):
      raise ConfigError(f"idx_dir {config.idx_dir!r} is not a directory")
  if mode == "robustness":
    _positive(config, "robustness_examples", allow_zero=True, default=0)
    folder = config.get("affnist_dir", "")
    if folder and not os.path.isdir(folder):
      raise ConfigError(f"affnist_dir {folder!r} is not a directory")
  which = config.get("checkpoint", "latest")
  if not (which in ("latest", "best") or
          (isinstance(which, str) and which.isdigit())):
    raise ConfigError(f"Unknown checkpoint {which!r}; valid: latest, best or "
                      "a step number")
  if which != "latest" and mode in ("train", "eval", "ensemble"):
    raise ConfigError(f"checkpoint {which!r} is for --mode=visualize and "
                      f"--mode=predict; --mode={mode} uses the latest "
                      "checkpoint")
  if mode == "ensemble" and not ensemble_members(config):
    raise ConfigError("--mode=ensemble needs --config.ensemble_workdirs="
                      "DIR1,DIR2,... (trained workdirs)")
