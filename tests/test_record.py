"""The workdir's config record, results.json and the compatibility check."""

import json
import os

import pytest

from capsnet_jax import experiment
from capsnet_jax.workdir import record
from capsnet_jax.errors import WorkdirError
from configs import default


def _config(**overrides):
  config = default.get_config()
  config.update(overrides)
  return config


def _identity(**overrides):
  """The identity fields of the default config with ``overrides``."""
  return experiment.resolve(_config(**overrides)).identity()


def _prepare(workdir, **overrides):
  exp = experiment.resolve(_config(**overrides))
  record.prepare(workdir, exp.identity(), exp.record())


def test_prepare_records_the_config_with_primary_types_resolved(tmp_path):
  _prepare(str(tmp_path), model="tiny", learning_rate=0.01)
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["model"] == "tiny" and saved["learning_rate"] == 0.01
  assert saved["primary_types"] == 4  # 0 in the config: the tiny model's own
  assert sorted(os.listdir(tmp_path)) == ["config.json"]  # no temporary left
  # The same model with its 4 types given explicitly is the same run.
  record.check_compatible(str(tmp_path), _identity(model="tiny",
                                                   primary_types=4))
  with pytest.raises(WorkdirError, match="primary_types: 4 there, 8 now"):
    record.check_compatible(str(tmp_path), _identity(model="tiny",
                                                     primary_types=8))


def test_check_compatible_names_each_differing_field(tmp_path):
  _prepare(str(tmp_path))
  # Training-only fields may change.
  record.check_compatible(str(tmp_path), _identity(
      learning_rate=0.1, num_train_steps=7, batch_size=16, seed=3))
  with pytest.raises(WorkdirError) as e:
    record.check_compatible(str(tmp_path), _identity(
        decoder="deconv", batch_norm=True, routing_iterations=2))
  message = str(e.value)
  assert message.startswith(f"workdir {str(tmp_path)!r} holds a run of a "
                            "different configuration (")
  for part in ("decoder: 'fc' there, 'deconv' now",
               "batch_norm: False there, True now",
               "routing_iterations: 3 there, 2 now"):
    assert part in message, message
  assert "learning_rate" not in message and "model" not in message
  assert message.endswith("Use another --workdir, or delete this one to "
                          "start fresh.")
  for field, value in (("dataset", "cifar10"), ("data_setup", "paper"),
                       ("model", "efficient_capsnet"), ("leaky_routing", True),
                       ("routing_stop_gradient", True),
                       ("compute_dtype", "bfloat16"),
                       ("validation_fraction", 0.2), ("conv_padding", "same"),
                       ("primary_types", 16)):
    with pytest.raises(WorkdirError, match=f"{field}: "):
      record.check_compatible(str(tmp_path), _identity(**{field: value}))


def test_primary_types_zero_matches_a_recorded_32(tmp_path):
  """Records of runs before primary_types=0 existed hold 32 for capsnet."""
  saved = experiment.resolve(_config()).record()
  saved["primary_types"] = 32
  (tmp_path / "config.json").write_text(json.dumps(saved))
  record.check_compatible(str(tmp_path), _identity(primary_types=0))
  record.check_compatible(str(tmp_path), _identity(primary_types=32))
  with pytest.raises(WorkdirError, match="primary_types: 32 there, 4 now"):
    record.check_compatible(str(tmp_path), _identity(model="tiny"))


def test_fields_missing_from_an_old_record_are_not_compared(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"dataset": "mnist"}))
  # Fields added later are read as what runs used before they existed
  # (record.LEGACY_FIELDS): primary capsules grouped as in the paper, votes
  # not scaled. Others the old record lacks (conv_padding) are not compared.
  record.check_compatible(str(tmp_path), _identity(
      conv_padding="same", primary_grouping="paper", primary_vote_scale="none"))
  with pytest.raises(WorkdirError,
                     match="primary_grouping: 'paper' there, 'reference' now"):
    record.check_compatible(str(tmp_path), _identity())
  record.check_compatible(str(tmp_path / "new"), _identity())  # no record


def test_results_round_trip_and_unwritable_workdir(tmp_path):
  assert record.read_results(str(tmp_path)) is None
  record.write_results(str(tmp_path), {"step": 8, "test_accuracy": 0.5})
  assert record.read_results(str(tmp_path)) == {"step": 8,
                                                  "test_accuracy": 0.5}
  assert not (tmp_path / "results.json.tmp").exists()
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(WorkdirError, match=f"workdir {str(blocker / 'w')!r} is "
                     "not writable"):
    record.check_writable(str(blocker / "w"))


def test_primary_types_is_not_compared_for_models_without_it(tmp_path):
  """Efficient-CapsNet has no primary_types: a record from before
  primary_types=0 (32) resumes, and the new record keeps the config's 0."""
  saved = experiment.resolve(_config(model="efficient_capsnet")).record()
  saved["primary_types"] = 32
  (tmp_path / "config.json").write_text(json.dumps(saved))
  record.check_compatible(str(tmp_path), _identity(model="efficient_capsnet"))
  fresh = tmp_path / "fresh"
  _prepare(str(fresh), model="efficient_capsnet")
  assert json.loads((fresh / "config.json").read_text())["primary_types"] == 0
  with pytest.raises(WorkdirError, match="model: 'efficient_capsnet' there"):
    record.check_compatible(str(tmp_path), _identity(primary_types=32))


def test_a_deconv_run_recorded_before_decoder_output_bias_keeps_its_start(
    tmp_path):
  """The committed 100-step reference deconv run (docs/results/cpu) was
  recorded before decoder_output_bias existed, when every MNIST deconv
  decoder started at the data mean: read back, it resolves to data_mean
  (the model it resumes is built as it was), while a new reference run
  records the reference's own start, "init"."""
  from capsnet_jax.inference import trained
  src = os.path.join(os.path.dirname(__file__), "..", "docs", "results",
                     "cpu", "ref_deconv_100steps", "config.json")
  saved = json.loads(open(src).read())
  assert "decoder_output_bias" not in saved and saved["decoder"] == "deconv"
  (tmp_path / "config.json").write_text(json.dumps(saved))
  config = trained.read_config(str(tmp_path))
  assert config.decoder_output_bias == "data_mean"
  exp = experiment.resolve(config)
  assert exp.decoder_output_bias == "data_mean"
  assert exp.model.decoder_output_mean == pytest.approx(0.1307)
  fresh = experiment.resolve(_config(decoder="deconv"))
  assert fresh.record()["decoder_output_bias"] == "init"
  assert fresh.model.decoder_output_mean is None
