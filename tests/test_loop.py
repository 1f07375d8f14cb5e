"""The training loop end to end (capsnet_jax.training.loop with its steps,
state and schedules) on the tiny model: what a run writes, --mode=eval,
epochs, an exact resume with batch norm, and a short run on the real MNIST.
(The learning rate and alpha schedules by hand: test_schedules.py; resume
after SIGKILL and preemption: test_reliability.py.)"""

import json

import jax
import numpy as np
import pytest

from capsnet_jax.training import loop
from capsnet_jax.workdir import checkpoints
from capsnet_jax.workdir import history
from capsnet_jax.workdir import metric_logging
import conftest




def _event_tags(workdir) -> set[str]:
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  tags = set()
  for path in workdir.glob("events.out.tfevents.*"):
    acc = event_accumulator.EventAccumulator(
        str(path), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    tags |= set(acc.Tags()["tensors"]) | set(acc.Tags()["scalars"])
  return tags


def test_results_of_the_tiny_run(tiny_run):
  saved = json.loads((tiny_run.workdir / "results.json").read_text())
  assert saved == tiny_run.results
  # 231 training digits (25 held out) in batches of 32: 7 steps an epoch,
  # evaluated at its end and at the last step.
  assert saved["step"] == 8 and saved["epoch"] == pytest.approx(8 / 7, abs=1e-4)
  assert (saved["num_train"], saved["num_validation"]) == (231, 25)
  assert saved["num_evaluations"] == 2
  # It learns the synthetic digits: 100% test accuracy at step 8 (2-core
  # Intel Xeon), chance is 10%.
  assert saved["test_accuracy"] >= 0.97, saved
  assert saved["best_test_accuracy"] >= saved["test_accuracy"]
  assert saved["test_margin_loss"] < 0.2, saved  # 0.131 measured
  # The tiny model, by hand: conv1 8 filters 9x9x1: 9*9*1*8 + 8 = 656;
  # primary capsules 4 types x 8D = 32 channels 9x9x8: 9*9*8*32 + 32 =
  # 20,768; 6x6x4 = 144 capsules, class capsules W 144x10x16x8 + bias 10x16:
  # 184,320 + 160 = 184,480; FC decoder 160 -> 16 -> 32 -> 784:
  # 160*16+16 + 16*32+32 + 32*784+784 = 28,992. In all 234,896.
  assert saved["num_params"] == 234_896
  assert (saved["devices"], saved["processes"]) == (1, 1)


def test_history_records_each_evaluation(tiny_run):
  records = history.read(str(tiny_run.workdir))
  assert [(r["step"], r["source"]) for r in records] == [(7, "train"),
                                                         (8, "train")]
  last = records[-1]
  assert last["test_accuracy"] == tiny_run.results["test_accuracy"]
  assert last["test_margin_loss"] == tiny_run.results["test_margin_loss"]
  # The reconstruction weight and loss combine into the recorded loss.
  assert last["test_loss"] == pytest.approx(
      last["test_margin_loss"] + last["alpha"] *
      last["test_reconstruction_loss"], rel=1e-5)
  assert last["alpha"] == pytest.approx(0.0005)
  # 25 held-out synthetic digits, all right (2-core Intel Xeon: 1.0, as the
  # test split's 100).
  assert last["validation_accuracy"] >= 0.96
  assert last["learning_rate"] == pytest.approx(3e-3)  # constant: reference


def test_tensorboard_tags_are_grouped_by_split(tiny_run):
  tags = _event_tags(tiny_run.workdir)
  for tag in ("train/loss", "train/margin_loss", "train/reconstruction_loss",
              "train/accuracy", "train/learning_rate", "train/alpha",
              "test/accuracy", "test/margin_loss", "test/reconstruction_loss",
              "test/reconstruction_std", "validation/accuracy"):
    assert tag in tags, (tag, sorted(tags))
  assert not {t for t in tags if t.startswith(("train_", "test_"))}, tags


def test_curves_of_the_run_from_the_event_files(tiny_run):
  from capsnet_jax.analysis import curves  # pylint: disable=g-import-not-at-top
  scalars = curves.from_events(str(tiny_run.workdir))
  steps, values = scalars["train_loss"]
  np.testing.assert_array_equal(steps, [4, 8])  # log_every_steps=4
  assert np.all(np.isfinite(values)) and values[1] < values[0], values
  steps, values = scalars["test_accuracy"]
  np.testing.assert_array_equal(steps, [7, 8])
  assert values[-1] == pytest.approx(tiny_run.results["test_accuracy"],
                                     abs=1e-7)
  assert metric_logging.tag("test_accuracy") == "test/accuracy"


def test_eval_mode_reproduces_the_final_metrics(tiny_run, tmp_path):
  workdir = str(tiny_run.copy(tmp_path / "w"))
  evaluated = loop.evaluate_checkpoint(tiny_run.config, workdir)
  # The same state, data and compiled step as training's last evaluation.
  for key in ("step", "test_accuracy", "test_margin_loss",
              "test_reconstruction_loss", "best_test_accuracy", "best_step"):
    assert evaluated[key] == tiny_run.results[key], key
  records = history.read(workdir)
  assert [(r["step"], r["source"]) for r in records] == [
      (7, "train"), (8, "train"), (8, "eval")]
  # Only training evaluations count as the run's.
  assert evaluated["num_evaluations"] == 2


@pytest.fixture(name="epoch_runs", scope="module")
def fixture_epoch_runs(idx_dir, tmp_path_factory):
  """The tiny model for 2 epochs of the 256 digits (no hold-out, batch 32:
  8 steps an epoch), straight, and stopped after one epoch then rerun with
  2. (The same compiled steps as tiny_run's; batch norm's statistics
  through a resume: test_tricks.py.)"""
  def config(epochs):
    return conftest.tiny_config(idx_dir, num_train_steps=-1,
                                num_epochs=epochs, validation_fraction=0.0)
  straight = tmp_path_factory.mktemp("straight")
  results = loop.train_and_evaluate(config(2), str(straight))
  resumed = tmp_path_factory.mktemp("resumed")
  first = loop.train_and_evaluate(config(1), str(resumed))
  again = loop.train_and_evaluate(config(2), str(resumed))
  return config(2), straight, results, resumed, first, again


def test_num_epochs_sets_the_length(epoch_runs):
  _, straight, results, _, first, _ = epoch_runs
  assert (first["step"], first["epoch"]) == (8, 1.0)
  assert (results["step"], results["epoch"]) == (16, 2.0)
  assert (results["num_train"], results["num_validation"]) == (256, 0)
  assert [r["step"] for r in history.read(str(straight))] == [8, 16]
  assert checkpoints.latest_step(str(straight)) == 16
  # 100% test accuracy at steps 8 and 16 (2-core Intel Xeon).
  assert first["test_accuracy"] >= 0.97, first
  assert results["test_accuracy"] >= 0.97, results


def test_resume_continues_exactly(epoch_runs):
  config, straight, results, resumed, first, again = epoch_runs
  a = conftest.restore_state(resumed, config)
  b = conftest.restore_state(straight, config)
  assert int(a.step) == int(b.step) == 16
  conftest.assert_states_equal(a, b)
  # The stopped run's state differs (a resume that restarted from scratch
  # or skipped the first epoch would not match the straight run).
  assert first["test_margin_loss"] != results["test_margin_loss"]
  for key in ("test_accuracy", "test_margin_loss", "test_reconstruction_loss",
              "best_test_accuracy", "best_step"):
    assert again[key] == results[key], key
  # The resumed run's history holds each evaluation once, equal to the
  # straight run's.
  pairs = zip(history.read(str(resumed)), history.read(str(straight)))
  for r, s in pairs:
    assert (r["step"], r["test_margin_loss"]) == (s["step"],
                                                  s["test_margin_loss"])
  assert len(history.read(str(resumed))) == 2


def test_the_best_checkpoint_is_kept_whatever_the_checkpoint_interval(
    idx_dir, tmp_path):
  """Evaluations at steps 3 and 6, checkpoints every 4 steps: the first
  evaluation (a new best) is saved too, with its accuracy, so the best
  checkpoint exists and is the step results.json names. (And
  num_summary_images=0: evaluations without reconstruction images.)"""
  config = conftest.tiny_config(idx_dir, num_train_steps=6, eval_every_steps=3,
                                checkpoint_every_steps=4,
                                validation_fraction=0.0, num_summary_images=0)
  results = loop.train_and_evaluate(config, str(tmp_path))
  ckpt = checkpoints.Checkpointer(str(tmp_path), create=False)
  try:
    assert ckpt.all_steps() == [3, 4, 6]
    assert ckpt.best_step() == results["best_step"]
  finally:
    ckpt.close()


def test_short_run_on_real_mnist(tmp_path):
  """60 steps of the tiny model on the real digits, evaluated over the
  10,000 test images exactly once each."""
  config = conftest.tiny_config(conftest.shared_mnist(), num_train_steps=60,
                                log_every_steps=60, validation_fraction=0.0)
  results = loop.train_and_evaluate(config, str(tmp_path))
  assert results["step"] == 60 and results["num_train"] == 60_000
  # Measured (2-core Intel Xeon): test accuracy 86.02%, margin loss 0.1465,
  # reconstruction SSE 55.0 (about a constant image's: alpha = 0.0005 has
  # barely moved the decoder in 60 steps).
  assert results["test_accuracy"] >= 0.83, results
  assert results["test_margin_loss"] < 0.16, results
  assert results["test_reconstruction_loss"] < 60, results


def test_evaluation_also_measures_the_authors_true_label_sse(tiny_run):
  """reconstruction_sse_true_label decodes the TRUE label's capsule (the
  authors' test-time SSE); reconstruction_loss the predicted class's. On a
  batch whose every label is wrong the two differ, and the true-label sum is
  the SSE of decoding the given labels' capsules against the [0, 1] image
  (the reference's min-max target of these digits, which hold 0 and 255)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from capsnet_jax import experiment  # pylint: disable=g-import-not-at-top
  from capsnet_jax.training import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from capsnet_jax.training import steps as steps_lib  # pylint: disable=g-import-not-at-top
  exp = experiment.resolve(tiny_run.config)
  state = conftest.restore_state(tiny_run.workdir, tiny_run.config)
  steps = steps_lib.Steps(exp, mesh_lib.make_mesh(), 8)
  images, labels = conftest.synthetic_digits(32, seed=5)
  wrong = ((labels.astype(np.int32) + 3) % 10)
  batch = {"image": images[..., None], "label": wrong,
           "mask": np.ones(32, np.float32)}
  sums = jax.device_get(steps.eval(state, mesh_lib.global_batch(
      batch, steps.sharded)))
  variables = steps_lib.model_variables(state)
  x = steps.preprocess_eval(jnp.asarray(images[..., None]), jax.random.key(0))
  out = exp.model.apply(variables, x, train=False)
  assert np.mean(np.asarray(out["predictions"]) == wrong) == 0.0
  recon = exp.model.apply(variables, out["class_caps"], jnp.asarray(wrong),
                          method="decode")
  want = np.sum((np.asarray(recon, np.float64)
                 - images[..., None] / 255.0) ** 2)
  predicted = exp.model.apply(variables, out["class_caps"],
                              out["predictions"], method="decode")
  want_predicted = np.sum((np.asarray(predicted, np.float64)
                           - images[..., None] / 255.0) ** 2)
  # The 8-step decoder tells the classes apart by 0.8% of the SSE here,
  # 80x the float32 tolerance.
  assert abs(want - want_predicted) > 0.005 * want
  assert float(sums["reconstruction_sse_true_label"]) == pytest.approx(
      want, rel=1e-4)
  assert float(sums["reconstruction_loss"]) == pytest.approx(want_predicted,
                                                             rel=1e-4)
  last = history.read(str(tiny_run.workdir))[-1]
  # All 100 test digits right: the true label's capsule is the predicted one.
  assert last["test_accuracy"] == 1.0
  assert last["test_reconstruction_sse_true_label"] == pytest.approx(
      last["test_reconstruction_loss"], rel=1e-5)
