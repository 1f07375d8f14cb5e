"""The reference's reconstruction tricks end to end: L1 loss, annealed alpha
and the orphan class capsule through training, resume and inference; their
config checks."""

import json
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from capsnet_jax.analysis import curves
from capsnet_jax.workdir import history
from capsnet_jax import validation
from capsnet_jax.workdir import record
from capsnet_jax.errors import ConfigError, WorkdirError
from configs import default
from conftest import ROOT, subprocess_env
from test_train import _restore_state, tiny_config

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
                leaky_variant="reference")
  fields.update(overrides)
  return tiny_config(idx_dir, **fields)


# The three runs go through train_and_evaluate in one fresh process: late in
# the full suite's process, XLA's CPU compiler segfaulted compiling this
# model's predict step (in reconstruction_grid) twice, with and without a
# compilation cache; alone it never did.
_RUNS = """
import json, sys
import ml_collections
from capsnet_jax.workdir import history
from capsnet_jax.training import train
configs, straight, resumed = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
config = lambda i: ml_collections.ConfigDict(configs[i])
train.train_and_evaluate(config(0), straight)
train.train_and_evaluate(config(1), resumed)
stopped = history.read(resumed)
results = train.train_and_evaluate(config(0), resumed)
# Inference of the uninterrupted run's model on 3 blank images.
import numpy as np
from capsnet_jax.inference import trained
model = trained.load(straight)
out = model.predict_stored(np.zeros((3, 28, 28, 1), np.uint8))
out["decoded"] = model.decode(out["class_caps"], out["predictions"])
inference = {k: np.asarray(v).tolist() for k, v in out.items()}
print(json.dumps({"stopped": stopped, "results": results,
                  "inference": inference}))
"""


@pytest.fixture(name="runs", scope="module")
def fixture_runs(idx_dir, tmp_path_factory):
  """An uninterrupted 18-step run and one stopped at step 9 and resumed."""
  straight = str(tmp_path_factory.mktemp("straight"))
  resumed = str(tmp_path_factory.mktemp("resumed"))
  configs = [_config(idx_dir).to_dict(),
             _config(idx_dir, num_train_steps=9).to_dict()]
  env = subprocess_env()
  out = subprocess.run(
      [sys.executable, "-c", _RUNS, json.dumps(configs), straight, resumed],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
      check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  ran = json.loads(out.stdout.splitlines()[-1])
  inference = {k: np.asarray(v) for k, v in ran["inference"].items()}
  return straight, resumed, ran["stopped"], ran["results"], inference


def _alpha_by_step(workdir):
  steps, values = curves.read_scalars(workdir)["alpha"]
  return dict(zip((int(s) for s in steps), (float(v) for v in values)))


def test_every_step_uses_the_annealed_alpha_of_its_epoch(runs):
  straight, resumed, _, _, _ = runs
  a, b = _alpha_by_step(straight), _alpha_by_step(resumed)
  assert sorted(a) == sorted(b) == list(range(1, 19))
  for step in range(1, 19):  # Logged after `step` steps: step - 1's weight.
    expected = ALPHA[(step - 1) // STEPS_PER_EPOCH]
    assert a[step] == pytest.approx(expected, rel=1e-5), step
    assert b[step] == a[step], step


def test_history_records_the_alpha_of_each_evaluation(runs):
  straight, resumed, stopped, _, _ = runs
  assert [(r["step"], r["alpha"]) for r in stopped] == [
      (6, pytest.approx(ALPHA[0], rel=1e-5)),
      (9, pytest.approx(ALPHA[1], rel=1e-5))]
  records = {r["step"]: r for r in history.read(straight)}
  assert sorted(records) == [6, 12, 18]
  for step, epoch in ((6, 0), (12, 1), (18, 2)):
    assert records[step]["alpha"] == pytest.approx(ALPHA[epoch], rel=1e-5)
  again = {r["step"]: r for r in history.read(resumed)}
  assert sorted(again) == [6, 9, 12, 18]
  for step in (6, 12, 18):
    assert again[step]["alpha"] == records[step]["alpha"]
    assert again[step]["test_accuracy"] == pytest.approx(
        records[step]["test_accuracy"])
    # L1 runs record the SSE beside their (SAE) reconstruction loss.
    assert records[step]["test_reconstruction_sse"] > 0
    assert records[step]["test_loss"] == pytest.approx(
        records[step]["test_margin_loss"] + records[step]["alpha"] *
        records[step]["test_reconstruction_loss"], rel=1e-4)


def test_resumed_parameters_equal_uninterrupted(idx_dir, runs):
  straight, resumed, _, _, _ = runs
  a = _restore_state(resumed, _config(idx_dir))
  b = _restore_state(straight, _config(idx_dir))
  assert int(a.step) == int(b.step) == 18
  assert a.params["class_caps"]["W"].shape[1] == 11  # the orphan capsule
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5,
                               atol=1e-6)


def test_trained_model_reports_only_the_real_classes(idx_dir, runs):
  straight, out = runs[0], runs[4]  # trained.load(straight) on blank images
  assert out["lengths"].shape == (3, 10)
  assert out["class_caps"].shape == (3, 10, 16)
  assert set(out["predictions"]) <= set(range(10))
  np.testing.assert_array_equal(out["predictions"],
                                np.argmax(out["lengths"], axis=-1))
  np.testing.assert_allclose(out["decoded"], out["reconstructions"], atol=1e-5)
  # The orphan capsule shapes the model: another variant is refused.
  with pytest.raises(WorkdirError, match="leaky_variant"):
    record.check_compatible(straight, _config(idx_dir, leaky_variant="authors"))


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
  with pytest.raises(ConfigError, match="not model 'efficient_capsnet'"):
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
