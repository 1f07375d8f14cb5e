"""trained.load on the session's tiny run (conftest.tiny_run): the workdir's
config, latest, best and numbered checkpoints, batched inference for any N,
--config.checkpoint, one-line errors, and bundles exported from it.

The real bundled model through the package API: test_api.py."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from capsnet_jax import errors
from capsnet_jax import experiment
from capsnet_jax.inference import export
from capsnet_jax.inference import trained
from capsnet_jax.workdir import checkpoints
from capsnet_jax.workdir import files
from conftest import tiny_config


@pytest.fixture(name="test_split", scope="module")
def fixture_test_split(tiny_run):
  """The tiny run's 100 synthetic test digits, uint8 [100, 28, 28, 1]."""
  return experiment.resolve(tiny_run.config, "eval").load_splits(0, 1).test


@pytest.fixture(name="steps", scope="module")
def fixture_steps(tiny_run, tmp_path_factory):
  """A copy of the tiny run with two more checkpoints: step 10 (the trained
  parameters with noise added, recorded test accuracy 0.5) and step 12
  (every parameter zero, recorded -1). Latest: 12; best: 8, the trained
  step (accuracy 1.0). The run's checkpoint of step 7 (its first epoch's
  end, also 100%: a tie) is removed."""
  workdir = tiny_run.copy(tmp_path_factory.mktemp("steps") / "run")
  shutil.rmtree(workdir / "checkpoints" / "7")
  state = trained.load(str(workdir)).state
  leaves, tree = jax.tree.flatten(state.params)
  rng = np.random.default_rng(0)
  noisy = jax.tree.unflatten(tree, [
      x + 0.05 * rng.standard_normal(x.shape).astype(x.dtype) for x in leaves])
  ckpt = checkpoints.Checkpointer(str(workdir))
  ckpt.save(10, state.replace(step=jax.numpy.asarray(10, state.step.dtype),
                              params=noisy), {"test_accuracy": 0.5})
  ckpt.save(12, state.replace(step=jax.numpy.asarray(12, state.step.dtype),
                              params=jax.tree.map(jax.numpy.zeros_like,
                                                  state.params)),
            {"test_accuracy": -1.0})
  ckpt.close()
  return str(workdir)


def _accuracy(model, test):
  out = model.predict(test.images, ("predictions",))
  return float(np.mean(out.predictions == test.labels))


def test_load_reads_config_and_restores_latest(tiny_run, test_split):
  model = trained.load(str(tiny_run.workdir))  # no config: config.json
  assert model.config.model == "tiny" and model.config.idx_dir == ""
  assert model.step == 8 and model.info.name == "mnist"
  assert model.info.image_shape == (28, 28, 1)
  assert len(model.info.class_names) == 10
  assert model.batch_size == 32 and model.has_decoder
  assert model.num_params == tiny_run.results["num_params"] == 234_896
  # The training run's final evaluation: 100% of the 100 synthetic digits.
  assert tiny_run.results["test_accuracy"] == 1.0
  assert _accuracy(model, test_split) == 1.0


def test_predict_any_n_equals_one_at_a_time(tiny_run, test_split):
  model = trained.load(str(tiny_run.workdir))
  images = test_split.images[:35]  # uint8 as stored: batches of 32 and 3
  out = model.predict(images)
  assert isinstance(out, trained.Prediction)
  assert out.keys() == trained.PREDICT_KEYS == (
      "lengths", "predictions", "class_caps", "reconstructions")
  assert out.lengths.shape == (35, 10) and out.class_caps.shape == (35, 10, 16)
  assert out.reconstructions.shape == (35, 28, 28, 1)
  assert out.predictions.dtype.kind == "i"
  assert out.primary_caps is None and out.coupling is None
  np.testing.assert_array_equal(out.predictions, test_split.labels[:35])
  for i in (0, 17, 31, 32, 34):
    one = model.predict(images[i])  # one image [28, 28, 1]
    assert one.predictions[0] == out.predictions[i]
    for key in ("lengths", "class_caps", "reconstructions"):
      np.testing.assert_allclose(one[key][0], out[key][i], atol=1e-5)
  np.testing.assert_array_equal(out.predictions, np.argmax(out.lengths, -1))
  # data_setup=reference: (x / 255 - 0.1307) / 0.3081, computed here by hand:
  # predict_preprocessed takes it and gives the same outputs.
  inputs = (images.astype(np.float32) / 255.0 - 0.1307) / 0.3081
  np.testing.assert_allclose(model.preprocess(images), inputs, rtol=1e-6,
                             atol=1e-6)
  raw = model.predict_preprocessed(inputs, ("lengths", "coupling"))
  np.testing.assert_allclose(raw.lengths, out.lengths, atol=1e-6)
  assert raw.coupling.shape[::2] == (35, 10) and raw.class_caps is None
  assert model.predict(images[:0]).lengths.shape == (0, 10)
  # Decoding the predicted capsules gives the reconstructions.
  np.testing.assert_allclose(model.decode(out.class_caps, out.predictions),
                             out.reconstructions, atol=1e-5)


def test_latest_best_and_step(steps, test_split):
  assert trained.load(steps).step == 12
  best = trained.load(steps, which="best")
  assert best.step == 8
  assert _accuracy(best, test_split) == 1.0
  assert trained.load(steps, which=10).step == 10
  assert trained.load(steps, which=8).step == 8
  zero = trained.load(steps).predict(test_split.images[:4], ("lengths",))
  np.testing.assert_allclose(zero.lengths, 0.0, atol=1e-3)  # zero weights


def test_predict_reads_config_checkpoint(tiny_run, steps, test_split,
                                        tmp_path, capsys):
  """--config.checkpoint picks the checkpoint of --mode=predict (that of
  --mode=visualize: test_visualize.py); the other modes refuse anything but
  the latest."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from capsnet_jax import cli  # pylint: disable=g-import-not-at-top
  image = str(tmp_path / "digit.png")
  Image.fromarray(test_split.images[0][..., 0]).save(image)
  lengths = {step: trained.load(steps, which=step).predict_files(
      [image])[0]["capsule_lengths"] for step in (8, 12)}
  assert lengths[8] != lengths[12]
  idx_dir = tiny_run.config.idx_dir
  for which, step in (("8", 8), ("latest", 12)):
    chosen = tiny_config(idx_dir, checkpoint=which)
    assert cli.run("predict", chosen, steps, images=[image]) == errors.EXIT_OK
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["capsule_lengths"] == lengths[step]
  for mode in ("train", "eval"):
    with pytest.raises(errors.ConfigError,
                       match=f"--mode={mode} uses the latest"):
      cli.run(mode, tiny_config(idx_dir, checkpoint="8"), steps)
  with pytest.raises(errors.ConfigError, match="Unknown checkpoint 'newest'"):
    cli.run("predict", tiny_config(idx_dir, checkpoint="newest"), steps,
            images=[image])


def test_errors_are_one_line_workdir_errors(tiny_run, tmp_path):
  workdir = str(tiny_run.workdir)
  empty = tmp_path / "empty"
  empty.mkdir()
  for path in (empty, tmp_path / "missing"):
    with pytest.raises(errors.WorkdirError,
                       match=f"^no checkpoint in '{path}': train first"):
      trained.load(str(path))
  with pytest.raises(errors.ConfigError, match="Unknown checkpoint 'newest'"):
    trained.load(workdir, which="newest")
  with pytest.raises(errors.WorkdirError,
                     match=r"no checkpoint of step 5 in .*; it has steps "
                           r"\[7, 8\]"):
    trained.load(workdir, which=5)
  with pytest.raises(errors.WorkdirError, match="different configuration"):
    trained.load(workdir, config=tiny_config(tiny_run.config.idx_dir,
                                             decoder="deconv"))
  # A checkpoint without a config record, and one without any test accuracy.
  bare = str(tiny_run.copy(tmp_path / "bare"))
  os.remove(os.path.join(bare, "config.json"))
  with pytest.raises(errors.WorkdirError, match="^no config.json in"):
    trained.load(bare)
  assert trained.load(bare, config=tiny_run.config).step == 8
  model = trained.load(workdir)
  unscored = str(tmp_path / "unscored")
  ckpt = checkpoints.Checkpointer(unscored)
  ckpt.save(3, model.state, None)
  ckpt.close()
  with pytest.raises(errors.WorkdirError, match="^no best checkpoint in"):
    trained.load(unscored, which="best", config=tiny_run.config)
  # A record that does not describe the checkpoint's model.
  with open(os.path.join(workdir, "config.json")) as f:
    record = json.load(f)
  record["primary_types"] = 8
  with open(os.path.join(bare, "config.json"), "w") as f:
    json.dump(record, f)
  with pytest.raises(errors.WorkdirError,
                     match="the checkpoint of step 8 in .* does not match the "
                           "configured model"):
    trained.load(bare)
  with pytest.raises(ValueError, match=r"got \[2, 32, 32, 1\]; predict_files"):
    model.predict(np.zeros((2, 32, 32, 1), np.uint8))
  with pytest.raises(ValueError, match=r"Unknown outputs \['logits'\]"):
    model.predict(np.zeros((1, 28, 28, 1), np.uint8), ("logits",))


def test_bundle_made_from_the_workdir_predicts_the_same(tiny_run, test_split,
                                                        tmp_path):
  """export.export: the best checkpoint without the decoder
  (decoder_dtype="none"), loaded back through trained.load, gives the
  workdir's lengths."""
  workdir = str(tiny_run.workdir)
  meta = export.export(workdir, "tiny", "best", str(tmp_path),
                       decoder_dtype="none")
  folder = tmp_path / "tiny"
  assert sorted(os.listdir(folder)) == ["config.json", "weights.json",
                                        "weights.msgpack"]
  assert sorted(os.listdir(tmp_path)) == ["tiny"]  # no staging folder left
  best = trained.load(workdir, which="best")
  # Steps 7 (epoch 1) and 8 both score 100%: the best is the earlier, the
  # step results.json names.
  assert meta["step"] == best.step == tiny_run.results["best_step"] == 7
  assert meta["decoder"] is False
  assert meta["test_accuracy"] == tiny_run.results["best_test_accuracy"] == 1.0
  # The tiny model's 234,896 less its FC decoder (hidden 16, 32):
  # 160*16+16 + 16*32+32 + 32*784+784 = 2,576 + 544 + 25,872 = 28,992.
  assert meta["params"] == 234_896 - 28_992
  bundle = trained.load(str(folder))
  assert bundle.step == best.step and not bundle.has_decoder
  images = test_split.images[:40]
  np.testing.assert_allclose(bundle.predict(images, ("lengths",)).lengths,
                             best.predict(images, ("lengths",)).lengths,
                             atol=1e-6)
  # Without a decoder: no reconstructions, by default or on request.
  assert bundle.predict(images[:2]).keys() == (
      "lengths", "predictions", "class_caps")
  with pytest.raises(ValueError, match="has no decoder: no reconstructions"):
    bundle.predict(images[:2], ("lengths", "reconstructions"))
  with pytest.raises(ValueError, match="has no decoder: no reconstructions"):
    bundle.decode(np.zeros((2, 10, 16)), np.zeros(2, np.int32))


def test_bundle_only_if_better(tiny_run, tmp_path, capsys):
  """--only_if_better keeps a bundle whose recorded accuracy is at least the
  checkpoint's, and replaces one that is worse."""
  best = tiny_run.results["best_test_accuracy"]
  args = ["--workdir", str(tiny_run.workdir), "--name", "tiny", "--out_root",
          str(tmp_path), "--only_if_better"]
  assert export.main(args) == errors.EXIT_OK  # no bundle yet: written
  meta_file = tmp_path / "tiny" / "weights.json"
  weights_file = tmp_path / "tiny" / "weights.msgpack"
  written = json.loads(meta_file.read_text())
  assert written["test_accuracy"] == best
  for recorded, kept in ((best, True), (best + 0.01, True),
                         (best - 0.01, False)):
    meta = dict(written, test_accuracy=recorded)
    meta_file.write_text(json.dumps(meta))
    weights_file.write_bytes(b"older weights")
    capsys.readouterr()
    assert export.main(args) == errors.EXIT_OK
    now = json.loads(meta_file.read_text())
    if kept:
      assert now == meta and weights_file.read_bytes() == b"older weights"
      assert capsys.readouterr().err.startswith("kept the bundle tiny: its "
                                                f"test accuracy {recorded}")
    else:
      assert now["test_accuracy"] == best
      assert now["sha256"] == files.sha256(str(weights_file))
      assert now["sha256"] == written["sha256"]
  missing = tmp_path / "missing"
  assert export.main(["--workdir", str(missing), "--name", "x", "--out_root",
                      str(tmp_path)]) == errors.EXIT_USER_ERROR
  assert capsys.readouterr().err == (
      f"error: no checkpoint in '{missing}': train first with --mode=train "
      f"--workdir={missing}\n")


def test_an_int8_bundle_is_within_half_a_scale_step(tiny_run, test_split,
                                                    tmp_path):
  """quantize="int8" stores the parameters of at least quantize_min_size
  values as int8 with one scale per output channel; loaded back, each value
  is within half a step of the checkpoint's. The tiny model's primary kernel
  [9, 9, 8, 32] (20,736 values), W [144, 10, 16, 8] (184,320) and the FC
  decoder's output kernel [32, 784] (25,088) pass a threshold of 20,000;
  conv1's 648 values and the rest do not. Scales by hand: max |x| / 127 per
  output channel (the last axis; W's K and D)."""
  workdir = str(tiny_run.workdir)
  meta = export.export(workdir, "q", "best", str(tmp_path),
                       decoder_dtype="float32", quantize="int8",
                       quantize_min_size=20_000)
  assert meta["quantized"] == ["params/class_caps/W",
                               "params/decoder/out/kernel",
                               "params/primary/conv/kernel"]
  assert meta["params"] == 234_896
  from flax import serialization  # pylint: disable=g-import-not-at-top
  stored = serialization.msgpack_restore(
      (tmp_path / "q" / "weights.msgpack").read_bytes())["params"]
  best = trained.load(workdir, which="best")
  params = jax.tree.map(np.asarray, best.variables["params"])
  bundle = trained.load(str(tmp_path / "q"))
  loaded = jax.tree.map(np.asarray, bundle.variables["params"])
  for part, leaf, reduce in (("primary", ("conv", "kernel"), (0, 1, 2)),
                             ("class_caps", ("W",), (0, 3)),
                             ("decoder", ("out", "kernel"), (0,))):
    want = params[part]
    got, raw = loaded[part], stored[part]
    for key in leaf:
      want, got, raw = want[key], got[key], raw[key]
    assert raw["int8"].dtype == np.int8 and raw["int8"].shape == want.shape
    scale = np.max(np.abs(want), axis=reduce, keepdims=True) / 127
    np.testing.assert_allclose(raw["scale"], scale, rtol=1e-6)
    assert np.all(np.abs(got - want) <= scale / 2 * (1 + 1e-5))
    assert got.dtype == np.float32 and not np.array_equal(got, want)
  np.testing.assert_array_equal(loaded["stem"]["conv"]["kernel"],
                                params["stem"]["conv"]["kernel"])
  images = test_split.images[:100]
  assert np.mean(bundle.predict(images, ("predictions",)).predictions ==
                 best.predict(images, ("predictions",)).predictions) >= 0.99
  with pytest.raises(errors.WorkdirError, match="Unknown quantize 'int4'"):
    export.export(workdir, "q4", "best", str(tmp_path), quantize="int4")
  # A decoder added later keeps the encoder's int8 values as they were.
  export.export(workdir, "q2", "best", str(tmp_path), decoder_dtype="none",
                quantize="int8", quantize_min_size=20_000)
  meta = export.add_decoder("q2", workdir, "best", str(tmp_path), "float32")
  assert meta["quantized"] == ["params/class_caps/W",
                               "params/primary/conv/kernel"]
  again = serialization.msgpack_restore(
      (tmp_path / "q2" / "weights.msgpack").read_bytes())["params"]
  np.testing.assert_array_equal(again["class_caps"]["W"]["int8"],
                                stored["class_caps"]["W"]["int8"])
  np.testing.assert_array_equal(again["class_caps"]["W"]["scale"],
                                stored["class_caps"]["W"]["scale"])
