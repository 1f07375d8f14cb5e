"""End-to-end tests of train_and_evaluate on a tiny model and synthetic IDX data."""

import glob
import json
import os

import jax
import numpy as np
import pytest

from capsnet_jax.workdir import checkpoints
from capsnet_jax.training import train
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


def _restore_state(workdir, config):
  """The latest checkpoint, restored into the state's shapes (nothing is
  initialised or compiled)."""
  from capsnet_jax.model import models  # pylint: disable=g-import-not-at-top
  from capsnet_jax.inference import trained  # pylint: disable=g-import-not-at-top
  mesh = train.make_mesh()
  model = models.create_model(config, (28, 28, 1), 10)
  ckpt = checkpoints.Checkpointer(workdir, create=False)
  state = ckpt.restore(trained.abstract_state(config, model, mesh))
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
  # The tiny model, by hand: conv1 8 filters 9x9x1: 9*9*1*8 + 8 = 656;
  # primary capsules 4 types x 8D = 32 channels 9x9x8: 9*9*8*32 + 32 =
  # 20,768; 6x6x4 = 144 capsules, class capsules W 144x10x16x8 + bias 10x16:
  # 184,320 + 160 = 184,480; FC decoder 160 -> 16 -> 32 -> 784:
  # 160*16+16 + 16*32+32 + 32*784+784 = 28,992. In all 234,896.
  assert saved["num_params"] == 234_896


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


def test_tensorboard_curves_of_the_run(trained):
  from capsnet_jax.analysis import curves  # pylint: disable=g-import-not-at-top
  workdir, _, results = trained
  scalars = curves.read_scalars(workdir)
  steps, values = scalars["train_loss"]
  np.testing.assert_array_equal(steps, [4, 8])  # log_every_steps=4
  assert np.all(np.isfinite(values))
  steps, values = scalars["test_accuracy"]
  assert steps[-1] == 8
  assert values[-1] == pytest.approx(results["test_accuracy"], abs=1e-6)


def test_eval_mode_reproduces_final_metrics(trained):
  workdir, config, results = trained
  evaluated = train.evaluate_checkpoint(config, workdir)
  assert evaluated["step"] == 8
  assert evaluated["test_accuracy"] == pytest.approx(results["test_accuracy"])
  assert evaluated["test_reconstruction_loss"] == pytest.approx(
      results["test_reconstruction_loss"], rel=1e-5)


@pytest.fixture(name="bn_runs", scope="module")
def fixture_bn_runs(idx_dir, tmp_path_factory):
  """The tiny model with batch norm for 2 epochs of the 256 images (no
  hold-out, batch 32: 8 steps an epoch), straight, and stopped after one
  epoch then rerun with 2. The default convolutions (47 s; 55 s with XLA's
  at the suite's optimisation level 0)."""
  def config(epochs):
    return tiny_config(idx_dir, batch_norm=True, num_train_steps=-1,
                       num_epochs=epochs, validation_fraction=0.0)
  straight = str(tmp_path_factory.mktemp("bn_straight"))
  results = train.train_and_evaluate(config(2), straight)
  resumed = str(tmp_path_factory.mktemp("bn_resumed"))
  first = train.train_and_evaluate(config(1), resumed)
  train.train_and_evaluate(config(2), resumed)
  return config(2), straight, results, resumed, first


def test_num_epochs_sets_the_length(bn_runs):
  config, straight, results, _, first = bn_runs
  assert first["step"] == 8 and first["epoch"] == 1.0
  assert results["step"] == 16 and results["epoch"] == 2.0
  with open(os.path.join(straight, "eval_history.jsonl")) as f:
    assert [json.loads(l)["step"] for l in f] == [8, 16]  # once per epoch
  assert int(_restore_state(straight, config).step) == 16


def test_resume_with_batch_norm_continues_exactly(bn_runs):
  config, straight, _, resumed, _ = bn_runs
  a, b = _restore_state(resumed, config), _restore_state(straight, config)
  assert int(a.step) == int(b.step) == 16
  stats = jax.tree.leaves(a.batch_stats)
  assert len(stats) == 8  # mean and var of conv1, primary and 2 decoder BNs
  for x in stats:  # trained, no longer the initial zeros (mean) or ones (var)
    assert not (np.allclose(x, 0.0) or np.allclose(x, 1.0))
  for tree in ("params", "batch_stats"):
    pairs = zip(jax.tree.leaves(getattr(a, tree)),
                jax.tree.leaves(getattr(b, tree)))
    for x, y in pairs:
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5,
                                 atol=1e-6, err_msg=tree)


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
