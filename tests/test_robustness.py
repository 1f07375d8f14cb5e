"""--mode=robustness (capsnet_jax.analysis.robustness) and the report's
robustness table: the JSON lines, what the model is given, the mode end to
end on the session's tiny run and on the bundled weights."""

import json
import types

import numpy as np
import pytest

from conftest import run_main, shared_mnist, snapshot
from capsnet_jax.analysis import report
from capsnet_jax.analysis import robustness
from capsnet_jax.data import affine
from capsnet_jax.errors import WorkdirError

ROTATIONS = [-90, -75, -60, -45, -30, -15, 0, 15, 30, 45, 60, 75, 90]


def test_record_and_its_json_line():
  r = robustness.record("rotation", 15.0, [1, 2, 3, 4], [1, 2, 0, 4])
  assert r == {"transform": "rotation", "value": 15, "accuracy": 0.75, "n": 4}
  assert robustness.line(r) == (
      '{"transform": "rotation", "value": 15, "accuracy": 0.75, "n": 4}')
  r = robustness.record("shear", 0.3, [0, 0], [0, 1])
  assert robustness.line(r) == (
      '{"transform": "shear", "value": 0.3, "accuracy": 0.5, "n": 2}')
  r = robustness.record("affnist", None, [5], [5])
  assert robustness.line(r) == (
      '{"transform": "affnist", "value": null, "accuracy": 1.0, "n": 1}')


def test_settings_cover_the_interface():
  got = robustness.settings()
  assert [v for t, v in got if t == "rotation"] == ROTATIONS
  for transform in ("shear", "scale", "translation"):
    assert len([v for t, v in got if t == transform]) >= 5, transform
  assert got[-1] == ("affnist", None)


class _FakeModel:
  """What measure uses of a TrainedModel: info.stored_shape and predict;
  it records the images it is given and predicts class 0 for all."""

  def __init__(self, size: int):
    self.info = types.SimpleNamespace(stored_shape=(size, size, 1))
    self.seen = []

  def predict(self, images, keys):
    assert tuple(keys) == ("predictions",)
    self.seen.append(np.asarray(images))
    return types.SimpleNamespace(predictions=np.zeros(len(images), np.int64))


def _images(n=3):
  x = np.random.default_rng(0).integers(0, 256, (n, 28, 28, 1), np.uint8)
  return x, np.array([0, 0, 3])[:n]


def test_measure_gives_each_setting_to_the_model_once():
  x, labels = _images()
  aff = (np.random.default_rng(1).integers(0, 256, (4, 40, 40), np.uint8),
         np.array([0, 1, 1, 1]))
  model, emitted = _FakeModel(28), []
  records = robustness.measure(model, x, labels, aff, emit=emitted.append)
  assert records == emitted
  assert [(r["transform"], r["value"]) for r in records] == (
      robustness.settings())
  assert len(model.seen) == len(records)
  sweeps = [r for r in records if r["transform"] != "affnist"]
  assert all(r["accuracy"] == 2 / 3 and r["n"] == 3 for r in sweeps)
  assert records[-1]["accuracy"] == 0.25 and records[-1]["n"] == 4
  # Rotation 90: np.rot90 of each image; rotation 0: the images themselves.
  np.testing.assert_array_equal(model.seen[ROTATIONS.index(90)],
                                np.rot90(x, 1, axes=(1, 2)))
  np.testing.assert_array_equal(model.seen[ROTATIONS.index(0)], x)
  # The 40x40 affNIST set reaches a 28x28 model as its central 28x28.
  np.testing.assert_array_equal(model.seen[-1][..., 0], aff[0][:, 6:34, 6:34])


def test_measure_centres_mnist_in_a_40x40_model_input():
  x, labels = _images()
  aff = (np.zeros((2, 40, 40), np.uint8), np.array([0, 0]))
  model = _FakeModel(40)
  robustness.measure(model, x, labels, aff)
  clean = model.seen[ROTATIONS.index(0)]
  assert clean.shape == (3, 40, 40, 1)
  np.testing.assert_array_equal(clean[:, 6:34, 6:34], x)
  assert clean.astype(np.int64).sum() == x.astype(np.int64).sum()
  # Translations move the padded digit: 2 px right and 2 px down.
  moved = model.seen[len(ROTATIONS) + len(robustness.SWEEPS["shear"]) +
                     len(robustness.SWEEPS["scale"])]
  np.testing.assert_array_equal(moved[:, 8:36, 8:36], x)
  assert moved.shape == (3, 40, 40, 1)
  assert model.seen[-1].shape == (2, 40, 40, 1)  # as is


def _write_affnist_mat(folder, n: int) -> None:
  sio = pytest.importorskip("scipy.io")
  images = np.zeros((n, 40, 40), np.uint8)
  images[:, 14:26, 14:26] = 255
  sio.savemat(str(folder / "test.mat"), {"affNISTdata": {
      "image": images.reshape(n, 1600).T,
      "label_int": (np.arange(n) % 10).reshape(1, n).astype(np.uint8)}})


def test_the_mode_on_a_trained_workdir(tiny_run, tmp_path):
  """The tiny run: a line per setting on stdout, the same lines in
  WORKDIR/figures/robustness.json, the figure; rotation 0 is the clean test
  set (the training loop's own evaluation: 100%); --config.affnist_dir
  reads the real files' layout."""
  workdir = tiny_run.copy(tmp_path / "run")
  aff = tmp_path / "affnist"
  aff.mkdir()
  _write_affnist_mat(aff, 7)
  proc = run_main("--config=configs/mnist.py:reference", f"--workdir={workdir}",
                  f"--config.idx_dir={tiny_run.config.idx_dir}",
                  f"--config.affnist_dir={aff}", "--mode=robustness")
  lines = proc.stdout.splitlines()
  records = [json.loads(l) for l in lines]
  assert [list(r) for r in records] == [
      ["transform", "value", "accuracy", "n"]] * len(records)
  assert [(r["transform"], r["value"]) for r in records] == [
      tuple(s) for s in robustness.settings()]
  assert [r["value"] for r in records if r["transform"] == "rotation"] == (
      ROTATIONS)
  assert tiny_run.results["test_accuracy"] == 1.0
  clean = next(r for r in records if r["transform"] == "rotation"
               and r["value"] == 0)
  assert clean == {"transform": "rotation", "value": 0, "accuracy": 1.0,
                   "n": 100}
  assert all(r["n"] == 100 for r in records if r["transform"] != "affnist")
  assert records[-1]["transform"] == "affnist" and records[-1]["n"] == 7
  assert all(0.0 <= r["accuracy"] <= 1.0 for r in records)
  # The synthetic classes are block positions: a half turn moves them.
  half = next(r for r in records if r["value"] == 90)
  assert half["accuracy"] < 0.5
  figures = workdir / "figures"
  assert (figures / "robustness.json").read_text().splitlines() == lines
  assert (figures / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  # A file where --out should be a folder: one line, exit status 2.
  (tmp_path / "file").write_text("x")
  bad = run_main("--config=configs/mnist.py:reference", f"--workdir={workdir}",
                 "--mode=robustness", f"--out={tmp_path / 'file'}", expect=2)
  assert "is a file, not a folder" in bad.stderr


def test_the_mode_on_bundled_weights_prints_and_writes_nothing(tmp_path):
  """Bundled weights without --out: the lines on stdout, the bundle's folder
  untouched (the generated affNIST-style set: 4 images as asked)."""
  from capsnet_jax.inference import bundled  # pylint: disable=g-import-not-at-top
  mnist = shared_mnist()
  folder = bundled.resolve("bundled:mnist_efficient")
  before = snapshot(folder)
  proc = run_main("--config=configs/mnist_efficient.py",
                  "--workdir=bundled:mnist_efficient", "--mode=robustness",
                  f"--config.idx_dir={mnist}",
                  "--config.robustness_examples=4")
  records = [json.loads(l) for l in proc.stdout.splitlines()]
  assert len(records) == len(robustness.settings())
  assert all(r["n"] == 4 for r in records)
  # The first four MNIST test digits (7, 2, 1, 0) are clean and right.
  assert records[ROTATIONS.index(0)]["accuracy"] == 1.0
  assert snapshot(folder) == before


# --------------------------------------------------------------------------
# The report's robustness table, from files written here.


def _write(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_report_robustness_table(tmp_path):
  caps = tmp_path / "caps" / "figures"
  caps.mkdir(parents=True)
  _write(caps / "robustness.json", [
      {"transform": "rotation", "value": -15, "accuracy": 0.98, "n": 200},
      {"transform": "rotation", "value": 0, "accuracy": 0.995, "n": 200},
      {"transform": "shear", "value": 0.5, "accuracy": 0.9, "n": 200},
      {"transform": "translation", "value": 4, "accuracy": 0.5, "n": 200},
      {"transform": "affnist", "value": None, "accuracy": 0.79, "n": 300}])
  cnn = tmp_path / "cnn.json"
  _write(cnn, [
      {"transform": "rotation", "value": 0, "accuracy": 0.9912, "n": 200},
      {"transform": "rotation", "value": -15, "accuracy": 0.9, "n": 200},
      {"transform": "affnist", "value": None, "accuracy": 0.66, "n": 300}])
  table = report.render(["--table=robustness", f"caps={tmp_path / 'caps'}",
                         f"cnn={cnn}"])
  assert table.splitlines() == [
      "| setting | caps | cnn |",
      "|---|---|---|",
      "| clean test set (rotation 0°) | 99.50% | 99.12% |",
      "| rotation -15° | 98.0% | 90.0% |",
      "| shear 0.5 | 90.0% | - |",
      "| translation 4 px right, 4 px down | 50.0% | - |",
      "| affNIST-style set | 79.0% | 66.0% |",
      "| test images per setting | 200 | 200 |",
      "| affNIST-style images | 300 | 300 |"]
  png = tmp_path / "robustness.png"
  report.render(["--table=robustness", f"caps={caps}", f"--curves={png}"])
  assert png.read_bytes()[:4] == b"\x89PNG"
  with pytest.raises(WorkdirError, match="no robustness.json"):
    report.render(["--table=robustness", str(tmp_path / "nothing")])


def test_the_mode_on_a_baseline_cnn(idx_dir, tmp_path, capsys):
  """Another model family (the tiny baseline CNN, trained 8 steps here):
  the same lines; rotation 0 equals the training loop's own evaluation of
  the same checkpoint on the same 100 test images."""
  from configs import mnist_cnn  # pylint: disable=g-import-not-at-top
  from capsnet_jax import cli  # pylint: disable=g-import-not-at-top
  from capsnet_jax.training import loop  # pylint: disable=g-import-not-at-top
  config = mnist_cnn.get_config()
  config.update(model="cnn_tiny", idx_dir=str(idx_dir), batch_size=32,
                eval_batch_size=100, num_train_steps=8, log_every_steps=4,
                learning_rate=3e-3)
  workdir = str(tmp_path / "cnn")
  results = loop.train_and_evaluate(config, workdir)
  capsys.readouterr()
  cli.run("robustness", config, workdir, out=str(tmp_path / "out"))
  lines = capsys.readouterr().out.splitlines()
  records = [json.loads(l) for l in lines]
  assert [(r["transform"], r["value"]) for r in records] == [
      tuple(s) for s in robustness.settings()]
  clean = records[ROTATIONS.index(0)]
  assert clean["n"] == 100
  assert clean["accuracy"] == results["test_accuracy"]
  assert (tmp_path / "out" / "robustness.json").read_text().splitlines() == (
      lines)


def test_other_datasets_are_refused_before_any_model_is_loaded(tmp_path):
  from configs import multimnist  # pylint: disable=g-import-not-at-top
  from capsnet_jax import cli  # pylint: disable=g-import-not-at-top
  from capsnet_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  with pytest.raises(ConfigError, match=(
      "^--mode=robustness measures MNIST digits .*'multimnist' is not MNIST$")):
    cli.run("robustness", multimnist.get_config(), str(tmp_path / "none"))
