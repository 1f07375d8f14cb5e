"""Predictions on image files: --mode=predict.

Synopsis::

  python main.py --config=configs/mnist.py --workdir=runs/mnist --mode=predict \\
      --images=digit.png,scans/,"photos/*.jpg" [--out=predicted] [--invert=auto]

prints one JSON line per image on stdout, as each batch of images is done::

  {"image": "digit.png", "prediction": 7, "class_name": "7", "capsule_lengths": [...]}

(a baseline CNN, which has no capsules: "class_probabilities", its softmax,
instead of "capsule_lengths"; its --out figures show the input alone)

and, with --out=DIR, writes a figure per image into DIR: the input as the
model saw it beside its reconstruction, as ``<name>.png``, or
``<name>-2.png``, ``<name>-3.png``... where that name is taken: an existing
file is never replaced, so --out may be the folder of the images themselves.
--out is checked (a folder, or one that can be created) before anything is
computed. From Python::

  from capsnet_jax.inference import trained
  for r in trained.load("runs/mnist").predict_files(["digit.png"]):
    print(r["image"], r["prediction"], r["class_name"])

Hostile files. A file that cannot be predicted gives one line
``error: <file>: <why>`` on stderr (the name's control characters escaped,
files.printable) and the others are still predicted; the
exit status is then errors.EXIT_SOME_FAILED (3). Such a file is one that

  - is not a regular file (a folder, a FIFO, a device: never opened in a
    way that could block), cannot be read, or does not exist;
  - is not an image in one of ALLOWED_FORMATS (PNG, JPEG, BMP, GIF, TIFF,
    WEBP), whatever its name: no other Pillow decoder (EPS, which runs
    Ghostscript, among them) is ever reached;
  - is larger than MAX_FILE_MEGABYTES (256) on disk, judged from fstat
    before any decoder sees it (Pillow's WebP reader reads a file whole);
  - holds more than MAX_MEGAPIXELS (50) megapixels, judged from its header
    before it is decoded; Pillow's DecompressionBombWarning counts as an
    error too, and running out of memory on one file fails that file only;
  - holds NaN or infinite pixels (float TIFFs);
  - has no ink: ``no ink (blank image)``, where the image as the dataset
    stores it is one flat level (a model would still name a class).

Memory stays bounded for any number of files: the file names are listed
first (before any figure is written, so figures never become inputs), then
the images are read, predicted and printed in batches of the model's batch
size. With several JAX processes, process 0 reads the files and broadcasts
each batch to the others (capsnet_jax.processes: after a barrier with a
timeout of BATCH_TIMEOUT_S); every process runs the sharded
inference, and only process 0 prints and writes figures.

Preprocessing (``to_stored``) turns any image (grayscale or colour, any
size; alpha composited over white, or over black where the visible pixels
are all of one light colour: a white digit drawn on a transparent
background, as canvas exports give, is its alpha channel) into an image as
the dataset stores it:

  MNIST       grayscale; inverted when the background is light
              (``--invert=auto`` judges by the mean of the border pixels;
              ``always``/``never`` force it); the background (the border's
              level and grain) subtracted and the contrast stretched; the
              bounding box of the ink scaled to fit 20x20 keeping its aspect
              ratio (anti-aliased) and placed in 28x28 with its centre of
              mass at the centre, as MNIST was made (LeCun et al.); 8-bit;
              for a model of the 40x40 protocol (data_setup expanded),
              that 28x28 digit centred in 40x40 (6 px of zeros each side).
  MultiMNIST  grayscale, inverted as for MNIST, centre square crop,
              resized to 36x36 (two overlapping digits filling the frame);
              the JSON line adds "predictions", the two longest capsules.
  smallNORB   grayscale (both channels for the two-camera setup), centre
              square crop, resized to the stored 48x48.
  CIFAR10     RGB, centre square crop, resized to the stored 32x32.

then the dataset's own test preprocessing (centre crops, standardisation)
runs on the device as for the test set.
"""

import contextlib
import glob
import io
import json
import os
import re
import stat
import struct
import sys
import tempfile
import warnings
from typing import Any, BinaryIO, Iterator, Sequence, TextIO

import numpy as np
from PIL import Image
from PIL import ImageOps

from capsnet_jax import errors
from capsnet_jax import processes
from capsnet_jax.training import progress
from capsnet_jax.workdir import files

INVERT = ("auto", "always", "never")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff",
                    ".webp")
# The only Pillow decoders reached, whatever a file's name.
ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
# The largest image read: 50 megapixels (a 8660 x 5774 photo) decodes to at
# most 200 MB (RGBA) and 600 MB as float RGB; Pillow's own limit (89 MP,
# and only a warning up to 179 MP) lets a kilobyte PNG make gigabytes.
MAX_MEGAPIXELS = 50
MAX_PIXELS = MAX_MEGAPIXELS * 1_000_000
# The largest file read: a 50 MP 8-bit RGBA BMP is 200 MB; anything larger
# is refused from its size before a decoder sees it.
MAX_FILE_MEGABYTES = 256
MAX_FILE_BYTES = MAX_FILE_MEGABYTES * 1024 * 1024
# Multi-process: how long the other processes wait for process 0 to read
# the next batch of files.
BATCH_TIMEOUT_S = 1800
MNIST_BOX = 20  # The digit's bounding box is scaled to fit this square...
MNIST_SIZE = 28  # ...and centred by its centre of mass in this one.
_INK = 0.1  # Pixels above this (after normalisation) count for the bounding box.


class ImageReadError(ValueError):
  """A path that cannot be read as an image (reported, not raised, by
  predict_files and run)."""


# --------------------------------------------------------------------------
# Finding and reading files.


def expand_paths(specs: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
  """Files named by ``specs`` (files, folders, globs), in order, each once.

  A folder gives its entries with an image extension that are not folders
  (sorted, not recursive; a FIFO or a broken link among them is then
  reported when read); a glob its matches (sorted); a file itself, whatever
  its extension.

  Returns:
    (paths, errors): errors are (spec, why) for specs that name nothing or
    a folder that cannot be listed.
  """
  paths, problems, seen = [], [], set()

  def add(path):
    if path not in seen:
      seen.add(path)
      paths.append(path)

  def add_folder(folder) -> int:
    try:
      names = sorted(n for n in os.listdir(folder)
                     if n.lower().endswith(IMAGE_EXTENSIONS)
                     and not os.path.isdir(os.path.join(folder, n)))
    except OSError as e:
      problems.append((folder, f"cannot list this folder ({e.strerror or e})"))
      return -1
    for name in names:
      add(os.path.join(folder, name))
    return len(names)

  for spec in specs:
    if os.path.isdir(spec):
      if add_folder(spec) == 0:
        problems.append((spec, "no image files (" + ", ".join(IMAGE_EXTENSIONS)
                         + ") in this folder"))
    elif os.path.lexists(spec):
      add(spec)
    elif glob.has_magic(spec):
      matches = sorted(glob.glob(spec))
      for match in matches:
        if os.path.isdir(match):
          add_folder(match)
        else:
          add(match)
      if not matches:
        problems.append((spec, "no file matches"))
    else:
      problems.append((spec, "no such file or folder"))
  return paths, problems


def _kind(mode: int) -> str:
  for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                     (stat.S_ISCHR, "a character device"),
                     (stat.S_ISBLK, "a block device"),
                     (stat.S_ISSOCK, "a socket")):
    if test(mode):
      return name
  return "not a regular file"


def read_image(path: str) -> np.ndarray:
  """float32 [H, W, 3] (colour) or [H, W, 1] (grayscale) in [0, 1] of the
  image file ``path`` (see decode_image).

  The file is opened without blocking and must be a regular file: a FIFO,
  a device or a folder is refused before anything is read.

  Raises:
    ImageReadError: not a readable image (one line saying why).
  """
  try:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
  except FileNotFoundError:
    raise ImageReadError("no such file") from None
  except OSError as e:
    raise ImageReadError(f"cannot be opened ({e.strerror or e})") from None
  try:
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
      kind = _kind(mode)
      raise ImageReadError(f"is {kind}, not an image file" if kind.startswith(
          "a ") else f"is {kind}")
    _check_file_size(os.fstat(fd).st_size)
    with os.fdopen(fd, "rb") as f:
      fd = None
      return decode_image(f)
  finally:
    if fd is not None:
      os.close(fd)


def _check_file_size(size: int) -> None:
  if size > MAX_FILE_BYTES:
    raise ImageReadError(
        f"too large: {size / 2**20:.1f} MB on disk, more than the "
        f"{MAX_FILE_MEGABYTES} MB this reads "
        "(capsnet_jax.inference.predict.MAX_FILE_MEGABYTES)")


def decode_image(fp: BinaryIO | bytes) -> np.ndarray:
  """float32 [H, W, 3] (colour) or [H, W, 1] (grayscale) in [0, 1] of an
  image file's bytes (a binary file object or ``bytes``).

  Only ALLOWED_FORMATS are decoded, at most MAX_MEGAPIXELS and
  MAX_FILE_BYTES. EXIF orientation is applied; transparent pixels are
  composited over white, or over black behind ink of one light colour;
  16-bit images are scaled by 65535; float images are kept in [0, 1], else
  divided by 255 within [0, 255], else scaled by their range (in float64: a
  range of +-3e38 overflows float32).

  Raises:
    ImageReadError: not an image of an allowed format, too large, NaN or
      infinite pixels, damaged, or too large for the memory left.
  """
  if isinstance(fp, (bytes, bytearray, memoryview)):
    _check_file_size(len(fp))
    fp = io.BytesIO(bytes(fp))
  else:
    with contextlib.suppress(OSError, AttributeError, ValueError,
                             io.UnsupportedOperation):
      _check_file_size(os.fstat(fp.fileno()).st_size)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(fp, formats=ALLOWED_FORMATS) as im:
        w, h = im.size
        if w * h > MAX_PIXELS:
          raise ImageReadError(_too_large(w * h))
        im.load()
        x = _to_array(im)
  except ImageReadError:
    raise
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    found = re.search(r"\((\d+) pixels\)", str(e))
    raise ImageReadError(_too_large(int(found.group(1)) if found else None)
                         ) from None
  except MemoryError:
    raise ImageReadError("not enough memory to decode it") from None
  except (OSError, ValueError, SyntaxError, EOFError, struct.error) as e:
    why = str(e) or type(e).__name__
    if isinstance(e, Image.UnidentifiedImageError) or "cannot identify" in why:
      why = ("not an image file of an accepted format ("
             + ", ".join(ALLOWED_FORMATS) + ")")
    raise ImageReadError(why) from None
  if x.size == 0:
    raise ImageReadError("empty image")
  if not np.all(np.isfinite(x)):
    raise ImageReadError("holds NaN or infinite pixels")
  return x if x.ndim == 3 else x[..., None]


def _too_large(pixels: int | None) -> str:
  size = f"{pixels / 1e6:.1f} megapixels, " if pixels else ""
  return (f"too large: {size}more than the {MAX_MEGAPIXELS} megapixels this "
          "reads (capsnet_jax.inference.predict.MAX_MEGAPIXELS)")


def _to_array(im: Image.Image) -> np.ndarray:
  """A loaded PIL image -> float32 [H, W] or [H, W, 3] in [0, 1]."""
  im = ImageOps.exif_transpose(im)
  mode = im.mode
  if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
    x = np.asarray(im, np.float64)  # float32's range overflows below
    if not np.all(np.isfinite(x)):
      return x  # refused by the caller
    if mode != "F":
      x = x / (65535.0 if mode.startswith("I;16") or x.max() > 255 else 255.0)
    else:  # Floats: as they are in [0, 1], else 0-255, else their range.
      lo, hi = float(x.min()), float(x.max())
      if lo < 0.0 or hi > 255.0:
        x = (x - lo) / max(hi - lo, 1e-12)
      elif hi > 1.0:
        x = x / 255.0
    return np.clip(x, 0.0, 1.0).astype(np.float32)[..., None]
  has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
      mode == "P" and "transparency" in im.info)
  if has_alpha:
    rgba = im.convert("RGBA")
    backdrop = Image.new("RGBA", rgba.size, _backdrop(np.asarray(rgba)))
    im = Image.alpha_composite(backdrop, rgba)
  gray = im.mode in ("1", "L", "LA", "La") or (
      has_alpha and mode in ("LA", "La"))
  im = im.convert("L" if gray else "RGB")
  return np.asarray(im, np.float32) / 255.0


_SEEN_ALPHA = 32  # Pixels at least this opaque show their colour...
_ONE_COLOUR = 8  # ...which is one colour within this many levels per channel.


def _backdrop(rgba: np.ndarray) -> tuple[int, int, int, int]:
  """What a [H, W, 4] uint8 image is composited over: white, or black where
  its visible pixels are all of one light colour. Such an image is drawn by
  its alpha channel alone (a white digit on a transparent background, as a
  canvas export gives), and over white it would be blank."""
  white, black = (255, 255, 255, 255), (0, 0, 0, 255)
  seen = rgba[..., 3] >= _SEEN_ALPHA
  if not seen.any():
    return white
  colours = rgba[..., :3][seen]
  if int((colours.max(axis=0) - colours.min(axis=0)).max()) > _ONE_COLOUR:
    return white
  luma = colours.mean(axis=0) @ np.asarray([0.299, 0.587, 0.114])
  return black if luma > 127.5 else white


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
  the aspect ratio; placed in 28x28 with the centre of mass at (14, 14) to
  the nearest pixel (the box kept inside), where MNIST's digits have theirs:
  means (14.00, 14.01) over its 60,000 training images, (13.99, 14.01) over
  the 10,000 test images. A blank image gives zeros.
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
  center = MNIST_SIZE / 2
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
    x = mnist_digit(image, invert)
    if x.shape != (h, w):  # the expanded setup: centred in 40x40
      lo = (h - MNIST_SIZE) // 2
      x = np.pad(x, ((lo, h - MNIST_SIZE - lo), (lo, w - MNIST_SIZE - lo)))
    x = x[..., None]
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
# Predicting, batch by batch.


def _read_stored(path: str, info, invert: str) -> np.ndarray:
  """The file as the dataset stores its images; ImageReadError otherwise
  (also where preprocessing runs out of memory, and for an image with no
  ink: one flat level once stored, which a model would still classify)."""
  try:
    stored = to_stored(read_image(path), info, invert)
  except MemoryError:
    raise ImageReadError("not enough memory to preprocess it") from None
  if stored.min() == stored.max():
    raise ImageReadError("no ink (blank image)")
  return stored


def _entries(model, specs: Sequence[str], invert: str, on_listed=None
             ) -> Iterator[tuple[str, np.ndarray | None, str | None]]:
  """(path or spec, stored image or None, error or None), in order, one
  file at a time; ``on_listed(n)`` first, with the number of entries."""
  paths, missing = expand_paths(specs)
  if on_listed is not None:
    on_listed(len(paths) + len(missing))
  for spec, why in missing:
    yield spec, None, why
  for path in paths:
    try:
      yield path, _read_stored(path, model.info, invert), None
    except ImageReadError as e:
      yield path, None, str(e)


def _lead_batches(model, specs, invert, on_listed=None):
  """Process 0: lists of entries holding at most model.batch_size images
  each (the errors between them ride along), read one batch at a time."""
  batch, images = [], 0
  for entry in _entries(model, specs, invert, on_listed):
    batch.append(entry)
    images += entry[1] is not None
    if images == model.batch_size:
      yield batch
      batch, images = [], 0
  if batch:
    yield batch


def _broadcast(model, tree, what: str = "the next batch of images"):
  """process 0's ``tree`` on every process, after a barrier that waits at
  most BATCH_TIMEOUT_S for them all (capsnet_jax.processes)."""
  del model
  return processes.broadcast_one_to_all(tree, what, BATCH_TIMEOUT_S)


# The JSON field of the per-class scores: a capsule model's lengths, a
# baseline CNN's softmax probabilities.
SCORE_FIELDS = ("capsule_lengths", "class_probabilities")


def score_field(model) -> str:
  """SCORE_FIELDS' entry for a trained.TrainedModel."""
  return SCORE_FIELDS[0] if model.experiment.capsules else SCORE_FIELDS[1]


def _predict_batch(model, stored: np.ndarray, figures: bool):
  """(outputs, model inputs as displayed or None) of a stored batch: the
  same calls on every process."""
  keys = ("scores", "predictions") + (
      ("reconstructions",) if figures and model.has_decoder else ())
  out = model.predict(stored, keys)
  shown = model.display(model.preprocess(stored)) if figures else None
  return out, shown


def iter_predictions(model, specs: Sequence[str], invert: str = "auto",
                     figures: bool = True, on_listed=None
                     ) -> Iterator[dict[str, Any]]:
  """Predictions of a trained.TrainedModel for image files, folders and
  globs, yielded batch by batch (at most model.batch_size images in memory).

  Yields:
    One dict per file (and per spec naming nothing), in order: either
    {"image", "prediction", "class_name", "capsule_lengths"} (a baseline
    CNN: "class_probabilities" instead of "capsule_lengths"; MultiMNIST:
    also "predictions") plus, with ``figures``, "input" (the model input as
    displayed) and "reconstruction" (the decoder's output, None without a
    decoder), both [H, W, C] in [0, 1]; or {"image", "error"}.

    With several JAX processes every process must call this alike: process
    0 reads the files and yields; the others receive each batch, run the
    same inference and yield nothing.

    ``on_listed(n)``, where given, is called on process 0 once the specs
    are listed, with the number of results to come.
  """
  if invert not in INVERT:
    raise ValueError(f"Unknown invert {invert!r}; valid: {', '.join(INVERT)}")
  import jax  # pylint: disable=g-import-not-at-top
  several = jax.process_count() > 1
  lead = jax.process_index() == 0
  shape, b = tuple(model.info.stored_shape), model.batch_size
  batches = _lead_batches(model, specs, invert, on_listed) if lead else None
  names = model.info.class_names
  while True:
    batch = next(batches, None) if lead else None
    if lead and batch is not None:
      good = [e for e in batch if e[1] is not None]
      stored = (np.stack([e[1] for e in good]) if good
                else np.zeros((0, *shape), np.uint8))
    else:
      good, stored = [], np.zeros((0, *shape), np.uint8)
    if several:  # process 0's batch (count -1: the end) on every process
      padded = np.zeros((b, *shape), np.uint8)
      padded[:len(stored)] = stored
      count = len(stored) if batch is not None else -1
      count, padded = _broadcast(model, (np.int32(count), padded))
      if int(count) < 0:
        return
      stored = np.asarray(padded)[:int(count)]
    elif batch is None:
      return
    out, shown = (_predict_batch(model, stored, figures) if len(stored)
                  else (None, None))
    if not lead:
      continue
    index = {id(e): i for i, e in enumerate(good)}
    for entry in batch:
      path, _, why = entry
      if why is not None:
        yield {"image": path, "error": why}
        continue
      i = index[id(entry)]
      pred = int(out["predictions"][i])
      result = dict(image=path, prediction=pred, class_name=names[pred])
      # The per-class scores: capsule lengths, or a baseline CNN's softmax.
      result[score_field(model)] = [round(float(v), 6)
                                    for v in out["scores"][i]]
      if model.info.name == "multimnist":  # two digits: the two longest
        result["predictions"] = [
            int(k) for k in np.argsort(-out["scores"][i], kind="stable")[:2]]
      if figures:
        result["input"] = shown[i]
        result["reconstruction"] = (out["reconstructions"][i]
                                    if model.has_decoder else None)
      yield result


def predict_files(model, specs: Sequence[str], invert: str = "auto"
                  ) -> list[dict[str, Any]]:
  """iter_predictions as a list (every result in memory: for a few files;
  ``run`` streams).

  Returns:
    One dict per file (and per spec naming nothing), in order: either
    {"image", "prediction", "class_name", "capsule_lengths", "input",
    "reconstruction"} (input: the model input as displayed, reconstruction:
    the decoder's output, both [H, W, C] in [0, 1]; None for a model without
    decoder, bundled weights) or {"image", "error"}.
  """
  return list(iter_predictions(model, specs, invert, figures=True))


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


def prepare_out(out_dir: str) -> None:
  """Checks --out before anything is computed: an existing folder that can
  be written, or one that can be created (it is).

  Raises:
    errors.ConfigError: --out names a file, or a folder that cannot be
      created or written.
  """
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise errors.ConfigError(f"--out={out_dir} is a file, not a folder: "
                             "name a folder for the figures")
  try:
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".write-test.")
    os.close(fd)
    os.unlink(tmp)
  except OSError as e:
    raise errors.ConfigError(f"--out={out_dir} cannot be used as the "
                             f"figures' folder ({e.strerror or e})") from None


def _write_figure(out_dir: str, result: dict[str, Any]) -> str:
  """The figure of one result, under a new name (see files.write_new)."""
  stem = os.path.splitext(os.path.basename(result["image"]))[0] or "image"
  png = io.BytesIO()
  side_by_side(result["input"], result["reconstruction"]).save(png, "PNG")
  return files.write_new(out_dir, stem, ".png", png.getvalue())


@contextlib.contextmanager
def json_only_stdout() -> Iterator[TextIO]:
  """A text file on the process's standard output for the JSON lines, with
  file descriptor 1 pointed at standard error meanwhile: what libraries
  print there themselves (gloo's "[Gloo] Rank 0 is connected ...") goes to
  stderr, not between the JSON lines."""
  sys.stdout.flush()
  try:
    if sys.stdout.fileno() != 1:
      raise OSError("sys.stdout is not file descriptor 1")
    saved = os.dup(1)
    os.dup2(2, 1)
  except (OSError, ValueError, AttributeError):  # replaced (a test, a
    yield sys.stdout                             # notebook): as it is
    return
  try:
    with os.fdopen(os.dup(saved), "w", buffering=1) as out:
      yield out
  finally:
    sys.stdout.flush()
    os.dup2(saved, 1)
    os.close(saved)


def run(model, specs: Sequence[str], out_dir: str | None = None,
        invert: str = "auto", stdout=None, stderr=None) -> int:
  """--mode=predict: a JSON line per image on stdout as each batch is done,
  ``error: PATH: why`` on stderr per file that failed, a figure per image
  in ``out_dir`` (never replacing a file); only process 0 prints and
  writes. Standard output holds nothing but the JSON lines (see
  json_only_stdout) unless ``stdout`` is given. The files done show as a
  progress bar on ``stderr`` where it is a terminal (capsnet_jax.training.
  progress; elsewhere a log line every PLAIN_EVERY_S seconds).

  Returns:
    The exit status: errors.EXIT_SOME_FAILED if any file could not be
    predicted, else errors.EXIT_OK (the same on every process).

  Raises:
    errors.ConfigError: ``out_dir`` is not a folder and cannot be one
      (checked before anything is computed).
  """
  import jax  # pylint: disable=g-import-not-at-top
  if stdout is None:
    with json_only_stdout() as out:
      return run(model, specs, out_dir, invert, out, stderr)
  stderr = stderr or sys.stderr
  if out_dir:  # on every process: each fails alike, none waits for another
    prepare_out(out_dir)
  failed = False
  shown = progress.Progress("predict", None, "file", stream=stderr,
                            enabled=jax.process_index() == 0)

  def say(line: str, file) -> None:
    shown.clear_for_line()  # the bar redraws below the line
    print(line, file=file, flush=True)

  with shown:
    for r in iter_predictions(model, specs, invert, figures=bool(out_dir),
                              on_listed=lambda n: shown.set(0, n)):
      if "error" in r:
        failed = True
        say(f"error: {files.printable(r['image'])}: {r['error']}", stderr)
        shown.update()
        continue
      record = {k: r[k] for k in ("image", "prediction", "predictions",
                                  "class_name") + SCORE_FIELDS if k in r}
      if out_dir:
        try:
          record["figure"] = _write_figure(out_dir, r)
        except OSError as e:
          failed = True
          say(f"error: {files.printable(r['image'])}: its figure cannot be "
              f"written to {files.printable(out_dir)} ({e.strerror or e})",
              stderr)
      say(json.dumps(record), stdout)
      shown.update()
  if jax.process_count() > 1:  # process 0's outcome is every process's
    failed = bool(_broadcast(model, np.int32(failed),
                             "the end of the predictions"))
  return errors.EXIT_SOME_FAILED if failed else errors.EXIT_OK
