"""trained.load on a tiny model trained once: the workdir's config, latest and
best checkpoints, batched inference for any N, and one-line errors."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from capsnet_jax.workdir import checkpoints
from capsnet_jax import errors
from capsnet_jax.data import input_pipeline
from capsnet_jax.training import train
from capsnet_jax.inference import trained
from test_train import tiny_config


@pytest.fixture(name="run", scope="module")
def fixture_run(idx_dir, tmp_path_factory):
  """8 steps, evaluated and checkpointed at steps 4 and 8."""
  workdir = str(tmp_path_factory.mktemp("trained"))
  config = tiny_config(idx_dir, eval_every_steps=4)
  results = train.train_and_evaluate(config, workdir)
  _, test, _ = input_pipeline.load_datasets(config, 0, 1)
  return workdir, config, results, test


def _accuracy(model, test):
  out = model.predict_stored(test.images, ("predictions",))
  return float(np.mean(out["predictions"] == test.labels))


def test_load_reads_config_and_restores_latest(run):
  workdir, config, results, test = run
  model = trained.load(workdir)  # no config: WORKDIR/config.json
  assert model.config.model == "tiny" and model.config.idx_dir == config.idx_dir
  assert model.step == 8 and model.info.name == "mnist"
  assert model.info.image_shape == (28, 28, 1) and len(model.info.class_names) == 10
  assert model.batch_size == 32
  assert model.num_params == results["num_params"]
  # The same test accuracy as the training run's final evaluation.
  assert _accuracy(model, test) == pytest.approx(results["test_accuracy"])


def test_predict_any_n_equals_one_at_a_time(run):
  workdir, _, _, test = run
  model = trained.load(workdir)
  # data_setup=reference: (x / 255 - 0.1307) / 0.3081, computed here by hand.
  images = (test.images[:35].astype(np.float32) / 255.0 - 0.1307) / 0.3081
  out = model.predict(images)
  assert sorted(out) == sorted(trained.PREDICT_KEYS)
  assert out["lengths"].shape == (35, 10) and out["class_caps"].shape == (35, 10, 16)
  assert out["reconstructions"].shape == (35, 28, 28, 1)
  assert out["predictions"].dtype.kind == "i"
  for i in (0, 17, 31, 32, 34):
    one = model.predict(images[i:i + 1])
    assert one["predictions"][0] == out["predictions"][i]
    for key in ("lengths", "class_caps", "reconstructions"):
      np.testing.assert_allclose(one[key][0], out[key][i], atol=1e-5)
  np.testing.assert_array_equal(out["predictions"], np.argmax(out["lengths"], -1))
  # uint8 as stored goes through the test preprocessing first.
  stored = model.predict_stored(test.images[:35], ("lengths", "coupling"))
  np.testing.assert_allclose(stored["lengths"], out["lengths"], atol=1e-6)
  assert stored["coupling"].shape[::2] == (35, 10)
  np.testing.assert_allclose(model.preprocess(test.images[:3]), images[:3],
                             rtol=1e-6, atol=1e-6)
  assert model.predict(images[:0])["lengths"].shape == (0, 10)
  # Decoding the predicted capsules gives the reconstructions.
  np.testing.assert_allclose(model.decode(out["class_caps"], out["predictions"]),
                             out["reconstructions"], atol=1e-5)


def test_latest_best_and_step(run, tmp_path):
  workdir, config, results, test = run
  copy = str(tmp_path / "copy")
  shutil.copytree(workdir, copy)
  # A newer checkpoint with the worst accuracy: latest, never best.
  latest = trained.load(copy)
  zeroed = latest.state.replace(step=jax.numpy.asarray(12, latest.state.step.dtype),
                                params=jax.tree.map(jax.numpy.zeros_like,
                                                    latest.state.params))
  ckpt = checkpoints.Checkpointer(copy)
  ckpt.save(12, zeroed, {"test_accuracy": -1.0})
  ckpt.close()
  assert trained.load(copy).step == 12
  best = trained.load(copy, which="best")
  assert best.step in (4, 8)
  assert _accuracy(best, test) == pytest.approx(results["best_test_accuracy"])
  assert trained.load(copy, which=4).step == 4
  outputs = trained.load(copy).predict_stored(test.images[:4], ("lengths",))
  np.testing.assert_allclose(outputs["lengths"], 0.0, atol=1e-3)  # zero weights


def test_predict_and_visualize_read_config_checkpoint(run, tmp_path, capsys):
  """--config.checkpoint picks the checkpoint of --mode=predict and
  --mode=visualize; the other modes refuse anything but the latest."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from capsnet_jax import cli  # pylint: disable=g-import-not-at-top
  workdir, config, _, test = run
  image = str(tmp_path / "digit.png")
  Image.fromarray(test.images[0][..., 0]).save(image)
  lengths = {step: trained.load(workdir, which=step).predict_files(
      [image])[0]["capsule_lengths"] for step in (4, 8)}
  assert lengths[4] != lengths[8]
  for which, step in (("4", 4), ("latest", 8)):
    chosen = tiny_config(config.idx_dir, checkpoint=which)
    assert cli.run("predict", chosen, workdir, images=[image]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["capsule_lengths"] == lengths[step]
  chosen = tiny_config(config.idx_dir, checkpoint="4",
                       visualize_rotation_step=180, visualize_num_images=2,
                       visualize_primary_steps=1, visualize_primary_examples=8)
  summary = cli.run("visualize", chosen, workdir, out=str(tmp_path / "fig"))
  assert summary["checkpoint_step"] == 4
  for mode in ("train", "eval"):
    with pytest.raises(errors.ConfigError, match=f"--mode={mode} uses the latest"):
      cli.run(mode, chosen, workdir)
  with pytest.raises(errors.ConfigError, match="Unknown checkpoint 'newest'"):
    cli.run("predict", tiny_config(config.idx_dir, checkpoint="newest"),
            workdir, images=[image])


def test_errors_are_one_line_workdir_errors(run, tmp_path):
  workdir, config, _, test = run
  empty = tmp_path / "empty"
  empty.mkdir()
  for path in (str(empty), str(tmp_path / "missing")):
    with pytest.raises(errors.WorkdirError, match="no checkpoint in"):
      trained.load(path)
  with pytest.raises(errors.ConfigError, match="Unknown checkpoint 'newest'"):
    trained.load(workdir, which="newest")
  with pytest.raises(errors.WorkdirError, match="no checkpoint of step 5"):
    trained.load(workdir, which=5)
  with pytest.raises(errors.WorkdirError, match="different configuration"):
    trained.load(workdir, config=tiny_config(config.idx_dir, decoder="deconv"))
  # A checkpoint without a config record, and one without any test accuracy.
  bare = str(tmp_path / "bare")
  shutil.copytree(workdir, bare)
  os.remove(os.path.join(bare, "config.json"))
  with pytest.raises(errors.WorkdirError, match="no config.json in"):
    trained.load(bare)
  assert trained.load(bare, config=config).step == 8
  state = trained.load(workdir).state
  unscored = str(tmp_path / "unscored")
  ckpt = checkpoints.Checkpointer(unscored)
  ckpt.save(3, state, None)
  ckpt.close()
  with pytest.raises(errors.WorkdirError, match="no best checkpoint in"):
    trained.load(unscored, which="best", config=config)
  # A record that does not describe the checkpoint's model.
  with open(os.path.join(workdir, "config.json")) as f:
    record = json.load(f)
  record["primary_types"] = 8
  with open(os.path.join(bare, "config.json"), "w") as f:
    json.dump(record, f)
  with pytest.raises(errors.WorkdirError, match="does not match the configured model"):
    trained.load(bare)
  with pytest.raises(ValueError, match=r"must be \[N, 28, 28, 1\]"):
    trained.load(workdir).predict(np.zeros((2, 32, 32, 1)))
  with pytest.raises(ValueError, match="Unknown outputs"):
    trained.load(workdir).predict(np.zeros((1, 28, 28, 1)), ("logits",))


def test_bundle_made_from_the_workdir_predicts_the_same(run, tmp_path):
  """capsnet_jax.inference.bundled.export: the best checkpoint without the decoder,
  loaded back through trained.load, gives the workdir's lengths."""
  from capsnet_jax.inference import bundled  # pylint: disable=g-import-not-at-top
  workdir, _, results, test = run
  meta = bundled.export(workdir, "tiny", "best", str(tmp_path))
  folder = tmp_path / "tiny"
  assert sorted(os.listdir(folder)) == ["config.json", "weights.json",
                                        "weights.msgpack"]
  best = trained.load(workdir, which="best")
  assert meta["step"] == best.step and meta["decoder"] is False
  assert meta["test_accuracy"] == pytest.approx(results["best_test_accuracy"])
  # The tiny model's 234,896 less its FC decoder (hidden 16, 32):
  # 160*16+16 + 16*32+32 + 32*784+784 = 2,576 + 544 + 25,872 = 28,992.
  assert meta["params"] == 234_896 - 28_992
  bundle = trained.load(str(folder))
  assert bundle.step == best.step and not bundle.has_decoder
  images = test.images[:40]
  np.testing.assert_allclose(
      bundle.predict_stored(images, ("lengths",))["lengths"],
      best.predict_stored(images, ("lengths",))["lengths"], atol=1e-6)


def test_bundle_only_if_better(run, tmp_path):
  """--only_if_better keeps a bundle whose recorded accuracy is at least the
  checkpoint's, and replaces one that is worse."""
  from capsnet_jax.inference import bundled  # pylint: disable=g-import-not-at-top
  workdir, _, results, _ = run
  best = results["best_test_accuracy"]
  out = str(tmp_path)
  args = ["--workdir", workdir, "--name", "tiny", "--out_root", out,
          "--only_if_better"]
  assert bundled.main(args) == 0  # no bundle yet: written
  meta_file = tmp_path / "tiny" / "weights.json"
  weights_file = tmp_path / "tiny" / "weights.msgpack"
  written = json.loads(meta_file.read_text())
  assert written["test_accuracy"] == pytest.approx(best)
  for recorded, kept in ((best, True), (best + 0.01, True),
                         (best - 0.01, False)):
    meta = dict(written, test_accuracy=recorded)
    meta_file.write_text(json.dumps(meta))
    weights_file.write_bytes(b"older weights")
    assert bundled.main(args) == 0
    now = json.loads(meta_file.read_text())
    if kept:
      assert now == meta and weights_file.read_bytes() == b"older weights"
    else:
      assert now["test_accuracy"] == pytest.approx(best)
      assert now["sha256"] == bundled.sha256(str(weights_file))
      assert now["sha256"] == written["sha256"]
