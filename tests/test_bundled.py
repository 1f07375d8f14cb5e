"""The bundled Efficient-CapsNet MNIST weights (capsnet_jax/weights): files,
checksums and size, the model they restore, image files through the command
line without training, --mode=visualize on the first 500 real test images,
damaged and unknown bundles.

The bundle on the 10,000 MNIST test images (its recorded accuracy, from
uint8 and from float images) and through the Python API: test_api.py, the
only module that evaluates the whole test set. Making a bundle:
test_trained.py."""

import hashlib
import json
import os
import shutil

import jax
import numpy as np
import pytest
from PIL import Image

from capsnet_jax import errors
from capsnet_jax.inference import bundled
from capsnet_jax.inference import trained
from conftest import ROOT, run_main, shared_mnist, write_idx

BUNDLE = ROOT / "capsnet_jax" / "weights" / "mnist_efficient"
META = json.loads((BUNDLE / "weights.json").read_text())
# Efficient-CapsNet on MNIST: 161,824 parameters without the decoder (the
# paper's count, Mazzia et al. 2021, Table 1), 1,573,168 with it.
ENCODER_PARAMS, ALL_PARAMS = 161_824, 1_573_168


def test_files_checksums_and_size():
  data = (BUNDLE / "weights.msgpack").read_bytes()
  assert hashlib.sha256(data).hexdigest() == META["sha256"]
  assert hashlib.sha256((BUNDLE / "config.json").read_bytes()).hexdigest() == (
      META["config_sha256"])
  # With the decoder, at most 4 MB (issue 39).
  assert len(data) == META["bytes"] and len(data) < 4_000_000
  config = json.loads((BUNDLE / "config.json").read_text())
  assert (config["model"], config["dataset"], config["data_setup"]) == (
      "efficient_capsnet", "mnist", "efficient")
  assert config["idx_dir"] == ""  # no path of the machine that trained it
  assert META["decoder"] is True and META["params"] == ALL_PARAMS
  assert META["test_accuracy"] == 0.9973  # 27 errors: test_api.py
  assert "mnist_efficient" in bundled.names()


def test_the_model_it_restores():
  model = trained.load("bundled:mnist_efficient")
  assert model.step == META["step"] and model.has_decoder
  assert model.num_params == ALL_PARAMS
  assert sum(int(np.size(x)) for k, x in _flat(model.variables["params"])
             if not k.startswith("decoder/")) == ENCODER_PARAMS
  assert model.batch_size == 500  # the config's eval batch size
  assert model.info.stored_shape == model.info.image_shape == (28, 28, 1)


def _flat(tree, prefix=""):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _flat(v, f"{prefix}{k}/")
    else:
      yield f"{prefix}{k}", v


def test_damaged_or_unknown_bundle(tmp_path):
  copy = tmp_path / "copy"
  shutil.copytree(BUNDLE, copy)
  with open(copy / "weights.msgpack", "r+b") as f:
    f.seek(1000)
    byte = f.read(1)
    f.seek(1000)
    f.write(bytes([byte[0] ^ 1]))
  with pytest.raises(errors.WorkdirError,
                     match=f"^{copy / 'weights.msgpack'}: sha256 .* differs "
                           "from the .* recorded in weights.json; the file is "
                           "damaged or was replaced$"):
    trained.load(str(copy))
  shutil.copy(BUNDLE / "weights.msgpack", copy / "weights.msgpack")
  config = json.loads((copy / "config.json").read_text())
  config["routing_iterations"] = 2  # the same shapes: only the checksum sees it
  (copy / "config.json").write_text(json.dumps(config))
  with pytest.raises(errors.WorkdirError,
                     match=f"^{copy / 'config.json'}: sha256 .* differs"):
    trained.load(str(copy))
  with pytest.raises(errors.WorkdirError,
                     match="^no bundled weights called 'nope'; bundled: .*"
                           "mnist_efficient"):
    trained.load("bundled:nope")
  os.remove(copy / "config.json")
  with pytest.raises(errors.WorkdirError, match="^bundle .* has no config.json"):
    trained.load(str(copy))


def test_a_bundle_is_hashed_and_parsed_from_one_read(tmp_path, monkeypatch):
  """weights.msgpack replaced by other bytes right after it is opened (a
  writer racing the load): the bytes that were hashed are the ones parsed,
  so the load gets the original weights, read once."""
  import builtins  # pylint: disable=g-import-not-at-top
  copy = tmp_path / "copy"
  shutil.copytree(BUNDLE, copy)
  weights = str(copy / "weights.msgpack")
  want = bundled.read(str(copy))[1]
  other = tmp_path / "other.msgpack"
  other.write_bytes(b"\x81\xa6params\x80")  # {"params": {}}: a valid msgpack
  opened = []
  real_open = builtins.open

  def racing_open(file, *args, **kwargs):
    f = real_open(file, *args, **kwargs)
    if str(file) == weights:
      opened.append(file)
      if len(opened) == 1:  # the file is swapped under the open handle
        os.replace(other, weights)
        shutil.copy(BUNDLE / "weights.msgpack", other)
    return f
  monkeypatch.setattr(builtins, "open", racing_open)
  _, got = bundled.read(str(copy))
  assert len(opened) == 1
  flat_want = jax.tree_util.tree_leaves_with_path(want["params"])
  flat_got = jax.tree_util.tree_leaves_with_path(got["params"])
  assert [p for p, _ in flat_got] == [p for p, _ in flat_want]
  for (_, a), (_, b) in zip(flat_got, flat_want):
    np.testing.assert_array_equal(a, b)


def test_weights_msgpack_cannot_parse_is_a_workdir_error(tmp_path):
  """A weights file whose recorded checksum matches but which msgpack
  cannot parse: a WorkdirError naming it, not msgpack's own exception."""
  copy = tmp_path / "copy"
  shutil.copytree(BUNDLE, copy)
  garbage = b"\xc1" * 64  # 0xc1: a byte msgpack never uses
  (copy / "weights.msgpack").write_bytes(garbage)
  meta = json.loads((copy / "weights.json").read_text())
  (copy / "weights.json").write_text(json.dumps(
      dict(meta, sha256=hashlib.sha256(garbage).hexdigest())))
  with pytest.raises(errors.WorkdirError,
                     match=f"^{copy / 'weights.msgpack'} cannot be read as "
                           r"msgpack \(.*\); export the bundle again"):
    bundled.read(str(copy))


def test_a_hand_made_bundle_missing_a_part_is_a_one_line_error(tmp_path):
  """Checksums that match a weights file lacking an encoder parameter (the
  decoder may be left out), or a weights.json without its step."""
  from flax import serialization  # pylint: disable=g-import-not-at-top
  from capsnet_jax.workdir import files  # pylint: disable=g-import-not-at-top
  copy = tmp_path / "copy"
  shutil.copytree(BUNDLE, copy)
  variables = serialization.msgpack_restore(
      (copy / "weights.msgpack").read_bytes())
  meta = json.loads((copy / "weights.json").read_text())

  def write(variables, meta):
    (copy / "weights.msgpack").write_bytes(
        serialization.msgpack_serialize(variables))
    meta = dict(meta, sha256=files.sha256(str(copy / "weights.msgpack")))
    (copy / "weights.json").write_text(json.dumps(meta))

  params = dict(variables["params"])
  stem = sorted(k for k in params if k != "decoder")[0]
  del params[stem]
  write(dict(variables, params=params), meta)
  with pytest.raises(errors.WorkdirError,
                     match=f"^the bundle lacks the parameter {stem}/.* of the "
                           r"configured model \([0-9]+ missing\): export it "
                           r"again \(capsnet_jax.inference.export\)$"):
    trained.load(str(copy))
  # Without its decoder: an error where weights.json says it has one, a
  # model without reconstructions where it says so.
  no_decoder = dict(variables, params={
      k: v for k, v in variables["params"].items() if k != "decoder"})
  write(no_decoder, meta)
  with pytest.raises(errors.WorkdirError,
                     match="^the bundle lacks the parameter decoder/"):
    trained.load(str(copy))
  write(no_decoder, dict(meta, decoder=False))
  assert not trained.load(str(copy)).has_decoder
  write(variables, {k: v for k, v in meta.items() if k != "step"})
  with pytest.raises(errors.WorkdirError,
                     match="weights.json records no step"):
    trained.load(str(copy))


def test_command_line_predicts_digit_files_without_training(tmp_path):
  """The README's quick start: main.py --mode=predict on the bundle, on the
  example digits and on real test digits as files (one inverted, one
  enlarged), run from another folder."""
  images, labels = _real_test_digits(8)
  folder = tmp_path / "digits"
  folder.mkdir()
  for k in range(6):
    digit = Image.fromarray(images[k, ..., 0])
    if k == 1:  # dark on light: inverted by --invert=auto
      digit = Image.fromarray(255 - images[k, ..., 0])
    if k == 2:
      digit = digit.resize((100, 100), Image.BICUBIC)
    digit.save(folder / f"{k:03d}.png")
  result = run_main("--config=configs/mnist_efficient.py", "--mode=predict",
                    "--workdir=bundled:mnist_efficient",
                    f"--images={folder},{ROOT / 'docs' / 'examples'}",
                    f"--out={tmp_path / 'out'}", cwd=tmp_path)
  lines = [json.loads(line) for line in result.stdout.splitlines()]
  # The README's quick-start images: mnist_test{i}_label{k}.png.
  examples = [r for r in lines if "examples" in r["image"]]
  assert len(examples) == 3 and len(lines) == 6 + 3
  for r in examples:
    name = os.path.basename(r["image"])
    assert r["prediction"] == labels[int(name[10])] == int(name[-5]), r
  for r in lines:
    if r not in examples:
      assert r["prediction"] == labels[int(os.path.basename(r["image"])[:3])]
    with Image.open(r["figure"]) as im:  # the input beside its reconstruction
      assert im.size == ((2 * 28 + 1) * 4, 28 * 4)


def _real_test_digits(n):
  from capsnet_jax.data import idx  # pylint: disable=g-import-not-at-top
  images, labels = idx.load_mnist_idx(str(shared_mnist()), "test")
  return images[:n], labels[:n]


@pytest.fixture(name="first_500")
def fixture_first_500(tmp_path):
  """An IDX folder of the first 500 real MNIST training and test images."""
  from capsnet_jax.data import idx  # pylint: disable=g-import-not-at-top
  folder = tmp_path / "first_500"
  folder.mkdir()
  for split, prefix in (("train", "train"), ("test", "t10k")):
    images, labels = idx.load_mnist_idx(str(shared_mnist()), split)
    write_idx(folder / f"{prefix}-images-idx3-ubyte", images[:500, ..., 0])
    write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels[:500])
  return folder


def test_visualize_the_bundle_into_out(first_500, tmp_path):
  """--mode=visualize on bundled weights, written into --out: every figure
  (the bundle has the decoder). On the first 500 real test images it finds
  the bundle's two errors there: of its 27 in the 10,000 (test_api.py),
  test image 193 (a 9 taken for an 8) and 412 (a 5 taken for a 3), as
  measured by predict over the whole test set (2-core Intel Xeon)."""
  from capsnet_jax import cli  # pylint: disable=g-import-not-at-top
  from configs import mnist_efficient  # pylint: disable=g-import-not-at-top
  config = mnist_efficient.get_config()
  config.idx_dir = str(first_500)
  config.visualize_rotation_examples = 200
  config.visualize_rotation_step = 180
  config.visualize_primary_examples = 64
  config.visualize_primary_steps = 2
  with pytest.raises(errors.ConfigError, match="read-only: give --out=DIR"):
    cli.run("visualize", config, "bundled:mnist_efficient")
  out = tmp_path / "figures"
  summary = cli.run("visualize", config, "bundled:mnist_efficient",
                    out=str(out))
  assert summary["checkpoint_step"] == META["step"]
  assert summary["num_test"] == 500
  assert summary["confusion_trace"] == 498
  assert summary["num_misclassified"] == 2
  misclassified = json.loads((out / "misclassified.json").read_text())
  assert sorted((e["index"], e["label"], e["prediction"])
                for e in misclassified["errors"]) == [(193, 9, 8), (412, 5, 3)]
  assert summary["rotation_angles"] == [-180.0, 0.0, 180.0]
  assert summary["rotation_examples"] == 200
  assert summary["rotation_accuracy"][1] == 199 / 200  # image 193
  assert "skipped" not in summary
  for name in ("reconstructions.png", "perturbation.png", "rotation.png",
               "rotation.gif", "primary_caps.png", "confusion_matrix.png",
               "misclassified.png", "summary.json"):
    assert (out / name).is_file(), name
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
