"""TensorFlow-free TensorBoard logging: the writer, progress, and a whole
training run from IDX files with TensorFlow made unimportable."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from capsnet_jax.analysis import curves
from capsnet_jax.workdir import metric_logging
from conftest import ROOT, subprocess_env



def _images(workdir):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  images = {}
  for path in pathlib.Path(workdir).glob("events.out.tfevents.*"):
    acc = event_accumulator.EventAccumulator(str(path), size_guidance={
        "images": 0})
    acc.Reload()
    for tag in acc.Tags()["images"]:
      images[tag] = acc.Images(tag)
  return images


def test_event_writer_scalars_images_hparams_read_back(tmp_path):
  writer = metric_logging.create_writer(str(tmp_path), lead=True,
                                        backend="tensorboard")
  writer.write_hparams({"learning_rate": 0.001, "decoder": "fc"})
  writer.write_scalars(1, {"train_loss": 0.5, "test_accuracy": np.float32(0.9)})
  writer.write_scalars(2, {"train_loss": 0.25})
  gray = np.linspace(0, 1, 6 * 5).reshape(1, 6, 5, 1)
  writer.write_images(2, {"reconstructions": gray,
                          "rgb": np.zeros((2, 4, 3, 3), np.uint8)})
  writer.flush()
  writer.close()
  scalars = curves.from_events(str(tmp_path))
  np.testing.assert_array_equal(scalars["train_loss"][0], [1, 2])
  np.testing.assert_allclose(scalars["train_loss"][1], [0.5, 0.25])
  np.testing.assert_allclose(scalars["test_accuracy"][1], [0.9], rtol=1e-6)
  images = _images(tmp_path)
  assert (images["reconstructions"][0].height,
          images["reconstructions"][0].width) == (6, 5)
  assert images["reconstructions"][0].step == 2
  assert {"rgb/image/0", "rgb/image/1"} <= set(images)
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  acc = event_accumulator.EventAccumulator(
      str(next(tmp_path.glob("events.out.tfevents.*"))))
  acc.Reload()
  hparams = acc.PluginTagToContent("hparams")
  assert hparams, "no HParams plugin data"


def test_non_lead_writer_writes_nothing(tmp_path):
  writer = metric_logging.create_writer(str(tmp_path), lead=False,
                                        backend="tensorboard")
  writer.write_scalars(1, {"x": 1.0})
  writer.flush()
  assert not list(tmp_path.iterdir())
  with pytest.raises(ValueError, match="unknown writer backend"):
    metric_logging.create_writer(str(tmp_path), lead=True, backend="tf")


def test_progress_excludes_timed_sections(tmp_path):
  clock = [100.0]  # an injected clock: the rates are exact
  writer = metric_logging.EventWriter(str(tmp_path))
  progress = metric_logging.Progress(100, writer, every_secs=5.0,
                                     now=lambda: clock[0])
  progress(1)
  clock[0] += 2.0
  progress(5)  # 2 s after the first call: less than every_secs, no report
  with progress.timed("eval"):
    clock[0] += 30.0  # not training time: must not lower steps/s
  clock[0] += 4.0
  progress(11)  # 10 steps in 6 s of training time (36 s of wall time)
  clock[0] += 5.0
  progress(21)  # 10 steps in 5 s
  writer.flush()
  steps, rates = curves.from_events(str(tmp_path))["steps_per_sec"]
  np.testing.assert_array_equal(steps, [11, 21])
  np.testing.assert_allclose(rates, [10 / 6, 10 / 5])
  steps, uptime = curves.from_events(str(tmp_path))["uptime"]
  np.testing.assert_allclose(uptime, [36.0, 41.0])
  assert isinstance(metric_logging.create_progress(100, writer),
                    metric_logging.Progress)


# A None entry in sys.modules makes `import tensorflow` fail and
# importlib.util.find_spec("tensorflow") return None, as if not installed.
_BLOCK_TF = """
import runpy, sys
sys.modules["tensorflow"] = None
sys.modules["tensorflow_datasets"] = None
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_training_from_idx_needs_no_tensorflow(idx_dir, tmp_path):
  workdir = tmp_path / "run"
  env = subprocess_env(devices=1)
  result = subprocess.run(
      [sys.executable, "-c", _BLOCK_TF, str(ROOT / "main.py"),
       "--config=configs/mnist.py", f"--workdir={workdir}",
       "--config.model=tiny", f"--config.idx_dir={idx_dir}",
       "--config.batch_size=16", "--config.num_train_steps=6",
       "--config.log_every_steps=3", "--config.num_summary_images=2"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
      check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "TensorFlow not available" in result.stderr
  with open(workdir / "results.json") as f:
    assert json.load(f)["step"] == 6
  scalars = curves.from_events(str(workdir))
  for tag in ("train_loss", "train_accuracy", "train_learning_rate",
              "test_accuracy", "test_reconstruction_loss"):
    assert tag in scalars, (tag, sorted(scalars))
  np.testing.assert_array_equal(scalars["train_loss"][0], [3, 6])
  assert "test/reconstructions" in _images(workdir)
