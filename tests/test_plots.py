"""capsnet_jax.analysis.plots on hand-made arrays: no model, no JAX; the files are
images of the expected kind, and the array helpers give values worked out by
hand."""

import os
import subprocess
import sys

import numpy as np
from PIL import Image

from capsnet_jax.analysis import plots
from conftest import ROOT

NAMES = tuple("0123456789")


def _png_size(path):
  with Image.open(path) as im:
    assert im.format == "PNG", path
    return im.size


def test_plots_import_no_jax():
  script = ("import sys; import capsnet_jax.analysis.plots; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('jax', 'flax', 'optax') or m.startswith('capsnet_jax.')))")
  out = subprocess.run([sys.executable, "-c", script], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, check=True)
  assert out.stdout.split("\n")[0] == (
      "['capsnet_jax.analysis', 'capsnet_jax.analysis.plots']")


def test_red_green():
  pair = np.zeros((2, 2, 3, 1), np.float32)
  pair[0, 0, 0, 0] = 0.5  # first image: red
  pair[1, 0, 0, 0] = 1.5  # second: green, clipped to 1
  pair[1, 1, 2, 0] = 0.25
  expected = np.zeros((2, 3, 3), np.float32)
  expected[0, 0] = [0.5, 1.0, 0.0]
  expected[1, 2] = [0.0, 0.25, 0.0]
  np.testing.assert_array_equal(plots.red_green(pair), expected)


def test_rotation_gif_frames(tmp_path):
  # Three angles; input and reconstruction 2x3, one channel.
  inputs = np.zeros((3, 2, 3, 1), np.float32)
  recons = np.ones((3, 2, 3, 1), np.float32)
  inputs[1, 0, 1] = 1.0
  path = tmp_path / "strip.gif"
  plots.save_rotation_gif({"inputs": inputs, "reconstructions": recons}, path)
  with Image.open(path) as im:
    assert im.n_frames == 3
    assert im.size == (2 * 3 * 4, 2 * 4)  # side by side, 4x
    im.seek(1)
    frame = np.asarray(im.convert("L"))
  # Frame 1: the input on the left (one white pixel at row 0, column 1,
  # 4x4 after enlarging), the all-white reconstruction on the right.
  expected = np.zeros((8, 24), np.uint8)
  expected[0:4, 4:8] = 255
  expected[:, 12:] = 255
  np.testing.assert_array_equal(frame, expected)


def test_figures_are_pngs(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(4, 28, 28, 1)).astype(np.float32)
  labels = np.array([0, 1, 2, 3])
  plots.plot_reconstructions(images, images, labels[::-1], labels, NAMES,
                             tmp_path / "r.png")
  matrix = rng.integers(0, 20, size=(10, 10))
  plots.plot_confusion(matrix, NAMES, tmp_path / "c.png")
  sweep = dict(angles=np.array([-90.0, 0.0, 90.0]),
               accuracy=np.array([0.2, 0.9, 0.3]),
               mean_true_length=np.array([0.1, 0.8, 0.2]), num_examples=5)
  strip = dict(angles=np.array([-30, 0, 30]), inputs=images[:3],
               reconstructions=images[:3], predictions=labels[:3],
               confidence=np.array([0.5, 0.9, 0.4]))
  plots.plot_rotation_robustness(sweep, strip, NAMES, 1, tmp_path / "rot.png")
  # Without reconstructions (bundled weights): the inputs row alone, shorter.
  no_recon = {k: v for k, v in strip.items() if k != "reconstructions"}
  plots.plot_rotation_robustness(sweep, no_recon, NAMES, 1,
                                 tmp_path / "rot2.png", trained_rotation=29)
  plots.save_rotation_gif(no_recon, tmp_path / "rot2.gif")
  with Image.open(tmp_path / "rot2.gif") as im:  # the input alone, 4x
    assert im.size == (4 * 28, 4 * 28) and im.n_frames == 3
  assert _png_size(tmp_path / "rot2.png")[1] < _png_size(tmp_path / "rot.png")[1]
  rows = dict(capsules=np.array([5, 17]), coupling=np.array([0.3, 0.1]),
              prediction=3, full=images[0],
              images=rng.uniform(size=(2, 4, 28, 28, 1)))
  plots.plot_primary_caps(rows, images[0], np.linspace(0, 1, 4),
                          ["type 1 @(0,1)", "map 7 @(2,4)"], NAMES,
                          tmp_path / "p.png")
  for name in ("r", "c", "rot", "p"):
    assert min(_png_size(tmp_path / f"{name}.png")) > 100, name


def test_perturbation_figure_widens_with_examples(tmp_path):
  offsets = np.linspace(-0.25, 0.25, 11)
  grids = np.random.default_rng(0).uniform(size=(3, 2, 11, 28, 28, 1))
  plots.plot_perturbations(grids[:1], [7], offsets, NAMES, tmp_path / "1.png")
  plots.plot_perturbations(grids, [7, 2, 4], offsets, NAMES, tmp_path / "3.png")
  (w1, h1), (w3, h3) = (_png_size(tmp_path / f"{n}.png") for n in "13")
  # One block of 11 columns per example (the title is as wide as one).
  assert w3 > 2 * w1 and abs(h3 - h1) < 0.1 * h1


def test_misclassified_figure_rows_and_reconstructions(tmp_path):
  rng = np.random.default_rng(1)
  def shown(n, recons=True):
    out = dict(inputs=rng.uniform(size=(n, 28, 28, 1)),
               label=np.arange(n) % 10, prediction=(np.arange(n) + 1) % 10,
               predicted_length=np.full(n, 0.8), true_length=np.full(n, 0.3))
    if recons:
      out["predicted_recons"] = out["true_recons"] = out["inputs"]
    return out
  plots.plot_misclassified(shown(4), 4, 100, NAMES, tmp_path / "4.png")
  plots.plot_misclassified(shown(13), 29, 100, NAMES, tmp_path / "13.png")
  plots.plot_misclassified(shown(13, False), 29, 100, NAMES, tmp_path / "n.png")
  plots.plot_misclassified(shown(0), 0, 100, NAMES, tmp_path / "0.png")
  (w4, h4), (w13, h13), (wn, hn), (w0, h0) = (
      _png_size(tmp_path / f"{n}.png") for n in ("4", "13", "n", "0"))
  assert w13 > 1.2 * w4 and h13 > 1.7 * h4  # ten columns, two blocks of rows
  assert hn < 0.5 * h13  # without reconstructions: one row a block
  assert h0 < h4 and w0 > 100  # the "no misclassified images" note


def test_two_digit_figure_with_and_without_failures(tmp_path):
  rng = np.random.default_rng(0)

  def block(n):
    return dict(inputs=rng.uniform(size=(n, 36, 36, 1)),
                labels=np.tile([[1, 2]], (n, 1)),
                predicted=np.tile([[2, 1]], (n, 1)),
                predicted_recons=rng.uniform(size=(n, 2, 36, 36, 1)),
                true_recons=rng.uniform(size=(n, 2, 36, 36, 1)),
                correct=np.ones(n, bool))
  plots.plot_two_digits(block(3), block(0), 1.0, 3, tmp_path / "a.png")
  plots.plot_two_digits(block(3), block(2), 0.5, 3, tmp_path / "b.png")
  (wa, ha), (wb, hb) = (_png_size(tmp_path / f"{n}.png") for n in "ab")
  # Failures add a second block of three rows below.
  assert hb > 1.6 * ha and os.path.getsize(tmp_path / "b.png") > os.path.getsize(
      tmp_path / "a.png")
