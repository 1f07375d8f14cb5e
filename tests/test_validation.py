"""validate_config: every rule and its message. (test_reliability shows that
such an error ends main.py in one line, exit status 1, nothing written.)"""

import pytest

from capsnet_jax import validation
from capsnet_jax.errors import ConfigError
from configs import default


def _config(**overrides):
  config = default.get_config()
  config.update(overrides)
  return config


def _message(mode="train", device_count=1, **overrides) -> str:
  with pytest.raises(ConfigError) as e:
    validation.validate_config(_config(**overrides), mode, device_count)
  return str(e.value)


def test_defaults_and_every_mode_are_valid(tmp_path):
  for mode in validation.MODES:
    if mode != "ensemble":
      validation.validate_config(_config(), mode)
  validation.validate_config(_config(ensemble_workdirs="a,b"), "ensemble")
  validation.validate_config(_config(idx_dir=str(tmp_path)), "train")
  # Zero where zero means "the default" or "none".
  validation.validate_config(_config(
      primary_types=0, alpha=0.0, eval_batch_size=0, eval_every_steps=0,
      checkpoint_every_steps=0, lr_decay_steps=0, lr_min=0.0,
      lr_decay_rate=1.0, validation_fraction=-1.0))
  # num_epochs only matters when num_train_steps does not override it.
  validation.validate_config(_config(num_train_steps=10, num_epochs=0))


@pytest.mark.parametrize("field,value,valid", [
    ("dataset", "mnits", "mnist, smallnorb, cifar10, multimnist"),
    ("data_setup", "papers", "reference, paper, efficient, expanded"),
    ("model", "caps", "capsnet, tiny, efficient_capsnet, efficient_tiny, "
     "cnn, cnn_maxpool, cnn_tiny"),
    ("decoder", "conv", "fc, deconv"),
    ("init", "glorot", "auto, default, reference, authors"),
    ("primary_grouping", "rows", "auto, paper, reference"),
    ("primary_vote_scale", "half", "auto, none, authors"),
    ("margin_reduction", "max", "auto, sum, authors"),
    ("conv_impl", "winograd", "auto, xla, patches, rows, dft, fft"),
    ("compute_dtype", "float16", "float32, tf32, bfloat16, auto"),
    ("lr_schedule", "cosine", "auto, constant, exponential, staircase"),
    ("conv_padding", "full", "valid, same"),
])
def test_unknown_names_list_the_valid_ones(field, value, valid):
  assert _message(**{field: value}) == (
      f"Unknown {field} {value!r}; valid: {valid}")


def test_unknown_mode():
  assert _message(mode="trian") == (
      "Unknown mode 'trian'; valid: train, eval, summary, visualize, "
      "ensemble, predict, explore, robustness")


def test_robustness_options(tmp_path):
  validation.validate_config(_config(affnist_dir=str(tmp_path),
                                     robustness_examples=5), "robustness")
  assert _message("robustness", robustness_examples=-1) == (
      "robustness_examples must be >= 0, got -1")
  missing = str(tmp_path / "nope")
  assert _message("robustness", affnist_dir=missing) == (
      f"affnist_dir {missing!r} is not a directory")


# Float fields hold floats: ConfigDict turns 0 into 0.0.
@pytest.mark.parametrize("field,zero,negative", [
    ("batch_size", "0", "-2"), ("learning_rate", "0.0", "-2.0"),
    ("routing_iterations", "0", "-2"), ("margin_loss_scale", "0.0", "-2.0"),
    ("log_every_steps", "0", "-2"), ("keep_checkpoints", "0", "-2")])
def test_positive_fields(field, zero, negative):
  assert _message(**{field: 0}) == f"{field} must be > 0, got {zero}"
  assert _message(**{field: -2}) == f"{field} must be > 0, got {negative}"


@pytest.mark.parametrize("field,negative", [
    ("primary_types", "-1"), ("alpha", "-1.0"), ("eval_batch_size", "-1"),
    ("eval_every_steps", "-1"), ("checkpoint_every_steps", "-1"),
    ("lr_decay_steps", "-1"), ("num_summary_images", "-1")])
def test_non_negative_fields(field, negative):
  assert _message(**{field: -1}) == f"{field} must be >= 0, got {negative}"


def test_booleans_are_not_numbers():
  config = _config()
  config.batch_size = True  # a bool is an int to Python; not a batch size
  with pytest.raises(ConfigError, match="batch_size must be > 0, got True"):
    validation.validate_config(config)


def test_epochs_only_without_a_step_count():
  assert _message(num_train_steps=-1, num_epochs=0) == (
      "num_epochs must be > 0, got 0")


@pytest.mark.parametrize("rate", [0.0, 1.5, -0.5])
def test_lr_decay_rate_in_zero_one(rate):
  assert _message(lr_decay_rate=rate) == (
      f"lr_decay_rate must be in (0, 1], got {rate!r}")


def test_validation_fraction_below_one():
  assert _message(validation_fraction=1.0) == (
      "validation_fraction must be < 1 (negative: the setup's), got 1.0")


def test_batches_divisible_by_the_devices():
  assert _message(device_count=2, batch_size=3) == (
      "batch_size=3 is not divisible by the 2 devices; use a multiple of 2")
  assert _message(device_count=4, eval_batch_size=6) == (
      "eval_batch_size=6 is not divisible by the 4 devices; use a multiple "
      "of 4")
  validation.validate_config(_config(batch_size=4, eval_batch_size=0),
                             "train", 4)


def test_idx_dir(tmp_path):
  assert _message(idx_dir="/nonexistent/mnist") == (
      "idx_dir '/nonexistent/mnist' is not a directory")
  assert _message(idx_dir=str(tmp_path), dataset="cifar10") == (
      "idx_dir is for MNIST-format data, but dataset is 'cifar10'")


def test_efficient_setup_is_for_mnist():
  assert _message(data_setup="efficient", dataset="smallnorb") == (
      "data_setup 'efficient' (Efficient-CapsNet's MNIST augmentation) is "
      "for mnist, not 'smallnorb'")


def test_visualize_fields_only_in_visualize_mode():
  validation.validate_config(_config(visualize_rotation_step=0), "train")
  for field in ("visualize_rotation_step", "visualize_num_images",
                "visualize_primary_steps", "visualize_primary_examples"):
    assert _message("visualize", **{field: 0}) == f"{field} must be > 0, got 0"
  assert _message("visualize", visualize_rotation_examples=-1) == (
      "visualize_rotation_examples must be >= 0, got -1")
  assert _message("visualize", visualize_example=-1) == (
      "visualize_example must be >= 0, got -1")


def test_ensemble_needs_workdirs():
  for workdirs in ("", ",", " , "):  # commas alone name none
    assert _message("ensemble", ensemble_workdirs=workdirs) == (
        "--mode=ensemble needs --config.ensemble_workdirs=DIR1,DIR2,... "
        "(trained workdirs)")


def test_checkpoint_is_latest_best_or_a_step():
  for which in ("latest", "best", "262500"):
    validation.validate_config(_config(checkpoint=which), "visualize")
    validation.validate_config(_config(checkpoint=which), "predict")
  for which in ("newest", "-5", "1e3", ""):
    assert _message("predict", checkpoint=which) == (
        f"Unknown checkpoint {which!r}; valid: latest, best or a step number")
  for mode in ("train", "eval", "ensemble"):
    assert _message(mode, checkpoint="best", ensemble_workdirs="a,b") == (
        f"checkpoint 'best' is for --mode=visualize and --mode=predict; "
        f"--mode={mode} uses the latest checkpoint")
  # A workdir recorded before the field existed: the latest.
  config = _config()
  del config["checkpoint"]
  validation.validate_config(config, "train")
