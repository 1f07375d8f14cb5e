"""End-to-end tests of train_and_evaluate on a tiny model and synthetic IDX data."""

import glob
import json
import os
import shutil

import jax
import numpy as np
import pytest

from capsnet_jax import checkpoints
from capsnet_jax import train
from configs import default
from conftest import SHARED_MNIST


def tiny_config(idx_dir, **overrides):
  config = default.get_config()
  config.model = "tiny"
  config.idx_dir = str(idx_dir)
  config.batch_size = 32
  config.num_train_steps = 8
  config.log_every_steps = 4
  config.num_summary_images = 2
  config.learning_rate = 3e-3
  config.update(overrides)
  return config


def _restore_params(workdir, config):
  from capsnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  info = input_pipeline.dataset_info(config.dataset, config.data_setup)
  _, state = train.setup_model_and_state(config, info, train.make_mesh())
  ckpt = checkpoints.Checkpointer(workdir, create=False)
  state = ckpt.restore(state)
  ckpt.close()
  return state


@pytest.fixture(name="trained", scope="module")
def fixture_trained(idx_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny_config(idx_dir)
  results = train.train_and_evaluate(config, workdir)
  return workdir, config, results


def test_results_json(trained):
  workdir, _, results = trained
  with open(os.path.join(workdir, "results.json")) as f:
    saved = json.load(f)
  assert saved == pytest.approx(results)
  assert saved["step"] == 8
  for key in ("test_accuracy", "test_margin_loss", "test_reconstruction_loss"):
    assert isinstance(saved[key], float)
  assert 0.0 <= saved["test_accuracy"] <= 1.0
  assert saved["num_params"] == train.count_params(
      _restore_params(workdir, trained[1]).params)


def _scalar_tags(workdir):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  tags = set()
  for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
    acc = event_accumulator.EventAccumulator(path, size_guidance={"tensors": 0})
    acc.Reload()
    tags |= set(acc.Tags()["tensors"]) | set(acc.Tags()["scalars"])
  return tags


def test_tensorboard_scalars(trained):
  tags = _scalar_tags(trained[0])
  for tag in ("train_loss", "train_margin_loss", "train_reconstruction_loss",
              "train_accuracy", "learning_rate", "steps_per_sec",
              "test_accuracy", "test_margin_loss", "test_reconstruction_loss"):
    assert tag in tags, (tag, sorted(tags))


def test_curves_read_back_and_plot(trained, tmp_path):
  from capsnet_jax import curves  # pylint: disable=g-import-not-at-top
  workdir, _, results = trained
  scalars = curves.read_scalars(workdir)
  steps, values = scalars["train_loss"]
  np.testing.assert_array_equal(steps, [4, 8])  # log_every_steps=4
  assert np.all(np.isfinite(values))
  steps, values = scalars["test_accuracy"]
  assert steps[-1] == 8
  assert values[-1] == pytest.approx(results["test_accuracy"], abs=1e-6)
  out = str(tmp_path / "curves.png")
  assert curves.main([f"tiny={workdir}", f"--out={out}"]) == 0
  from PIL import Image  # pylint: disable=g-import-not-at-top
  assert Image.open(out).size[0] > 500
  assert curves.main([str(tmp_path), f"--out={out}x"]) == 1  # no events


def test_eval_mode_reproduces_final_metrics(trained):
  workdir, config, results = trained
  evaluated = train.evaluate_checkpoint(config, workdir)
  assert evaluated["step"] == 8
  assert evaluated["test_accuracy"] == pytest.approx(results["test_accuracy"])
  assert evaluated["test_reconstruction_loss"] == pytest.approx(
      results["test_reconstruction_loss"], rel=1e-5)


def test_resume_continues_exactly(idx_dir, trained, tmp_path):
  workdir, config, _ = trained
  # A copy of the 8-step run, rerun with more steps: resumes at 8, ends at 12.
  resumed_dir = str(tmp_path / "resumed")
  shutil.copytree(workdir, resumed_dir)
  train.train_and_evaluate(tiny_config(idx_dir, num_train_steps=12), resumed_dir)
  straight_dir = str(tmp_path / "straight")
  train.train_and_evaluate(tiny_config(idx_dir, num_train_steps=12), straight_dir)
  a = _restore_params(resumed_dir, config)
  b = _restore_params(straight_dir, config)
  assert int(a.step) == int(b.step) == 12
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="no ../shared/data/mnist")
def test_short_run_on_real_mnist(tmp_path):
  """60 steps of the tiny model on the real digits: far above chance on the
  full 10,000-image test set, evaluated exactly once per example."""
  config = tiny_config(SHARED_MNIST, num_train_steps=60, eval_batch_size=512)
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results["step"] == 60
  assert results["test_accuracy"] > 0.6, results
  assert results["test_reconstruction_loss"] < 150


@pytest.mark.parametrize("setup,kind,expected", [
    # step -> learning rate, hand-computed: 1e-3 * 0.96 ** (step / 2000).
    ("paper", "auto", {0: 1e-3, 1000: 1e-3 * 0.96 ** 0.5, 2000: 9.6e-4,
                       5000: 1e-3 * 0.96 ** 2.5}),
    ("reference", "auto", {0: 1e-3, 1000: 1e-3, 50000: 1e-3}),
    ("reference", "staircase", {1999: 1e-3, 2000: 9.6e-4, 5000: 9.216e-4}),
    ("paper", "constant", {0: 1e-3, 9000: 1e-3}),
])
def test_learning_rate_schedules(setup, kind, expected):
  config = default.get_config()
  config.data_setup, config.lr_schedule = setup, kind
  schedule = train.learning_rate_schedule(config)
  for step, lr in expected.items():
    assert float(schedule(step)) == pytest.approx(lr, rel=1e-6), step
