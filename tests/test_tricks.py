"""The reference's reconstruction tricks end to end: the L1 loss (its
--loss), annealed alpha (--anneal, training.schedules) and the orphan class
capsule (--leaky) through training, resume and inference; their config
checks. The same runs have batch norm on, so that one compilation also
shows its statistics surviving a resume exactly."""

import jax
import ml_collections
import numpy as np
import pytest

from capsnet_jax import experiment
from capsnet_jax import validation
from capsnet_jax.analysis import curves
from capsnet_jax.errors import ConfigError, WorkdirError
from capsnet_jax.inference import trained
from capsnet_jax.training import loop
from capsnet_jax.workdir import history
from capsnet_jax.workdir import record
from configs import default
import conftest

# tanh_shifted with T = 0.5 epochs, alpha = 0.05: 0.05 (tanh(2 e - pi) + 1) / 2
# at epoch e, typed from a calculator.
ALPHA = {0: 0.05 * 0.0018639619, 1: 0.05 * 0.0925251538, 2: 0.05 * 0.8477180935}
# 256 synthetic training images, a quarter held out: 192 // 32 = 6 steps per
# epoch; 18 steps are epochs 0, 1 and 2.
STEPS_PER_EPOCH = 6


def _config(idx_dir, **overrides):
  fields = dict(num_train_steps=18, eval_every_steps=6, log_every_steps=1,
                validation_fraction=0.25, alpha=0.05,
                alpha_schedule="tanh_shifted", alpha_temperature=0.5,
                reconstruction_loss="l1", leaky_routing=True,
                leaky_variant="reference", batch_norm=True)
  fields.update(overrides)
  return conftest.tiny_config(idx_dir, **fields)



@pytest.fixture(name="runs", scope="module")
def fixture_runs(idx_dir, tmp_path_factory):
  """An uninterrupted 18-step run, one stopped at step 9 and resumed, and
  the uninterrupted run's model on 3 blank images."""
  straight = tmp_path_factory.mktemp("straight")
  resumed = tmp_path_factory.mktemp("resumed")
  results = loop.train_and_evaluate(_config(idx_dir), str(straight))
  loop.train_and_evaluate(_config(idx_dir, num_train_steps=9), str(resumed))
  stopped = history.read(str(resumed))
  again = loop.train_and_evaluate(_config(idx_dir), str(resumed))
  model = trained.load(str(straight))
  out = model.predict(np.zeros((3, 28, 28), np.uint8))
  decoded = model.decode(out.class_caps, out.predictions)
  return dict(straight=straight, resumed=resumed, stopped=stopped,
              results=results, again=again, out=out, decoded=decoded)


def _alpha_by_step(workdir):
  steps, values = curves.from_events(str(workdir))["train_alpha"]
  return dict(zip((int(s) for s in steps), (float(v) for v in values)))


def test_every_step_uses_the_annealed_alpha_of_its_epoch(runs):
  a, b = _alpha_by_step(runs["straight"]), _alpha_by_step(runs["resumed"])
  assert sorted(a) == sorted(b) == list(range(1, 19))
  for step in range(1, 19):  # Logged after `step` steps: step - 1's weight.
    expected = ALPHA[(step - 1) // STEPS_PER_EPOCH]
    assert a[step] == pytest.approx(expected, rel=1e-5), step
    assert b[step] == a[step], step


def test_history_records_the_alpha_of_each_evaluation(runs):
  assert [(r["step"], r["alpha"]) for r in runs["stopped"]] == [
      (6, pytest.approx(ALPHA[0], rel=1e-5)),
      (9, pytest.approx(ALPHA[1], rel=1e-5))]
  records = {r["step"]: r for r in history.read(str(runs["straight"]))}
  assert sorted(records) == [6, 12, 18]
  for step, epoch in ((6, 0), (12, 1), (18, 2)):
    assert records[step]["alpha"] == pytest.approx(ALPHA[epoch], rel=1e-5)
    # L1 runs record the SSE beside their (SAE) reconstruction loss.
    assert records[step]["test_reconstruction_sse"] > 0
    assert records[step]["test_loss"] == pytest.approx(
        records[step]["test_margin_loss"] + records[step]["alpha"] *
        records[step]["test_reconstruction_loss"], rel=1e-5)
  # Every evaluation of the resumed run (9: where it stopped) has the
  # uninterrupted run's numbers, exactly.
  again = {r["step"]: r for r in history.read(str(runs["resumed"]))}
  assert sorted(again) == [6, 9, 12, 18]
  timing = ("wall_seconds", "train_seconds", "time")
  for step in (6, 12, 18):
    assert ({k: v for k, v in again[step].items() if k not in timing} ==
            {k: v for k, v in records[step].items() if k not in timing}), step


def test_the_tricks_still_learn(runs):
  # 100% test accuracy at step 18 (2-core Intel Xeon).
  assert runs["results"]["test_accuracy"] >= 0.97, runs["results"]


def test_resumed_state_equals_uninterrupted(idx_dir, runs):
  config = _config(idx_dir)
  a = conftest.restore_state(runs["resumed"], config)
  b = conftest.restore_state(runs["straight"], config)
  assert int(a.step) == int(b.step) == 18
  assert a.params["class_caps"]["W"].shape[1] == 11  # the orphan capsule
  stats = jax.tree.leaves(a.batch_stats)
  assert len(stats) == 8  # mean and var of conv1, primary and 2 decoder BNs
  for x in stats:  # trained: no longer the initial zeros (mean) or ones (var)
    assert not (np.allclose(x, 0.0) or np.allclose(x, 1.0))
  conftest.assert_states_equal(a, b)
  for key in ("test_accuracy", "test_margin_loss", "test_reconstruction_loss"):
    assert runs["again"][key] == runs["results"][key], key


def test_trained_model_reports_only_the_real_classes(idx_dir, runs):
  out = runs["out"]  # trained.load(straight) on 3 blank images
  assert out.lengths.shape == (3, 10)
  assert out.class_caps.shape == (3, 10, 16)
  assert set(out.predictions.tolist()) <= set(range(10))
  np.testing.assert_array_equal(out.predictions,
                                np.argmax(out.lengths, axis=-1))
  np.testing.assert_allclose(runs["decoded"], out.reconstructions, atol=1e-6)
  # The orphan capsule shapes the model: another variant is refused.
  identity = experiment.resolve(_config(idx_dir,
                                        leaky_variant="authors")).identity()
  with pytest.raises(WorkdirError,
                     match="leaky_variant: 'reference' there, 'authors' now"):
    record.check_compatible(str(runs["straight"]), identity)


@pytest.mark.parametrize("field,value,message", [
    ("reconstruction_loss", "l3", "Unknown reconstruction_loss 'l3'; valid: l2, l1"),
    ("alpha_schedule", "cosine",
     "Unknown alpha_schedule 'cosine'; valid: none, tanh_shifted, tanh, 1, 2"),
    ("leaky_variant", "tf", "Unknown leaky_variant 'tf'; valid: authors, reference"),
    ("alpha_temperature", 0.0, "alpha_temperature must be > 0, got 0.0"),
])
def test_invalid_trick_fields(field, value, message):
  config = default.get_config()
  config[field] = value
  with pytest.raises(ConfigError) as e:
    validation.validate_config(config)
  assert str(e.value) == message


def test_orphan_capsule_needs_the_routing_capsnet():
  config = default.get_config()
  config.model, config.leaky_routing = "efficient_capsnet", True
  validation.validate_config(config)  # the authors' variant: ignored there
  config.leaky_variant = "reference"
  with pytest.raises(ConfigError,
                     match="^leaky_variant 'reference' .an orphan class "
                     "capsule. is for the dynamic-routing CapsNet, not model "
                     "'efficient_capsnet'$"):
    validation.validate_config(config)


def test_aliases_and_configs_from_before_the_tricks_validate():
  config = default.get_config()
  for schedule in ("1", "2", "tanh", "tanh_shifted"):
    config.alpha_schedule = schedule
    validation.validate_config(config)
  old = default.get_config().to_dict()
  for key in ("reconstruction_loss", "alpha_schedule", "alpha_temperature",
              "alpha_fractional_epochs", "leaky_variant"):
    del old[key]
  validation.validate_config(ml_collections.ConfigDict(old))
