"""Predictions on image files: --mode=predict.

Synopsis::

  python main.py --config=configs/mnist.py --workdir=runs/mnist --mode=predict \\
      --images=digit.png,scans/,"photos/*.jpg" [--out=predicted] [--invert=auto]

prints one JSON line per image on stdout::

  {"image": "digit.png", "prediction": 7, "class_name": "7", "capsule_lengths": [...]}

and, with --out=DIR, writes DIR/<name>.png: the input as the model saw it
beside its reconstruction. A file that cannot be read as an image gives
``error: <file>: <why>`` on stderr; the others are still predicted and the
exit status is 1. From Python::

  from capsnet_jax.inference import trained
  for r in trained.load("runs/mnist").predict_files(["digit.png"]):
    print(r["image"], r["prediction"], r["class_name"])

Preprocessing (``to_stored``) turns any PNG/JPEG (grayscale or colour, any
size, alpha composited over white) into an image as the dataset stores it:

  MNIST       grayscale; inverted when the background is light
              (``--invert=auto`` judges by the mean of the border pixels;
              ``always``/``never`` force it); the background (the border's
              level and grain) subtracted and the contrast stretched; the
              bounding box of the ink scaled to fit 20x20 keeping its aspect
              ratio (anti-aliased) and placed in 28x28 with its centre of
              mass at the centre, as MNIST was made (LeCun et al.); 8-bit.
  MultiMNIST  grayscale, inverted as for MNIST, centre square crop,
              resized to 36x36 (two overlapping digits filling the frame);
              the JSON line adds "predictions", the two longest capsules.
  smallNORB   grayscale (both channels for the two-camera setup), centre
              square crop, resized to the stored 48x48.
  CIFAR10     RGB, centre square crop, resized to the stored 32x32.

then the dataset's own test preprocessing (centre crops, standardisation)
runs on the device as for the test set.
"""

import glob
import json
import os
import sys
from typing import Any, Sequence

import numpy as np
from PIL import Image
from PIL import ImageOps

from capsnet_jax import errors

INVERT = ("auto", "always", "never")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff",
                    ".webp")
MNIST_BOX = 20  # The digit's bounding box is scaled to fit this square...
MNIST_SIZE = 28  # ...and centred by its centre of mass in this one.
_INK = 0.1  # Pixels above this (after normalisation) count for the bounding box.


class ImageReadError(ValueError):
  """A path that cannot be read as an image (reported, not raised, by
  predict_files)."""


# --------------------------------------------------------------------------
# Finding and reading files.


def expand_paths(specs: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
  """Files named by ``specs`` (files, folders, globs), in order, each once.

  A folder gives its files with an image extension (sorted, not recursive);
  a glob its matches (sorted); a file itself, whatever its extension.

  Returns:
    (paths, errors): errors are (spec, why) for specs that name nothing.
  """
  paths, errors, seen = [], [], set()

  def add(path):
    if path not in seen:
      seen.add(path)
      paths.append(path)

  def add_folder(folder):
    names = sorted(n for n in os.listdir(folder)
                   if n.lower().endswith(IMAGE_EXTENSIONS)
                   and os.path.isfile(os.path.join(folder, n)))
    for name in names:
      add(os.path.join(folder, name))
    return len(names)

  for spec in specs:
    if os.path.isdir(spec):
      if not add_folder(spec):
        errors.append((spec, "no image files (" + ", ".join(IMAGE_EXTENSIONS)
                       + ") in this folder"))
    elif os.path.exists(spec):
      add(spec)
    elif glob.has_magic(spec):
      matches = sorted(glob.glob(spec))
      for match in matches:
        if os.path.isdir(match):
          add_folder(match)
        else:
          add(match)
      if not matches:
        errors.append((spec, "no file matches"))
    else:
      errors.append((spec, "no such file or folder"))
  return paths, errors


def read_image(path: str) -> np.ndarray:
  """float32 [H, W, 3] (colour) or [H, W, 1] (grayscale) in [0, 1].

  EXIF orientation is applied; transparent pixels are composited over white;
  16-bit and float images are scaled by their range.

  Raises:
    ImageReadError: not a readable image.
  """
  try:
    with Image.open(path) as im:
      im.load()
      im = ImageOps.exif_transpose(im)
      mode = im.mode
      if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        x = np.asarray(im, np.float32)
        if mode != "F":
          x = x / (65535.0 if mode.startswith("I;16") or x.max() > 255 else 255.0)
        return np.clip(x, 0.0, 1.0)[..., None]
      has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
          mode == "P" and "transparency" in im.info)
      if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
      gray = im.mode in ("1", "L", "LA", "La") or (
          has_alpha and mode in ("LA", "La"))
      im = im.convert("L" if gray else "RGB")
      x = np.asarray(im, np.float32) / 255.0
  except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
    why = str(e) or type(e).__name__
    if isinstance(e, Image.UnidentifiedImageError) or "cannot identify" in why:
      why = "not an image file PIL can read"
    elif isinstance(e, FileNotFoundError):
      why = "no such file"
    elif isinstance(e, IsADirectoryError):
      why = "is a folder"
    raise ImageReadError(why) from None
  if x.size == 0:
    raise ImageReadError("empty image")
  return x if x.ndim == 3 else x[..., None]


# --------------------------------------------------------------------------
# Preprocessing.


def to_gray(image: np.ndarray) -> np.ndarray:
  """[H, W, C] in [0, 1] -> [H, W], ITU-R 601-2 luma (PIL's "L") for colour."""
  if image.shape[-1] == 1:
    return image[..., 0]
  return image[..., :3] @ np.asarray([0.299, 0.587, 0.114], np.float32)


def border_mean(gray: np.ndarray) -> float:
  """Mean of the outermost rows and columns of [H, W]."""
  h, w = gray.shape
  if h <= 2 or w <= 2:
    return float(gray.mean())
  edge = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
  return float(edge.mean())


def should_invert(gray: np.ndarray, invert: str = "auto") -> bool:
  """MNIST digits are light on dark: invert a light background (auto), or
  as forced by ``invert`` ("always", "never")."""
  if invert not in INVERT:
    raise ValueError(f"Unknown invert {invert!r}; valid: {', '.join(INVERT)}")
  if invert == "auto":
    return border_mean(gray) > 0.5
  return invert == "always"


def _resize(gray: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """[H, W] float -> [h, w] (size is (h, w)), anti-aliased (PIL's Lanczos
  filter widens with the reduction); clipped to [0, 1]."""
  h, w = size
  im = Image.fromarray(np.ascontiguousarray(gray, np.float32))  # mode "F"
  return np.clip(np.asarray(im.resize((w, h), Image.Resampling.LANCZOS)),
                 0.0, 1.0)


def center_of_mass(gray: np.ndarray) -> tuple[float, float]:
  """(row, column) of the intensity-weighted mean pixel of [H, W]."""
  total = gray.sum()
  if total <= 0:
    return ((gray.shape[0] - 1) / 2, (gray.shape[1] - 1) / 2)
  rows, cols = np.indices(gray.shape)
  return float((rows * gray).sum() / total), float((cols * gray).sum() / total)


def mnist_digit(image: np.ndarray, invert: str = "auto") -> np.ndarray:
  """Any image [H, W, C] in [0, 1] -> an MNIST-style digit [28, 28] in [0, 1].

  Grayscale; light-on-dark (see should_invert); the background (the
  border's median level and noise) subtracted and the contrast stretched;
  the ink's bounding box scaled so that its longer side is 20 px, keeping
  the aspect ratio; placed in 28x28 with the centre of mass at the centre
  ((13.5, 13.5), to the nearest pixel, the box kept inside). A blank image
  gives zeros.
  """
  gray = to_gray(np.asarray(image, np.float32))
  if should_invert(gray, invert):
    gray = 1.0 - gray
  # Paper is rarely black: everything up to the border's level plus 4 of its
  # noise's standard deviations (from the median absolute deviation) is
  # background, so that neither grey paper nor its grain counts as ink.
  border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
  background = float(np.median(border))
  noise = 1.4826 * float(np.median(np.abs(border - background)))
  floor = background + 4.0 * noise
  peak = float(gray.max())
  canvas = np.zeros((MNIST_SIZE, MNIST_SIZE), np.float32)
  if peak - floor < 1e-3:
    return canvas
  gray = np.clip((gray - floor) / (peak - floor), 0.0, 1.0)
  rows = np.flatnonzero((gray > _INK).any(axis=1))
  cols = np.flatnonzero((gray > _INK).any(axis=0))
  crop = gray[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
  h, w = crop.shape
  scale = MNIST_BOX / max(h, w)
  size = (max(1, round(h * scale)), max(1, round(w * scale)))
  digit = _resize(crop, size)
  com_r, com_c = center_of_mass(digit)
  center = (MNIST_SIZE - 1) / 2
  top = int(np.clip(round(center - com_r), 0, MNIST_SIZE - size[0]))
  left = int(np.clip(round(center - com_c), 0, MNIST_SIZE - size[1]))
  canvas[top:top + size[0], left:left + size[1]] = digit
  return canvas


def _center_square(image: np.ndarray) -> np.ndarray:
  h, w = image.shape[:2]
  s = min(h, w)
  top, left = (h - s) // 2, (w - s) // 2
  return image[top:top + s, left:left + s]


def to_stored(image: np.ndarray, info, invert: str = "auto") -> np.ndarray:
  """An image [H, W, C] in [0, 1] -> uint8 ``info.stored_shape``, as the
  dataset stores its images (see the module docstring)."""
  h, w, c = info.stored_shape
  if info.name == "mnist":
    x = mnist_digit(image, invert)[..., None]
  elif info.name == "multimnist":
    gray = _center_square(to_gray(np.asarray(image, np.float32)))
    if should_invert(gray, invert):
      gray = 1.0 - gray
    x = _resize(gray, (h, w))[..., None]
  else:
    square = _center_square(np.asarray(image, np.float32))
    if c == 3:
      rgb = square if square.shape[-1] == 3 else np.repeat(square, 3, axis=-1)
      x = np.stack([_resize(rgb[..., i], (h, w)) for i in range(3)], axis=-1)
    else:  # smallNORB: one camera, or the same image for both.
      x = np.repeat(_resize(to_gray(square), (h, w))[..., None], c, axis=-1)
  return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


# --------------------------------------------------------------------------
# Predicting.


def predict_files(model, specs: Sequence[str], invert: str = "auto"
                  ) -> list[dict[str, Any]]:
  """Predictions of a trained.TrainedModel for image files, folders, globs.

  Returns:
    One dict per file (and per spec naming nothing), in order: either
    {"image", "prediction", "class_name", "capsule_lengths", "input",
    "reconstruction"} (input: the model input as displayed, reconstruction:
    the decoder's output, both [H, W, C] in [0, 1]; None for a model without
    decoder, bundled weights) or {"image", "error"}.
  """
  if invert not in INVERT:
    raise ValueError(f"Unknown invert {invert!r}; valid: {', '.join(INVERT)}")
  paths, missing = expand_paths(specs)
  results = [{"image": spec, "error": why} for spec, why in missing]
  stored, good = [], []
  for path in paths:
    try:
      stored.append(to_stored(read_image(path), model.info, invert))
      good.append(path)
    except ImageReadError as e:
      results.append({"image": path, "error": str(e)})
  if not stored:
    return results
  stored = np.stack(stored)
  inputs = model.preprocess(stored)
  keys = ("lengths", "predictions") + (
      ("reconstructions",) if model.has_decoder else ())
  out = model.predict_preprocessed(inputs, keys)
  shown = model.display(inputs)
  names = model.info.class_names
  by_path = {r["image"]: r for r in results}
  for i, path in enumerate(good):
    pred = int(out["predictions"][i])
    by_path[path] = dict(
        image=path, prediction=pred, class_name=names[pred],
        capsule_lengths=[round(float(v), 6) for v in out["lengths"][i]],
        input=shown[i], reconstruction=(out["reconstructions"][i]
                                        if model.has_decoder else None))
    if model.info.name == "multimnist":  # two digits: the two longest
      by_path[path]["predictions"] = [
          int(k) for k in np.argsort(-out["lengths"][i], kind="stable")[:2]]
  order = [spec for spec, _ in missing] + paths
  return [by_path[p] for p in order]


def side_by_side(inputs: np.ndarray, reconstruction: np.ndarray | None,
                 scale: int = 4) -> Image.Image:
  """[H, W, C] input and reconstruction in [0, 1] -> one image, input left,
  enlarged ``scale`` times (nearest), a 1-px grey line between them (the
  input alone without a reconstruction)."""
  def rgb(x):
    x = np.clip(np.asarray(x, np.float32), 0, 1)
    return x if x.shape[-1] == 3 else np.repeat(x[..., :1], 3, axis=-1)
  a = rgb(inputs)
  if reconstruction is None:
    pair = a
  else:
    line = np.full((a.shape[0], 1, 3), 0.5, np.float32)
    pair = np.concatenate([a, line, rgb(reconstruction)], axis=1)
  im = Image.fromarray(np.round(pair * 255).astype(np.uint8))
  return im.resize((im.width * scale, im.height * scale),
                   Image.Resampling.NEAREST)


def _figure_name(path: str, used: set[str]) -> str:
  stem = os.path.splitext(os.path.basename(path))[0] or "image"
  name, k = f"{stem}.png", 2
  while name in used:
    name, k = f"{stem}-{k}.png", k + 1
  used.add(name)
  return name


def run(model, specs: Sequence[str], out_dir: str | None = None,
        invert: str = "auto", stdout=None, stderr=None) -> int:
  """--mode=predict: JSON lines on stdout, errors on stderr; returns the exit
  status (errors.EXIT_SOME_FAILED if any file could not be predicted)."""
  stdout = stdout or sys.stdout
  stderr = stderr or sys.stderr
  results = predict_files(model, specs, invert)
  if out_dir:
    os.makedirs(out_dir, exist_ok=True)
  used, failed = set(), False
  for r in results:
    if "error" in r:
      failed = True
      print(f"error: {r['image']}: {r['error']}", file=stderr, flush=True)
      continue
    record = {k: r[k] for k in ("image", "prediction", "predictions",
                                "class_name", "capsule_lengths") if k in r}
    if out_dir:
      figure = os.path.join(out_dir, _figure_name(r["image"], used))
      side_by_side(r["input"], r["reconstruction"]).save(figure)
      record["figure"] = figure
    print(json.dumps(record), file=stdout, flush=True)
  return errors.EXIT_SOME_FAILED if failed else errors.EXIT_OK
