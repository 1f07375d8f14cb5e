"""The baseline CNNs (capsnet_jax/model/cnn.py): the paper's parameter count
(counted without compiling), the loss, the tiny variant's contract, and the
tiny CNN through the real loop on real MNIST: train, resume, evaluate,
predict, report; the capsule-only modes refuse it."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from capsnet_jax import experiment
from capsnet_jax import validation
from capsnet_jax.analysis import report
from capsnet_jax.analysis import summary
from capsnet_jax.errors import ConfigError
from capsnet_jax.inference import trained
from capsnet_jax.model import cnn
from capsnet_jax.model import models
from capsnet_jax.training import losses
from capsnet_jax.workdir import history
from configs import mnist_cnn
import conftest


def test_the_paper_baseline_has_35_445_522_parameters(capsys):
  """Counted on shapes alone (jax.eval_shape: nothing compiled), layer by
  layer as ../shared/REFERENCE.md derives them: 5x5 kernels, SAME padding,
  no pooling, so the flattened 28x28x128 map feeds FC 328."""
  exp = experiment.resolve(mnist_cnn.get_config(), "summary")
  assert isinstance(exp.model, cnn.CNN) and not exp.capsules
  _, variables = summary.parameter_shapes(exp)
  counts = summary.summarize(variables["params"])
  assert {k: counts[f"{k}_params"] for k in
          ("conv0", "conv1", "conv2", "dense0", "dense1", "out")} == dict(
              conv0=5 * 5 * 1 * 256 + 256,           # 6,656
              conv1=5 * 5 * 256 * 256 + 256,         # 1,638,656
              conv2=5 * 5 * 256 * 128 + 128,         # 819,328
              dense0=28 * 28 * 128 * 328 + 328,      # 32,915,784
              dense1=328 * 192 + 192,                # 63,168
              out=192 * 10 + 10)                     # 1,930
  assert counts["total_params"] == 35_445_522
  # --mode=summary's JSON line: no decoder, batch norm or orphan capsule.
  line = summary.print_summary(mnist_cnn.get_config())
  last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert last == line
  assert (last["total_params"], last["non_trainable_params"],
          last["model"]) == (35_445_522, 0, "cnn")
  assert last["decoder"] is None and last["batch_norm"] is None


def test_the_max_pool_baseline_count():
  """The authors' conv_model.py with dropout on a 40x40 canvas: two 2x2
  poolings leave 10x10x256 for FC 1024."""
  model = models.create("cnn_maxpool", num_classes=10,
                        image_shape=(40, 40, 1))
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 40, 40, 1))))["params"]
  total = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))
  assert total == ((5 * 5 * 512 + 512) + (5 * 5 * 512 * 256 + 256) +
                   (10 * 10 * 256 * 1024 + 1024) + (1024 * 10 + 10))
  assert total == 29_516_042


def test_cross_entropy_by_hand():
  logits = jnp.array([[0.0, 0.0], [math.log(3.0), 0.0], [1.0, -1.0]])
  labels = jnp.array([1, 1, 0])
  np.testing.assert_allclose(
      losses.cross_entropy(logits, labels),
      [math.log(2.0), math.log(4.0), math.log(1.0 + math.exp(-2.0))],
      rtol=1e-5)


def test_tiny_cnn_contract():
  """Outputs every family shares (predictions, scores) plus logits;
  dropout only in training, and then driven by the "dropout" rng."""
  model = models.create("cnn_tiny")
  images = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))
  variables = model.init(jax.random.key(0), images)
  out = model.apply(variables, images)
  assert out["logits"].shape == out["scores"].shape == (3, 10)
  np.testing.assert_allclose(np.sum(out["scores"], -1), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(out["predictions"],
                                np.argmax(out["logits"], -1))
  np.testing.assert_allclose(out["scores"],
                             jax.nn.softmax(out["logits"]), rtol=1e-6)
  again = model.apply(variables, images, train=False)
  np.testing.assert_array_equal(out["logits"], again["logits"])
  a = model.apply(variables, images, train=True,
                  rngs={"dropout": jax.random.key(1)})
  b = model.apply(variables, images, train=True,
                  rngs={"dropout": jax.random.key(2)})
  assert not np.allclose(a["logits"], b["logits"])
  assert not np.allclose(a["logits"], out["logits"])
  assert not models.has_capsules(model) and not models.has_capsules("cnn")
  assert models.has_capsules("tiny") and models.has_capsules("efficient_tiny")


@pytest.mark.parametrize("mode", ["explore", "visualize"])
def test_capsule_modes_refuse_the_cnn(mode):
  config = mnist_cnn.get_config()
  with pytest.raises(ConfigError, match=f"--mode={mode} .* baseline CNN"):
    validation.validate_config(config, mode)
  validation.validate_config(config, "predict")  # the others take it


def test_the_command_refuses_the_capsule_figures_in_one_line(tmp_path):
  proc = conftest.run_main("--config=configs/mnist_cnn.py",
                           f"--workdir={tmp_path / 'w'}", "--mode=visualize",
                           expect=2)
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert errors == [
      "error: --mode=visualize shows capsules and reconstructions, and model "
      "'cnn' is a baseline CNN without either (the other modes take it)"]
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "w").exists()


def _tiny_cnn_config(idx_dir, steps: int):
  config = mnist_cnn.get_config()
  config.update(model="cnn_tiny", idx_dir=str(idx_dir), batch_size=32,
                eval_batch_size=1000, num_train_steps=steps,
                log_every_steps=10, eval_every_steps=steps // 2,
                learning_rate=3e-3)
  return config


def test_tiny_cnn_trains_resumes_evaluates_and_predicts(tmp_path, capsys):
  """On real MNIST through train_and_evaluate: 40 steps in two halves of a
  resumed run equal 40 uninterrupted steps bit for bit; the history and
  results hold accuracy and the cross-entropy, and no capsule metric."""
  from capsnet_jax import cli  # pylint: disable=g-import-not-at-top
  from capsnet_jax.analysis import curves  # pylint: disable=g-import-not-at-top
  from capsnet_jax.data import idx  # pylint: disable=g-import-not-at-top
  from capsnet_jax.training import loop  # pylint: disable=g-import-not-at-top
  mnist = conftest.shared_mnist()
  whole, halves = tmp_path / "whole", tmp_path / "halves"
  results = loop.train_and_evaluate(_tiny_cnn_config(mnist, 40), str(whole))
  loop.train_and_evaluate(_tiny_cnn_config(mnist, 20), str(halves))
  resumed = loop.train_and_evaluate(_tiny_cnn_config(mnist, 40), str(halves))
  conftest.assert_states_equal(
      conftest.restore_state(whole, _tiny_cnn_config(mnist, 40)),
      conftest.restore_state(halves, _tiny_cnn_config(mnist, 40)))
  assert resumed["test_accuracy"] == results["test_accuracy"]
  # 1,280 training digits, seen once: well above chance (10%) on the 10,000
  # test digits (32.94% measured, 2-core Intel Xeon).
  assert results["step"] == 40 and results["test_accuracy"] > 0.25, results
  # conv 104 + 404 + 202, dense 1,568 * 16 + 16 = 25,104, 16 * 12 + 12 =
  # 204, out 12 * 10 + 10 = 130.
  assert results["num_params"] == 26_148
  assert "test_margin_loss" not in results
  assert "test_reconstruction_loss" not in results
  records = history.read(str(whole))
  assert [r["step"] for r in records] == [20, 40]
  for r in records:
    assert r["test_loss"] > 0 and 0 < r["test_accuracy"] <= 1
    assert not [k for k in r if "margin" in k or "reconstruction" in k
                or k == "alpha"], r
  assert records[-1]["test_loss"] < records[0]["test_loss"]
  steps, train_loss = curves.from_events(str(whole))["train_loss"]
  np.testing.assert_array_equal(steps, [10, 20, 30, 40])
  assert train_loss[-1] < train_loss[0], train_loss
  assert "train_margin_loss" not in curves.from_events(str(whole))

  # --mode=eval appends an evaluation of the same checkpoint: the same numbers.
  evaluated = loop.evaluate_checkpoint(_tiny_cnn_config(mnist, 40),
                                       str(whole))
  assert evaluated["test_accuracy"] == results["test_accuracy"]
  assert history.read(str(whole))[-1]["source"] == "eval"

  # capsnet_jax.load(...).predict: scores (softmax) and predictions only.
  images, labels = idx.load_mnist_idx(str(mnist), "test")
  m = trained.load(str(whole))
  assert not m.has_decoder and m.predict_keys == ("scores", "predictions")
  out = m.predict(images[:8])
  assert out.keys() == ("predictions", "scores")
  assert out.scores.shape == (8, 10)
  np.testing.assert_allclose(out.scores.sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(out.predictions, out.scores.argmax(-1))
  predictions, scores = m.classify(images[:8])
  np.testing.assert_array_equal(predictions, out.predictions)
  np.testing.assert_array_equal(scores, out.scores)
  predictions, _ = m.classify(m.preprocess(images[:8]), preprocessed=True)
  np.testing.assert_array_equal(predictions, out.predictions)
  # The test accuracy of the whole split, from the predictions.
  all_predictions, _ = m.classify(images)
  assert np.mean(all_predictions == labels) == pytest.approx(
      results["test_accuracy"], abs=1e-6)
  with pytest.raises(ValueError, match="baseline CNN"):
    m.predict(images[:1], ("lengths",))
  with pytest.raises(ValueError, match="no decoder"):
    m.decode(np.zeros((1, 10, 16), np.float32), [0])

  # --mode=predict on an image file: the JSON line has the CNN's softmax.
  capsys.readouterr()
  status = cli.run("predict", _tiny_cnn_config(mnist, 40), str(whole),
                   images=[str(conftest.ROOT / "docs" / "examples" /
                               "mnist_test0_label7.png")])
  assert status == 0
  line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert "capsule_lengths" not in line
  assert len(line["class_probabilities"]) == 10
  assert sum(line["class_probabilities"]) == pytest.approx(1.0, abs=1e-4)
  assert line["prediction"] == int(np.argmax(line["class_probabilities"]))
  assert line["prediction"] == int(predictions[0])  # the same test digit

  # The report: the CNN's row has its accuracy and no capsule losses.
  table = report.summary_table({"cnn": str(whole)})
  row = table.splitlines()[-1]
  assert row.startswith("| cnn | 0.02 |")  # 40 of 1,875 steps an epoch
  assert f"{100 * results['test_accuracy']:.2f}%" in row
  cells = [c.strip() for c in row.split("|")]
  assert cells[6:8] == ["n/a", "n/a"]  # RLoss (SSE), MLoss
  epochs = report.epochs_table(str(whole)).splitlines()
  assert len(epochs) == 4
  assert [c.strip() for c in epochs[-1].split("|")][3:5] == ["n/a", "n/a"]
