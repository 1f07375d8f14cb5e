"""The bundled Efficient-CapsNet MNIST weights (capsnet_jax/weights): files,
checksum and size, real test digits through the Python API and the command
line without training, damaged and unknown bundles, making a bundle."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from capsnet_jax.inference import bundled
from capsnet_jax import errors
from capsnet_jax.inference import trained
from conftest import ROOT, SHARED_MNIST, subprocess_env

BUNDLE = ROOT / "capsnet_jax" / "weights" / "mnist_efficient"


def _meta():
  return json.loads((BUNDLE / "weights.json").read_text())


def _real_test_set():
  if not SHARED_MNIST.is_dir():
    pytest.skip("no ../shared/data/mnist")
  from capsnet_jax.data import idx  # pylint: disable=g-import-not-at-top
  return idx.load_mnist_idx(str(SHARED_MNIST), "test")


def test_files_checksum_and_size():
  meta = _meta()
  data = (BUNDLE / "weights.msgpack").read_bytes()
  assert hashlib.sha256(data).hexdigest() == meta["sha256"]
  assert len(data) == meta["bytes"] and len(data) < 1_000_000
  config = json.loads((BUNDLE / "config.json").read_text())
  assert (config["model"], config["dataset"], config["data_setup"]) == (
      "efficient_capsnet", "mnist", "efficient")
  assert config["idx_dir"] == ""  # no path of the machine that trained it
  # The paper's count (Mazzia et al. 2021, Table 1): the decoder is left out.
  assert meta["params"] == 161_824 and meta["left_out"] == ["decoder"]
  assert "mnist_efficient" in bundled.names()


@pytest.fixture(name="model", scope="module")
def fixture_model():
  return trained.load("bundled:mnist_efficient")


def test_real_test_digits_as_the_training_run_measured(model):
  images, labels = _real_test_set()
  meta = _meta()
  assert model.step == meta["step"]
  # The model holds the decoder's shape (zeros): 1,573,168 parameters in all.
  assert model.num_params == 1_573_168
  out = model.predict_stored(images, ("predictions",))
  errors_made = int(np.sum(out["predictions"] != labels))
  # The training run's own evaluation of this step (train.evaluate, recorded
  # in its eval_history.jsonl) found the same number of errors.
  assert errors_made == round((1 - meta["test_accuracy"]) * len(labels))
  assert errors_made <= 50  # >= 99.5% (27 errors: 99.73%, run 3's epoch 74)


def test_no_decoder_no_reconstructions(model):
  x = np.zeros((2, 28, 28, 1), np.float32)
  assert sorted(model.predict(x)) == ["class_caps", "lengths", "predictions"]
  with pytest.raises(ValueError, match="no decoder"):
    model.predict(x, ("lengths", "reconstructions"))
  with pytest.raises(ValueError, match="no decoder"):
    model.decode(np.zeros((2, 10, 16)), np.zeros(2, np.int32))


def test_damaged_or_unknown_bundle(tmp_path):
  copy = tmp_path / "copy"
  shutil.copytree(BUNDLE, copy)
  with open(copy / "weights.msgpack", "r+b") as f:
    f.seek(1000)
    byte = f.read(1)
    f.seek(1000)
    f.write(bytes([byte[0] ^ 1]))
  with pytest.raises(errors.WorkdirError, match="sha256 .* differs"):
    trained.load(str(copy))
  with pytest.raises(errors.WorkdirError,
                     match="no bundled weights called 'nope'; bundled: .*"
                           "mnist_efficient"):
    trained.load("bundled:nope")
  os.remove(copy / "config.json")
  with pytest.raises(errors.WorkdirError, match="has no config.json"):
    trained.load(str(copy))


def test_command_line_predicts_digit_files_without_training(model, tmp_path):
  images, labels = _real_test_set()
  out = model.predict_stored(images[:50], ("predictions",))["predictions"]
  right = [i for i in range(50) if out[i] == labels[i]][:6]
  folder = tmp_path / "digits"
  folder.mkdir()
  for k, i in enumerate(right):
    digit = Image.fromarray(images[i, ..., 0])
    if k == 1:  # dark on light: inverted by --invert=auto
      digit = Image.fromarray(255 - images[i, ..., 0])
    if k == 2:
      digit = digit.resize((100, 100), Image.BICUBIC)
    digit.save(folder / f"{i:03d}.png")
  args = [sys.executable, str(ROOT / "main.py"),
          "--config=configs/mnist_efficient.py", "--mode=predict",
          "--workdir=bundled:mnist_efficient",
          f"--images={folder},{ROOT / 'docs' / 'examples'}",
          f"--out={tmp_path / 'out'}"]
  env = subprocess_env()
  result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [json.loads(line) for line in result.stdout.splitlines()]
  # The README's quick-start images: mnist_test{i}_label{k}.png.
  examples = [r for r in lines if "examples" in r["image"]]
  assert len(examples) == 3 and len(lines) == len(right) + 3
  for r in examples:
    name = os.path.basename(r["image"])
    assert r["prediction"] == labels[int(name[10])] == int(name[-5]), r
  for r in lines:
    if r in examples:
      continue
    i = int(os.path.basename(r["image"])[:3])
    assert r["prediction"] == labels[i], r
    with Image.open(r["figure"]) as im:  # the input alone: no decoder
      assert im.size == (4 * 28, 4 * 28)



def test_visualize_the_bundle_into_out(model, tmp_path):
  """--mode=visualize on bundled weights: the figures that need no decoder,
  written into --out; the confusion matrix over the 10,000 real test images
  gives the accuracy the training run recorded."""
  del model  # compiled once for the module; make_figures loads its own
  _real_test_set()
  from capsnet_jax import cli  # pylint: disable=g-import-not-at-top
  from configs import mnist_efficient  # pylint: disable=g-import-not-at-top
  config = mnist_efficient.get_config()
  config.idx_dir = str(SHARED_MNIST)
  config.visualize_rotation_examples = 200
  config.visualize_rotation_step = 90
  config.visualize_primary_examples = 64
  config.visualize_primary_steps = 2
  with pytest.raises(errors.ConfigError, match="read-only: give --out=DIR"):
    cli.run("visualize", config, "bundled:mnist_efficient")
  out = tmp_path / "figures"
  summary = cli.run("visualize", config, "bundled:mnist_efficient", out=str(out))
  meta = _meta()
  assert summary["checkpoint_step"] == meta["step"]
  assert summary["confusion_trace"] == round(meta["test_accuracy"] * 10000)
  assert summary["rotation_angles"] == [-180.0, -90.0, 0.0, 90.0, 180.0]
  assert set(summary["skipped"]) == {"reconstructions.png", "perturbation.png"}
  for name in ("rotation.png", "rotation.gif", "primary_caps.png",
               "confusion_matrix.png", "summary.json"):
    assert (out / name).is_file(), name
  assert not (out / "reconstructions.png").exists()
  assert not (out / "perturbation.png").exists()
  assert not (BUNDLE / "figures").exists()  # nothing written into the package


@pytest.mark.parametrize("mode", ["train", "eval", "ensemble"])
def test_training_modes_refuse_the_bundle(mode, tmp_path, monkeypatch):
  from capsnet_jax import cli  # pylint: disable=g-import-not-at-top
  from configs import mnist_efficient  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(tmp_path)
  with pytest.raises(errors.ConfigError,
                     match=f"bundled weights .* --mode={mode} needs a training"):
    cli.run(mode, mnist_efficient.get_config(), "bundled:mnist_efficient")
  assert not os.listdir(tmp_path)  # no folder called "bundled:mnist_efficient"
