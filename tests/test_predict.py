"""Prediction on image files (capsnet_jax.inference.predict): MNIST-style
preprocessing of synthetic images; hostile files, each refused with its
reason while the others are predicted; streaming batch by batch; --out
checked first and never overwriting; real MNIST digits written to PNG (as
is, inverted, enlarged) predicted as the arrays are, with the bundled
Efficient-CapsNet weights. (The command line: tests/test_hostile.py.)"""

import io
import json
import os
import threading

import numpy as np
import pytest
from PIL import EpsImagePlugin
from PIL import Image

from capsnet_jax import errors
from capsnet_jax.data import datasets
from capsnet_jax.data import idx
from capsnet_jax.inference import predict
from capsnet_jax.inference import trained
from conftest import shared_mnist


def _bbox(digit, threshold=0.5):
  rows = np.flatnonzero((digit > threshold).any(axis=1))
  cols = np.flatnonzero((digit > threshold).any(axis=0))
  return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def _l_shape(h=200, w=120, ink=0.0, paper=1.0, channels=3):
  """A dark 'L' (100 x 60 px) off-centre on light paper."""
  image = np.full((h, w, channels), paper, np.float32)
  image[20:120, 10:25] = ink
  image[105:120, 10:70] = ink
  return image


# --------------------------------------------------------------------------
# Preprocessing.


def test_inversion_auto_always_never():
  dark_on_light = _l_shape()
  light_on_dark = 1.0 - dark_on_light
  auto = predict.mnist_digit(dark_on_light)
  assert auto.max() == pytest.approx(1.0) and auto[0].max() == 0.0  # dark border
  np.testing.assert_allclose(predict.mnist_digit(light_on_dark), auto, atol=1e-6)
  np.testing.assert_allclose(predict.mnist_digit(light_on_dark, "always"), 0.0)
  np.testing.assert_allclose(predict.mnist_digit(dark_on_light, "never"), 0.0)
  np.testing.assert_allclose(predict.mnist_digit(dark_on_light, "always"), auto,
                             atol=1e-6)
  assert predict.should_invert(dark_on_light[..., 0])
  assert not predict.should_invert(light_on_dark[..., 0])
  with pytest.raises(ValueError, match="Unknown invert"):
    predict.mnist_digit(auto[..., None], "sometimes")


@pytest.mark.parametrize("shape,expected", [
    ((120, 30), (20, 5)),  # tall: height fills the 20-px box
    ((24, 96), (5, 20)),   # wide: width does
    ((60, 60), (20, 20)),
])
def test_aspect_ratio_is_kept(shape, expected):
  image = np.zeros((300, 260, 1), np.float32)
  h, w = shape
  image[37:37 + h, 150:150 + w] = 1.0
  digit = predict.mnist_digit(image)
  assert digit.shape == (28, 28) and digit.dtype == np.float32
  got = _bbox(digit)
  assert abs(got[0] - expected[0]) <= 1 and abs(got[1] - expected[1]) <= 1, got


def test_centre_of_mass_at_the_centre_and_range():
  rng = np.random.default_rng(0)
  photo = 0.8 + 0.05 * rng.standard_normal((90, 140, 3)).astype(np.float32)
  photo[10:80, 100:108] = 0.1  # a dark '1' far right, on noisy grey paper
  photo[10:18, 90:108] = 0.1
  ring = np.zeros((64, 64, 1), np.float32)
  yy, xx = np.mgrid[:64, :64]
  ring[..., 0] = (np.abs(np.hypot(yy - 20, xx - 40) - 12) < 3).astype(np.float32)
  for image in (_l_shape(), photo, np.clip(photo, 0, 1), ring,
                _l_shape(channels=1, ink=0.3, paper=0.9)):
    digit = predict.mnist_digit(image)
    assert digit.shape == (28, 28)
    assert digit.min() >= 0.0 and digit.max() <= 1.0
    row, col = predict.center_of_mass(digit)
    assert abs(row - 14.0) <= 0.5 and abs(col - 14.0) <= 0.5, (row, col)
    assert max(_bbox(digit, 0.1)) == 20
  assert predict.mnist_digit(np.full((20, 30, 3), 0.7)).max() == 0.0  # blank


def test_an_mnist_image_read_as_a_file_comes_out_as_stored():
  """MNIST's own digits (20 px boxes, centres of mass near (14, 14)) pass
  through unchanged: 0.12 of 255 mean absolute difference over the first 500
  test images (2-core Intel Xeon); centring at (13.5, 13.5) moved half of
  them by a pixel (14.4 of 255)."""
  images, _ = idx.load_mnist_idx(str(shared_mnist()), "test")
  x = images[:500].astype(np.float32) / 255.0
  diffs = [np.abs(predict.mnist_digit(im) - im[..., 0]).mean() for im in x]
  assert np.mean(diffs) * 255 < 0.5, np.mean(diffs) * 255
  assert np.median(diffs) == 0.0


def test_to_stored_for_every_dataset():
  image = _l_shape(h=90, w=160)
  for name, setup, shape in (("mnist", "reference", (28, 28, 1)),
                             ("cifar10", "paper", (32, 32, 3)),
                             ("smallnorb", "reference", (48, 48, 1)),
                             ("smallnorb", "paper", (48, 48, 2))):
    info = datasets.get(name, setup).info
    stored = predict.to_stored(image, info)
    assert stored.shape == shape and stored.dtype == np.uint8, name
  stored = predict.to_stored(image, datasets.get("mnist").info)
  np.testing.assert_array_equal(
      stored[..., 0], np.round(predict.mnist_digit(image) * 255))


def test_read_image_modes_and_errors(tmp_path):
  gray = (_l_shape(channels=1)[..., 0] * 255).astype(np.uint8)
  Image.fromarray(gray).save(tmp_path / "gray.png")
  Image.fromarray(np.stack([gray] * 3, -1)).save(tmp_path / "colour.jpg", quality=95)
  rgba = np.zeros((*gray.shape, 4), np.uint8)
  rgba[..., 3] = 255 - gray  # black ink on a transparent background
  Image.fromarray(rgba).save(tmp_path / "alpha.png")
  Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "deep.png")
  (tmp_path / "notes.txt").write_text("not an image")
  (tmp_path / "truncated.png").write_bytes((tmp_path / "gray.png").read_bytes()[:60])
  reference = predict.mnist_digit(predict.read_image(str(tmp_path / "gray.png")))
  assert predict.read_image(str(tmp_path / "gray.png")).shape == (200, 120, 1)
  assert predict.read_image(str(tmp_path / "colour.jpg")).shape == (200, 120, 3)
  for name in ("colour.jpg", "alpha.png", "deep.png"):
    digit = predict.mnist_digit(predict.read_image(str(tmp_path / name)))
    assert np.abs(digit - reference).max() < 0.1, name
  for name in ("notes.txt", "truncated.png", "missing.png"):
    with pytest.raises(predict.ImageReadError):
      predict.read_image(str(tmp_path / name))
  paths, errors = predict.expand_paths([
      str(tmp_path), str(tmp_path / "*.jpg"), str(tmp_path / "gray.png"),
      str(tmp_path / "none*.png"), str(tmp_path / "missing.png")])
  names = [os.path.basename(p) for p in paths]
  assert names == ["alpha.png", "colour.jpg", "deep.png", "gray.png",
                   "truncated.png"]  # each once, the folder's images only
  assert [why for _, why in errors] == ["no file matches", "no such file or folder"]


# --------------------------------------------------------------------------
# Hostile files, one at a time.


EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\n"
       b"newpath 0 0 moveto 28 28 lineto stroke showpage\n")


def _bilevel_png(path, megapixels: float) -> None:
  """A blank square PNG of that many megapixels: a few kilobytes on disk
  (1 bit per pixel in memory while it is made)."""
  side = int(round((megapixels * 1e6) ** 0.5))
  Image.new("1", (side, side)).save(path)


def _float_tiff(path, value) -> None:
  x = np.full((28, 28), 0.25, np.float32)
  x[5, 7] = value
  Image.fromarray(x, mode="F").save(path)


def test_float_images_are_read_in_their_range(tmp_path):
  """A float TIFF of [0, 1] stays; one of 0-255 is divided by 255; any other
  range is scaled from its minimum to its maximum (a 0-255 one was all white
  after clipping)."""
  for name, (value, paper, expected) in {
      "unit": (0.75, 0.25, (0.75, 0.25)),
      "bytes": (191.25, 63.75, (0.75, 0.25)),
      "wide": (1000.0, -1000.0, (1.0, 0.0)),
      # Finite, but their range overflows float32: scaled in float64.
      "huge": (3e38, -3e38, (1.0, 0.0))}.items():
    x = np.full((28, 28), paper, np.float32)
    x[5, 7] = value
    Image.fromarray(x, mode="F").save(tmp_path / f"{name}.tif")
    got = predict.read_image(str(tmp_path / f"{name}.tif"))
    assert got.shape == (28, 28, 1)
    np.testing.assert_allclose((got[5, 7, 0], got[0, 0, 0]), expected,
                               atol=1e-6, err_msg=name)


def _read_in_thread(path):
  """read_image's outcome, in a thread: opening a FIFO for reading the usual
  way blocks until a writer comes, which would hang the test."""
  outcome = []

  def target():
    try:
      outcome.append(predict.read_image(str(path)))
    except predict.ImageReadError as e:
      outcome.append(e)
  thread = threading.Thread(target=target, daemon=True)
  thread.start()
  thread.join(60)
  assert not thread.is_alive(), f"reading {path} blocked"
  return outcome[0]


@pytest.fixture(name="hostile", scope="module")
def fixture_hostile(tmp_path_factory):
  """{case: path} of files that must each be refused."""
  d = tmp_path_factory.mktemp("hostile")
  (d / "eps.png").write_bytes(EPS)  # EPS would run Ghostscript
  _bilevel_png(d / "60mp.png", 60)  # under Pillow's 89 MP warning
  _bilevel_png(d / "100mp.png", 100)  # Pillow only warns up to 179 MP
  _float_tiff(d / "nan.tif", np.nan)
  _float_tiff(d / "inf.tif", np.inf)
  os.mkfifo(d / "fifo.png")
  with open(d / "huge.webp", "wb") as f:  # sparse: no disk space taken
    f.write(b"RIFF\xf8\xff\xff\x0fWEBPVP8 ")
    f.truncate(predict.MAX_FILE_BYTES + 1)
  (d / "folder.png").mkdir()
  (d / "notes.png").write_text("not an image")
  return {p.name: p for p in d.iterdir()} | {"device": "/dev/zero",
                                             "missing.png": d / "missing.png"}


@pytest.mark.parametrize("case,why", [
    ("eps.png", "not an image file of an accepted format (PNG, JPEG, BMP, "
                "GIF, TIFF, WEBP)"),
    ("notes.png", "not an image file of an accepted format (PNG, JPEG, BMP, "
                  "GIF, TIFF, WEBP)"),
    ("60mp.png", "too large: 60.0 megapixels, more than the 50 megapixels "
                 "this reads (capsnet_jax.inference.predict.MAX_MEGAPIXELS)"),
    ("100mp.png", "too large: 100.0 megapixels, more than the 50 megapixels "
                  "this reads (capsnet_jax.inference.predict.MAX_MEGAPIXELS)"),
    ("nan.tif", "holds NaN or infinite pixels"),
    ("inf.tif", "holds NaN or infinite pixels"),
    ("huge.webp", "too large: 256.0 MB on disk, more than the 256 MB this "
                  "reads (capsnet_jax.inference.predict.MAX_FILE_MEGABYTES)"),
    ("fifo.png", "is a FIFO, not an image file"),
    ("folder.png", "is a folder, not an image file"),
    ("device", "is a character device, not an image file"),
    ("missing.png", "no such file"),
])
def test_each_hostile_file_is_refused_with_its_reason(hostile, case, why,
                                                      monkeypatch):
  opened = []
  monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open",
                      lambda self: opened.append(self))
  real_open = Image.open
  decoders = []
  monkeypatch.setattr(Image, "open", lambda *a, **k: (
      decoders.append(a), real_open(*a, **k))[1])
  error = _read_in_thread(hostile[case])
  assert isinstance(error, predict.ImageReadError)
  assert str(error) == why
  assert not opened  # the EPS decoder is never reached
  if case == "huge.webp":  # refused from its size: no decoder reads it
    assert not decoders


def test_pillows_decompression_bomb_warning_is_an_error(hostile, monkeypatch):
  """Above our own cap, Pillow's warning (89 to 179 MP) still refuses a
  file: nothing between the two limits is decoded."""
  monkeypatch.setattr(predict, "MAX_PIXELS", 10**9)
  loaded = []
  monkeypatch.setattr(Image.Image, "load", lambda self: loaded.append(self))
  error = _read_in_thread(hostile["100mp.png"])
  assert isinstance(error, predict.ImageReadError)
  assert str(error).startswith("too large: 100.0 megapixels, ")
  assert not loaded


def test_an_unreadable_file_and_memory_errors_are_reasons_too(
    hostile, tmp_path, monkeypatch):
  good = tmp_path / "digit.png"
  Image.fromarray((_l_shape(channels=1)[..., 0] * 255).astype(np.uint8)).save(
      good)
  real_open = os.open

  def denied(path, *args, **kwargs):
    if str(path) == str(good):
      raise PermissionError(13, "Permission denied")
    return real_open(path, *args, **kwargs)
  monkeypatch.setattr(os, "open", denied)
  with pytest.raises(predict.ImageReadError,
                     match=r"^cannot be opened \(Permission denied\)$"):
    predict.read_image(str(good))
  monkeypatch.undo()

  def no_memory(*args, **kwargs):
    raise MemoryError()
  monkeypatch.setattr(Image.Image, "load", no_memory)
  with pytest.raises(predict.ImageReadError,
                     match="^not enough memory to decode it$"):
    predict.read_image(str(good))
  monkeypatch.undo()
  monkeypatch.setattr(predict, "to_stored", no_memory)
  with pytest.raises(predict.ImageReadError,
                     match="^not enough memory to preprocess it$"):
    predict._read_stored(str(good), datasets.get("mnist").info, "auto")  # pylint: disable=protected-access


def test_decode_image_takes_bytes():
  png = io.BytesIO()
  Image.fromarray(np.full((5, 7), 200, np.uint8)).save(png, "PNG")
  x = predict.decode_image(png.getvalue())
  assert x.shape == (5, 7, 1) and x.dtype == np.float32
  np.testing.assert_allclose(x, 200 / 255)
  with pytest.raises(predict.ImageReadError, match="accepted format"):
    predict.decode_image(EPS)


# --------------------------------------------------------------------------
# The bundled model on real digits.


@pytest.fixture(name="digits", scope="module")
def fixture_digits():
  """The first 400 test digits, uint8 [400, 28, 28, 1], and their labels."""
  images, labels = idx.load_mnist_idx(str(shared_mnist()), "test")
  return images[:400], labels[:400]


@pytest.fixture(name="model", scope="module")
def fixture_model():
  """The bundled Efficient-CapsNet (99.73% on the test set), in batches of 8
  images: a few files make several batches."""
  return trained.load("bundled:mnist_efficient", batch_size=8)


def test_real_digits_from_files_as_from_arrays(model, digits, tmp_path):
  images, labels = digits
  out = model.predict(images, ("lengths", "predictions"))
  # 399 of the first 400 test digits right, 99.75% (2-core Intel Xeon); the
  # bundle records 99.73% over the 10,000.
  assert np.sum(out.predictions == labels) >= 398
  # The most confidently right digit of each class.
  top2 = np.sort(out.lengths, axis=-1)[:, -2:]
  margin = np.where(out.predictions == labels, top2[:, 1] - top2[:, 0], -1)
  picks = [int(np.argmax(np.where(labels == k, margin, -2))) for k in range(10)]
  assert sorted(labels[picks].tolist()) == list(range(10))
  variants = {
      "as_is": lambda x: Image.fromarray(x),
      "inverted": lambda x: Image.fromarray(255 - x),
      "100x100": lambda x: Image.fromarray(x).resize((100, 100), Image.BICUBIC),
      # A white digit on a transparent background, as a canvas exports it:
      # the alpha channel is the ink.
      "white_on_transparent": lambda x: Image.fromarray(np.dstack(
          [np.full_like(x, 255)] * 3 + [x])),
  }
  for variant, make in variants.items():
    folder = tmp_path / variant
    folder.mkdir()
    for i in picks:
      make(images[i, ..., 0]).save(folder / f"{i:03d}.png")
  results = model.predict_files([str(tmp_path / v) for v in variants])
  assert len(results) == len(picks) * len(variants)
  for r in results:
    i = int(os.path.basename(r["image"])[:3])
    assert r["prediction"] == out.predictions[i] == labels[i], r["image"]
    # The bundle carries the decoder (float16): a reconstruction per file.
    assert r["input"].shape == r["reconstruction"].shape == (28, 28, 1)


def test_an_image_with_no_ink_is_refused_by_name(model, digits, tmp_path):
  """A blank image (white, black, or wholly transparent) is refused: a
  model would still name a class for it."""
  images, labels = digits
  Image.new("L", (28, 28), 255).save(tmp_path / "white.png")
  Image.new("RGB", (40, 30), (0, 0, 0)).save(tmp_path / "black.png")
  Image.new("RGBA", (28, 28), (255, 255, 255, 0)).save(tmp_path / "clear.png")
  Image.fromarray(images[0, ..., 0]).save(tmp_path / "digit.png")
  stdout, stderr = io.StringIO(), io.StringIO()
  status = predict.run(model, [str(tmp_path)], stdout=stdout, stderr=stderr)
  assert status == errors.EXIT_SOME_FAILED == 3
  assert stderr.getvalue().splitlines() == [
      f"error: {tmp_path / n}: no ink (blank image)"
      for n in ("black.png", "clear.png", "white.png")]
  lines = [json.loads(l) for l in stdout.getvalue().splitlines()]
  assert [(os.path.basename(r["image"]), r["prediction"]) for r in lines] == [
      ("digit.png", labels[0])]


def test_a_file_name_reaches_the_terminal_escaped(model, tmp_path):
  """A name holding control characters (clear the screen, a bell) is
  printed with them escaped."""
  (tmp_path / "x\x1b[2J\x07.png").write_text("not an image")
  stderr = io.StringIO()
  assert predict.run(model, [str(tmp_path)], stdout=io.StringIO(),
                     stderr=stderr) == errors.EXIT_SOME_FAILED
  assert stderr.getvalue().splitlines() == [
      f"error: {tmp_path}/x\\x1b[2J\\x07.png: not an image file of an "
      "accepted format (PNG, JPEG, BMP, GIF, TIFF, WEBP)"]


def _write_digits(folder, images, labels, n):
  folder.mkdir(exist_ok=True)
  names = []
  for i in range(n):
    name = f"{i:02d}_label{labels[i]}.png"
    Image.fromarray(images[i, ..., 0]).save(folder / name)
    names.append(name)
  return names


def _snapshot(folder) -> dict[str, tuple[bytes, int]]:
  return {p.name: (p.read_bytes(), p.stat().st_mtime_ns)
          for p in folder.iterdir() if p.is_file()}


def test_run_names_each_bad_file_and_predicts_the_others(
    model, digits, hostile, tmp_path, monkeypatch):
  images, labels = digits
  folder = tmp_path / "scans"
  names = _write_digits(folder, images, labels, 3)
  # One more digit whose preprocessing runs out of memory.
  Image.fromarray(images[3, ..., 0]).resize((31, 29)).save(folder / "oom.png")
  real = predict.to_stored

  def to_stored(image, info, invert="auto"):
    if image.shape[:2] == (29, 31):
      raise MemoryError()
    return real(image, info, invert)
  monkeypatch.setattr(predict, "to_stored", to_stored)
  unlistable = tmp_path / "locked"
  unlistable.mkdir()
  real_listdir = os.listdir
  monkeypatch.setattr(os, "listdir", lambda p=".": (
      (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
      if str(p) == str(unlistable) else real_listdir(p)))
  bad = [hostile[c] for c in ("eps.png", "fifo.png", "nan.tif", "60mp.png",
                              "folder.png")]
  stdout, stderr = io.StringIO(), io.StringIO()
  specs = [str(folder), *map(str, bad), str(unlistable),
           str(tmp_path / "none*.png")]
  status = predict.run(model, specs, stdout=stdout, stderr=stderr)
  assert status == errors.EXIT_SOME_FAILED == 3
  lines = [json.loads(l) for l in stdout.getvalue().splitlines()]
  assert [os.path.basename(r["image"]) for r in lines] == names
  for r, label in zip(lines, labels):
    assert r["prediction"] == label and r["class_name"] == str(label)
    assert len(r["capsule_lengths"]) == 10
    assert r["prediction"] == int(np.argmax(r["capsule_lengths"]))
  assert sorted(stderr.getvalue().splitlines()) == sorted([
      f"error: {unlistable}: cannot list this folder (Permission denied)",
      f"error: {tmp_path / 'none*.png'}: no file matches",
      f"error: {folder / 'oom.png'}: not enough memory to preprocess it",
      f"error: {bad[0]}: not an image file of an accepted format (PNG, "
      "JPEG, BMP, GIF, TIFF, WEBP)",
      f"error: {bad[1]}: is a FIFO, not an image file",
      f"error: {bad[2]}: holds NaN or infinite pixels",
      f"error: {bad[3]}: too large: 60.0 megapixels, more than the 50 "
      "megapixels this reads (capsnet_jax.inference.predict.MAX_MEGAPIXELS)",
      f"error: {bad[4]}: no image files (.png, .jpg, .jpeg, .bmp, .gif, "
      ".tif, .tiff, .webp) in this folder",  # a folder spec is a folder
  ])
  # Every file predicted: status 0.
  stdout = io.StringIO()
  assert predict.run(model, [str(folder / n) for n in names],
                     stdout=stdout) == errors.EXIT_OK == 0
  assert len(stdout.getvalue().splitlines()) == 3


def test_run_streams_batch_by_batch(model, digits, tmp_path, monkeypatch):
  """20 files in batches of 8: each batch's lines are out before the next
  batch is read, so memory holds one batch whatever the number of files."""
  images, labels = digits
  names = _write_digits(tmp_path / "many", images, labels, 20)
  events = []
  real = predict.read_image
  monkeypatch.setattr(predict, "read_image", lambda path: (
      events.append("read"), real(path))[1])

  class Out:
    def write(self, text):
      if text.strip():
        events.append("print")

    def flush(self):
      pass
  assert predict.run(model, [str(tmp_path / "many")], stdout=Out()) == 0
  assert events == (["read"] * 8 + ["print"] * 8) * 2 + (
      ["read"] * 4 + ["print"] * 4)
  assert len(names) == 20


def test_out_is_checked_before_anything_is_read(model, tmp_path, monkeypatch):
  (tmp_path / "a.png").write_bytes(b"x")
  taken = tmp_path / "taken"
  taken.write_text("a file")
  monkeypatch.setattr(predict, "read_image", lambda path: pytest.fail(
      f"{path} was read before --out was checked"))
  with pytest.raises(errors.ConfigError,
                     match=f"--out={taken} is a file, not a folder"):
    predict.run(model, [str(tmp_path / "a.png")], out_dir=str(taken))
  with pytest.raises(errors.ConfigError, match="cannot be used as the "
                     "figures' folder"):
    predict.run(model, [str(tmp_path / "a.png")],
                out_dir=str(taken / "below"))
  assert taken.read_text() == "a file"


def test_out_never_overwrites_even_the_images_themselves(model, digits,
                                                         tmp_path):
  images, labels = digits
  folder = tmp_path / "scans"
  names = _write_digits(folder, images, labels, 3)
  inputs = _snapshot(folder)
  stdout = io.StringIO()
  assert predict.run(model, [str(folder)], out_dir=str(folder),
                     stdout=stdout) == 0
  lines = [json.loads(l) for l in stdout.getvalue().splitlines()]
  assert [os.path.basename(r["figure"]) for r in lines] == [
      n.replace(".png", "-2.png") for n in names]
  after = _snapshot(folder)
  assert {n: after[n] for n in inputs} == inputs  # bytes and times
  with Image.open(lines[0]["figure"]) as im:  # input | line | reconstruction
    assert im.size == (4 * (28 + 1 + 28), 4 * 28)
  # Again, over the images and the figures: new names, nothing replaced.
  assert predict.run(model, [str(folder)], out_dir=str(folder),
                     stdout=io.StringIO()) == 0
  again = _snapshot(folder)
  assert {n: again[n] for n in after} == after
  assert len(again) == 12  # 3 digits, 3 figures, then 6 figures of those 6


def test_the_command_checks_out_before_loading_the_model(tmp_path,
                                                         monkeypatch):
  from capsnet_jax import cli  # pylint: disable=g-import-not-at-top
  from configs import mnist_efficient  # pylint: disable=g-import-not-at-top
  taken = tmp_path / "taken"
  taken.write_text("a file")
  monkeypatch.setattr(trained, "load", lambda *a, **k: pytest.fail(
      "the model was loaded before --out was checked"))
  with pytest.raises(errors.ConfigError, match="is a file, not a folder"):
    cli.run("predict", mnist_efficient.get_config(), "bundled:mnist_efficient",
            images=[str(tmp_path / "a.png")], out=str(taken))
  assert taken.read_text() == "a file"
