"""The capsule explorer: a web page for looking inside a trained model.

Synopsis::

  python main.py --config=configs/mnist_efficient.py --mode=explore \\
      --workdir=bundled:mnist_efficient [--port=8765] [--host=127.0.0.1]
  python main.py --config=configs/mnist.py --mode=explore --workdir=runs/mnist

then open http://127.0.0.1:8765/. From Python::

  from capsnet_jax.analysis import explorer
  from capsnet_jax.inference import trained
  model = trained.load("runs/mnist", batch_size=1)
  app = explorer.create_app(explorer.Explorer(model))   # a Starlette app

The page (explorer_static/: plain HTML, CSS and JavaScript, nothing fetched
from elsewhere) draws or takes an image, shows the class capsules' lengths,
the reconstruction, one slider per dimension of the shown capsule, the input's
rotation and the routing's coupling. It uses this JSON API (docs/explorer.md):

  GET  /api/info     the model: classes, capsule dimensions, decoder, data
  POST /api/encode   body: the bytes of an image file, read as --mode=predict
                     reads them (capsnet_jax.inference.predict); query:
                     angle (degrees, counter-clockwise), class (the capsule
                     to reconstruct from and route to; default the
                     prediction), test_index (a test image instead of a body)
                     -> {"prediction", "class_name", "capsule_lengths",
                         "capsules", "reconstruction", "class", "input",
                         "routing", ...}
  POST /api/decode   {"class": int, "capsule": [float x dims]}
                     -> {"reconstruction": "data:image/png;base64,..."}
  GET  /api/random   a random test image, encoded (query as for encode),
                     where the MNIST test set is on this machine

A request that is not a readable image or a valid body gets HTTP 400 with
{"error": str} (any parse error, over-long number, overflow, recursion or
memory error included); the server keeps serving.

Against other web pages and other machines (docs/explorer.md, "Security"):
a Host header other than the loopback names (DNS rebinding) gets 421 and a
browser's cross-site or same-site request (``Sec-Fetch-Site``) 403;
/api/encode takes only an image or application/octet-stream body and
/api/decode only application/json (415 otherwise), so that a plain HTML
form cannot post to them; every answer carries a Content-Security-Policy
(CSP) and ``X-Content-Type-Options: nosniff``. Uploads are refused past
MAX_BODY_BYTES, past MAX_UPLOAD_MEGAPIXELS read from the image's header
before decoding, and when their body does not arrive within
BODY_TIMEOUT_S; at most MAX_UPLOADS_AT_ONCE are decoded at a time (503 for
more) and the model runs one request at a time; the server takes at most
MAX_CONNECTIONS connections. A --host that is not loopback needs --expose.

Only the model's compiled functions do the work: the model is loaded with a
batch of one image per device (trained.load's batch_size), every request
pads to it, and ``Explorer.warm_up`` compiles the forward pass and the
decoder once before the server listens, so no request compiles
(``Explorer.compilations`` counts those that would, from JAX's own
compilation events).
"""

import asyncio
import base64
import io
import ipaddress
import json
import math
import os
import re
import socket
import sys
import tempfile
import threading
import warnings
from typing import Any, Sequence

from absl import logging
import jax
import numpy as np
from PIL import Image

from capsnet_jax import errors
from capsnet_jax.analysis import arrays
from capsnet_jax.data import idx
from capsnet_jax.inference import predict
from capsnet_jax.inference import trained

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                          "explorer_static")
# Uploads larger than this are refused (a drawn digit is a few kB).
MAX_BODY_BYTES = 4 * 1024 * 1024
# The page is a drawing canvas: an upload of more pixels than this is
# refused from its header, before it is decoded (predict's 50 MP would let
# a 160 kB PNG take seconds and gigabytes).
MAX_UPLOAD_MEGAPIXELS = 4
MAX_UPLOAD_PIXELS = MAX_UPLOAD_MEGAPIXELS * 1_000_000
# Uploads decoded at a time; more are refused with 503 (the model itself
# runs one request at a time).
MAX_UPLOADS_AT_ONCE = 2
# A request body that has not arrived in this time is refused (408).
BODY_TIMEOUT_S = 20.0
# Connections the server holds at once (uvicorn answers 503 past it).
MAX_CONNECTIONS = 32
# The Host names a loopback explorer answers to (any port): others are a
# DNS-rebinding page's requests.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# On every answer: only the page's own scripts, styles and images (and the
# data: URLs of the images it is sent), and no content sniffing.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
MAX_ANGLE = 360.0
# Where a random test digit comes from when the run's idx_dir is gone: the
# real MNIST beside the checkout, relative to the current directory.
SHARED_MNIST = os.path.join("..", "shared", "data", "mnist")
# JAX's events for a function traced or compiled (jax._src.dispatch).
_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/backend_compile_duration")
# The routing view sends every primary capsule's coupling to every class
# when there are at most this many primary capsules (Efficient-CapsNet's 16).
_FULL_MATRIX_MAX_PRIMARY = 64


class RequestError(ValueError):
  """A request the explorer cannot serve: HTTP ``status`` with the message."""

  def __init__(self, message: str, status: int = 400):
    super().__init__(message)
    self.status = status


# --------------------------------------------------------------------------
# Images as data: URLs.


def png_data_url(image: np.ndarray) -> str:
  """[H, W, C] in [0, 1] (or uint8) -> "data:image/png;base64,...": one
  channel as grayscale, three as RGB, others side by side in gray."""
  x = np.asarray(image)
  if x.dtype != np.uint8:
    x = np.round(np.clip(np.nan_to_num(x.astype(np.float32)), 0, 1) * 255
                 ).astype(np.uint8)
  if x.ndim == 3 and x.shape[-1] == 1:
    x = x[..., 0]
  elif x.ndim == 3 and x.shape[-1] != 3:
    x = np.concatenate(list(np.moveaxis(x, -1, 0)), axis=1)
  buffer = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(x)).save(buffer, format="PNG")
  return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# --------------------------------------------------------------------------
# Where the test digits are.


def find_test_images(dirs: Sequence[str]) -> str | None:
  """The first of ``dirs`` holding the MNIST test set as IDX files, or None."""
  for directory in dirs:
    if not directory or not os.path.isdir(directory):
      continue
    try:
      for stem in idx.FILES["test"]:
        idx.find_file(directory, stem)
    except errors.DataError:
      continue
    return directory
  return None


def data_dirs(config, workdir: str) -> list[str]:
  """Where to look for test digits: the command line's idx_dir, the run's
  recorded idx_dir, then ../shared/data/mnist."""
  saved = trained.read_config(workdir)
  return [d for d in (config.get("idx_dir", ""),
                      saved.get("idx_dir", "") if saved is not None else "",
                      SHARED_MNIST) if d]


# --------------------------------------------------------------------------
# The model side of every request, without HTTP.


def _shown(value, limit: int = 40) -> str:
  """repr(value) for an error message, cut to ``limit`` characters (a
  number of thousands of digits is not echoed back whole)."""
  if isinstance(value, int) and not isinstance(value, bool) and (
      value.bit_length() > 128):
    return f"a number of about {int(value.bit_length() * 0.30103)} digits"
  text = repr(value)
  return text if len(text) <= limit else text[:limit] + "..."


def _number(value, name: str, lo: float, hi: float) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float, str)):
    raise RequestError(f"{name} must be a number, got {_shown(value)}")
  try:
    number = float(value)
  except ValueError:
    raise RequestError(f"{name} must be a number, got {_shown(value)}"
                       ) from None
  except OverflowError:  # an integer beyond float's range
    number = math.inf
  if not math.isfinite(number) or not lo <= number <= hi:
    raise RequestError(f"{name} must lie in [{lo:g}, {hi:g}], got "
                       f"{_shown(value)}")
  return number


def _integer(value, name: str, size: int) -> int:
  if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]+\s*", value):
    if len(value.strip().lstrip("-")) > 18:  # int() refuses past 4,300 digits
      raise RequestError(f"{name} must be in 0..{size - 1}, got "
                         f"{_shown(value)}")
    value = int(value)
  if isinstance(value, bool) or not isinstance(value, int):
    raise RequestError(f"{name} must be an integer, got {_shown(value)}")
  if not 0 <= value < size:
    raise RequestError(f"{name} must be in 0..{size - 1}, got {_shown(value)}")
  return value


def _pixels_in_header(data: bytes) -> int | None:
  """Width x height from an image file's header (nothing is decoded), or
  None where Pillow cannot tell (predict's reading then says why)."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      with Image.open(io.BytesIO(data), formats=predict.ALLOWED_FORMATS) as im:
        width, height = im.size
  except Image.DecompressionBombError:  # past Pillow's own 179 MP
    return Image.MAX_IMAGE_PIXELS * 2 + 1
  except Exception:  # pylint: disable=broad-except  # any decoder's error
    return None
  return int(width) * int(height)


class Explorer:
  """What the explorer's endpoints compute, for one trained model.

  Thread-safe: the model runs one request at a time.

  Args:
    model: a trained.TrainedModel, best loaded with ``batch_size=1`` (one
      image per device): every request pads to the model's batch.
    test_dirs: folders that may hold the MNIST test set (IDX files), for
      random test digits; the first that does is used.
    invert: as --invert for --mode=predict (MNIST: light backgrounds).
    seed: of the random test digits.
    name: what the page calls the model's source (default: its folder);
      --mode=explore gives the --workdir as typed ("bundled:mnist_efficient").
  """

  def __init__(self, model: trained.TrainedModel, test_dirs: Sequence[str] = (),
               invert: str = "auto", seed: int | None = None,
               name: str | None = None):
    if invert not in predict.INVERT:
      raise ValueError(f"Unknown invert {invert!r}; valid: "
                       f"{', '.join(predict.INVERT)}")
    self.model = model
    self.invert = invert
    self.name = name or model.workdir
    info = model.info
    self.num_classes = int(info.num_classes)
    self.class_names = [str(n) for n in info.class_names]
    self.stored_shape = tuple(int(d) for d in info.stored_shape)
    # Read off the class capsules in warm_up (the model's class_dim).
    self.dims = getattr(model.model, "class_dim", None)
    self.test_dir = (find_test_images(test_dirs)
                     if info.name == "mnist" else None)
    self._test: tuple[np.ndarray, np.ndarray] | None = None
    self._rng = np.random.default_rng(seed)
    self._lock = threading.Lock()
    self._uploads = threading.BoundedSemaphore(MAX_UPLOADS_AT_ONCE)
    self._grid: tuple[int, int, int] | None = None
    self.compilations = 0  # JAX traces/compilations since warm_up ended
    self._counting = False
    jax.monitoring.register_event_duration_secs_listener(self._on_event)

  def close(self) -> None:
    """Stops counting compilations (the listener is process-wide)."""
    jax.monitoring.unregister_event_duration_listener(self._on_event)

  def _on_event(self, event: str, duration: float, **kwargs) -> None:
    del duration, kwargs
    if self._counting and event in _COMPILE_EVENTS:
      self.compilations += 1

  # ------------------------------------------------------------------
  # Requests.

  def warm_up(self) -> None:
    """Compiles every function the requests use (a blank image through
    encode, its capsule through decode); compilations counts from here."""
    out = self.encode_stored(np.zeros(self.stored_shape, np.uint8))
    self.dims = len(out["capsules"][0])
    if self.model.has_decoder:
      k = out["class"]
      self.decode({"class": k, "capsule": out["capsules"][k]})
    self.compilations = 0
    self._counting = True

  def info(self) -> dict[str, Any]:
    """The model, for the page: classes, dimensions, decoder, test data."""
    exp = self.model.experiment
    return {
        "model": exp.model_name, "dataset": self.model.info.name,
        "workdir": self.name, "step": self.model.step,
        "class_names": self.class_names, "num_classes": self.num_classes,
        "dims": self.dims, "stored_shape": list(self.stored_shape),
        "input_shape": list(self.model.info.image_shape),
        "has_decoder": bool(self.model.has_decoder),
        "random_available": self.test_dir is not None,
        "routing": "attention" if exp.primary_types is None else "dynamic",
        "compilations": self.compilations,
    }

  def read(self, data: bytes) -> np.ndarray:
    """The bytes of an image file -> a stored uint8 image, as --mode=predict
    reads a file (predict.read_image, predict.to_stored)."""
    if not data:
      raise RequestError("empty body: send the bytes of an image file "
                         "(PNG, JPEG, ...)")
    if len(data) > MAX_BODY_BYTES:
      raise RequestError(f"the body is larger than {MAX_BODY_BYTES} bytes",
                         status=413)
    pixels = _pixels_in_header(data)
    if pixels is not None and pixels > MAX_UPLOAD_PIXELS:
      raise RequestError(
          f"too large: {pixels / 1e6:.1f} megapixels, more than the "
          f"{MAX_UPLOAD_MEGAPIXELS} megapixels the explorer reads (draw or "
          "crop the digit; --mode=predict reads larger images)", status=413)
    if not self._uploads.acquire(blocking=False):
      raise RequestError(f"busy: {MAX_UPLOADS_AT_ONCE} uploads are being "
                         "read; try again in a moment", status=503)
    # The very reading --mode=predict does, on a file of these bytes.
    try:
      with tempfile.NamedTemporaryFile(prefix="capsnet-explore-",
                                       suffix=".img") as f:
        f.write(data)
        f.flush()
        try:
          image = predict.read_image(f.name)
          # ValueError (ImageReadError's base): an image predict refuses.
          return predict.to_stored(image, self.model.info, self.invert)
        except ValueError as e:
          raise RequestError(f"not a readable image: {e}") from None
        except MemoryError:
          raise RequestError("not a readable image: not enough memory to "
                             "read it", status=413) from None
    finally:
      self._uploads.release()

  def encode(self, data: bytes, angle=0.0, show=None) -> dict[str, Any]:
    """POST /api/encode: an image file's bytes -> capsules and views."""
    return self.encode_stored(self.read(data), angle, show)

  def encode_stored(self, stored: np.ndarray, angle=0.0, show=None
                    ) -> dict[str, Any]:
    """A stored uint8 image [H, W, C], rotated by ``angle`` degrees
    (counter-clockwise) -> capsules, lengths, the reconstruction from the
    ``show`` capsule (default the predicted one) and the routing view."""
    angle = _number(angle, "angle", -MAX_ANGLE, MAX_ANGLE)
    if show is not None and show != "":
      show = _integer(show, "class", self.num_classes)
    else:
      show = None
    x = arrays.rotate(np.asarray(stored)[None], angle)
    with self._lock:
      out = self.model.predict(x, ("lengths", "predictions", "class_caps",
                                   "primary_caps", "coupling"))
      prediction = int(out.predictions[0])
      shown = prediction if show is None else show
      reconstruction = (self.model.decode(out.class_caps, [shown])[0]
                        if self.model.has_decoder else None)
    caps = out.class_caps[0]
    return {
        "prediction": prediction,
        "class_name": self.class_names[prediction],
        "capsule_lengths": [round(float(v), 6) for v in out.lengths[0]],
        "capsules": [[round(float(v), 6) for v in row] for row in caps],
        "reconstruction": (png_data_url(reconstruction)
                           if reconstruction is not None else None),
        "class": shown,
        "angle": angle,
        "input": png_data_url(x[0]),
        "routing": self._routing(out.coupling[0], out.primary_caps[0], shown),
    }

  def _routing(self, coupling: np.ndarray, primary: np.ndarray, shown: int
               ) -> dict[str, Any]:
    """The routing view: every primary capsule's coupling [P] to the shown
    class, laid out on the primary grid (height, width, types), with the
    primary capsules' lengths [P]; for few primary capsules (Efficient-
    CapsNet) the whole [P, K] matrix too."""
    exp = self.model.experiment
    num_primary = int(coupling.shape[0])
    if self._grid is None:
      try:
        self._grid = arrays.primary_grid_shape(
            exp.primary_types, exp.config.get("conv_padding", "valid"),
            self.model.info.image_shape, num_primary)
      except ValueError as e:  # a variant of other kernels: one long row
        logging.warning("explorer: %s; the routing view shows the primary "
                        "capsules in one row", e)
        self._grid = (1, 1, num_primary)
    lengths = np.sqrt(np.sum(np.square(primary.astype(np.float32)), axis=-1))
    view = {
        "kind": "attention" if exp.primary_types is None else "dynamic",
        "grid": list(self._grid),
        "grouping": exp.primary_grouping,
        "class": shown,
        "uniform": 1.0 / self.num_classes,
        "coupling": [round(float(v), 5) for v in coupling[:, shown]],
        "primary_lengths": [round(float(v), 5) for v in lengths],
    }
    if num_primary <= _FULL_MATRIX_MAX_PRIMARY:
      view["matrix"] = [[round(float(v), 5) for v in row] for row in coupling]
    return view

  def test_image(self, index: int) -> tuple[np.ndarray, int]:
    """(stored uint8 image [H, W, C], label) of test image ``index``."""
    images, labels = self._test_set()
    index = _integer(index, "test_index", len(images))
    return images[index], int(labels[index])

  def _test_set(self) -> tuple[np.ndarray, np.ndarray]:
    if self.test_dir is None:
      raise RequestError("no test images on this machine: pass "
                         "--config.idx_dir=DIR (a folder of MNIST IDX files)",
                         status=404)
    if self._test is None:
      try:
        self._test = idx.load_mnist_idx(self.test_dir, "test")
      except errors.DataError as e:
        raise RequestError(f"the test images in {self.test_dir} cannot be "
                           f"read: {e}", status=404) from None
    return self._test

  def random_test(self, angle=0.0, show=None) -> dict[str, Any]:
    """GET /api/random: a random test image, encoded, with its index and
    label."""
    images, _ = self._test_set()
    index = int(self._rng.integers(len(images)))
    return self.encode_test(index, angle, show)

  def encode_test(self, index, angle=0.0, show=None) -> dict[str, Any]:
    image, label = self.test_image(index)
    out = self.encode_stored(image, angle, show)
    out.update(test_index=int(index), label=label)
    return out

  def decode(self, body: Any) -> dict[str, Any]:
    """POST /api/decode: {"class": k, "capsule": [D floats]} -> the
    decoder's image for that class capsule alone."""
    if not self.model.has_decoder:
      raise RequestError(f"{self.model.workdir} has no decoder: these "
                         "weights cannot reconstruct", status=409)
    if not isinstance(body, dict):
      raise RequestError('the body must be a JSON object {"class": int, '
                         '"capsule": [float, ...]}')
    for key in ("class", "capsule"):
      if key not in body:
        raise RequestError(f'the body has no "{key}"')
    label = _integer(body["class"], "class", self.num_classes)
    capsule = body["capsule"]
    if not isinstance(capsule, list) or (
        self.dims is not None and len(capsule) != self.dims):
      raise RequestError(f"capsule must be a list of {self.dims} numbers")
    values = [_number(v, f"capsule[{i}]", -1e3, 1e3)
              for i, v in enumerate(capsule)]
    caps = np.zeros((1, self.num_classes, len(values)), np.float32)
    caps[0, label] = values
    with self._lock:
      image = self.model.decode(caps, [label])[0]
    return {"reconstruction": png_data_url(image), "class": label}


# --------------------------------------------------------------------------
# HTTP (Starlette), served by uvicorn.


async def _read_body(request) -> bytes:
  """The request's body, refused past MAX_BODY_BYTES or when it has not
  arrived within BODY_TIMEOUT_S (a client that sends the headers and a few
  bytes does not hold its connection for ever)."""
  declared = request.headers.get("content-length")
  if (declared and re.fullmatch(r"[0-9]{1,30}", declared)
      and int(declared) > MAX_BODY_BYTES):
    raise RequestError(f"the body is larger than {MAX_BODY_BYTES} bytes",
                       status=413)
  chunks, size = [], 0
  try:
    async with asyncio.timeout(BODY_TIMEOUT_S):
      async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
          raise RequestError(f"the body is larger than {MAX_BODY_BYTES} "
                             "bytes", status=413)
        chunks.append(chunk)
  except TimeoutError:
    raise RequestError(f"the body did not arrive within {BODY_TIMEOUT_S:g} s",
                       status=408) from None
  return b"".join(chunks)


def _media_type(request) -> str:
  return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _host_name(host: str) -> str:
  """The name of a Host header without its port: "[::1]:80" -> "::1"."""
  host = host.strip().lower()
  if host.startswith("["):
    return host[1:].split("]", 1)[0]
  return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class _Guard:
  """ASGI middleware before every route: refuses a Host other than
  ``allowed_hosts`` (None: any; 421) and browsers' cross-site and
  same-site requests (403), with {"error": ...}, and adds SECURITY_HEADERS
  to every answer."""

  def __init__(self, app, allowed_hosts: Sequence[str] | None):
    self.app = app
    self.allowed = (None if allowed_hosts is None
                    else {h.lower() for h in allowed_hosts})
    self.extra = [(k.lower().encode(), v.encode())
                  for k, v in SECURITY_HEADERS.items()]

  def _refusal(self, headers: dict[str, str]) -> tuple[int, str] | None:
    host = headers.get("host", "")
    if self.allowed is not None and _host_name(host) not in self.allowed:
      return 421, (f"this explorer answers to {', '.join(sorted(self.allowed))}"
                   f", not to the Host {_shown(host)}")
    site = headers.get("sec-fetch-site", "").strip().lower()
    if site in ("cross-site", "same-site"):
      return 403, f"refused: a {site} request (from another web page)"
    return None

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      await self.app(scope, receive, send)
      return

    async def send_secured(message):
      if message["type"] == "http.response.start":
        message = dict(message)
        message["headers"] = list(message.get("headers", [])) + self.extra
      await send(message)
    headers = {k.decode("latin-1").lower(): v.decode("latin-1")
               for k, v in scope.get("headers", [])}
    refusal = self._refusal(headers)
    if refusal is None:
      await self.app(scope, receive, send_secured)
      return
    from starlette.responses import JSONResponse  # pylint: disable=g-import-not-at-top
    response = JSONResponse({"error": refusal[1]}, status_code=refusal[0],
                            headers={"Cache-Control": "no-store"})
    await response(scope, receive, send_secured)


def create_app(explorer: Explorer,
               allowed_hosts: Sequence[str] | None = LOOPBACK_HOSTS):
  """The Starlette app: the page (explorer_static/) and the JSON API,
  behind _Guard (``allowed_hosts``: the Host names it answers to; None:
  any, for a server exposed with --expose)."""
  # Imported here: only the explorer needs the web server's packages.
  from starlette.applications import Starlette  # pylint: disable=g-import-not-at-top
  from starlette.concurrency import run_in_threadpool  # pylint: disable=g-import-not-at-top
  from starlette.exceptions import HTTPException  # pylint: disable=g-import-not-at-top
  from starlette.responses import FileResponse, JSONResponse  # pylint: disable=g-import-not-at-top
  from starlette.routing import Mount, Route  # pylint: disable=g-import-not-at-top
  from starlette.staticfiles import StaticFiles  # pylint: disable=g-import-not-at-top

  no_store = {"Cache-Control": "no-store"}

  def reply(payload: dict[str, Any]):
    return JSONResponse(payload, headers=no_store)

  async def page(request):
    del request
    return FileResponse(os.path.join(STATIC_DIR, "index.html"),
                        headers=no_store)

  async def info(request):
    del request
    return reply(explorer.info())

  async def encode(request):
    kind = _media_type(request)
    if not (kind == "application/octet-stream" or kind.startswith("image/")):
      raise RequestError("send the image with Content-Type image/... or "
                         f"application/octet-stream, not {_shown(kind)}",
                         status=415)
    query = request.query_params
    angle, show = query.get("angle", 0.0), query.get("class")
    if query.get("test_index") not in (None, ""):
      return reply(await run_in_threadpool(
          explorer.encode_test, query["test_index"], angle, show))
    data = await _read_body(request)
    return reply(await run_in_threadpool(explorer.encode, data, angle, show))

  async def decode(request):
    if _media_type(request) != "application/json":
      raise RequestError("send the body with Content-Type application/json, "
                         f"not {_shown(_media_type(request))}", status=415)
    data = await _read_body(request)
    try:
      body = json.loads(data.decode("utf-8"))
    except RecursionError:
      raise RequestError("the body is not JSON: nested too deep") from None
    except ValueError as e:  # JSONDecodeError, an integer of > 4,300 digits
      raise RequestError(f"the body is not JSON: {str(e)[:200]}") from None
    return reply(await run_in_threadpool(explorer.decode, body))

  async def random_digit(request):
    query = request.query_params
    return reply(await run_in_threadpool(
        explorer.random_test, query.get("angle", 0.0), query.get("class")))

  async def request_error(request, e: RequestError):
    del request
    return JSONResponse({"error": str(e)}, status_code=e.status,
                        headers=no_store)

  async def http_error(request, e: HTTPException):
    del request
    return JSONResponse({"error": str(e.detail)}, status_code=e.status_code,
                        headers=no_store)

  async def resource_error(request, e: Exception):
    del request
    status, why = ((413, "too large for the memory left")
                   if isinstance(e, MemoryError) else (400, "nested too deep"))
    return JSONResponse({"error": f"the request is {why}"},
                        status_code=status, headers=no_store)

  async def internal_error(request, e: Exception):
    logging.exception("explorer: %s %s failed", request.method,
                      request.url.path)
    return JSONResponse({"error": f"internal error: {type(e).__name__}: {e}"},
                        status_code=500, headers=no_store)

  routes = [
      Route("/", page),
      Route("/api/info", info),
      Route("/api/encode", encode, methods=["POST"]),
      Route("/api/decode", decode, methods=["POST"]),
      Route("/api/random", random_digit, methods=["GET", "POST"]),
      Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
  ]
  app = Starlette(routes=routes, exception_handlers={
      RequestError: request_error, HTTPException: http_error,
      MemoryError: resource_error, RecursionError: resource_error,
      Exception: internal_error})
  return _Guard(app, allowed_hosts)


def bind(host: str, port: int) -> socket.socket:
  """A listening TCP socket on host:port (port 0: a free one).

  Raises:
    errors.ConfigError: the address cannot be bound (in use, not local).
  """
  try:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
  except socket.gaierror as e:
    raise errors.ConfigError(f"--host={host}: {e.strerror or e}") from None
  family, kind, proto, _, address = infos[0]
  sock = socket.socket(family, kind, proto)
  try:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(128)
  except OSError as e:
    sock.close()
    raise errors.ConfigError(
        f"cannot listen on {host}:{port} ({e.strerror or e}): choose another "
        "--port or --host") from None
  sock.set_inheritable(True)
  return sock


def make_server(app):
  """A uvicorn server for ``app`` (serve on a bound socket with
  ``server.run(sockets=[sock])``; stop with ``server.should_exit = True``)."""
  import uvicorn  # pylint: disable=g-import-not-at-top
  return uvicorn.Server(uvicorn.Config(
      app, log_level="warning", access_log=False, lifespan="off",
      limit_concurrency=MAX_CONNECTIONS, timeout_keep_alive=5,
      h11_max_incomplete_event_size=16 * 1024))


def _loopback(address: str) -> bool:
  try:
    return ipaddress.ip_address(address).is_loopback
  except ValueError:
    return False


def _loopback_host(host: str) -> bool:
  """Whether --host names loopback: "localhost" or a loopback address."""
  return host.strip().lower() == "localhost" or _loopback(host.strip("[]"))


def url(sock: socket.socket) -> str:
  host, port = sock.getsockname()[:2]
  host = f"[{host}]" if ":" in host else host
  return f"http://{host}:{port}/"


def serve(explorer: Explorer, sock: socket.socket, stdout=None,
          allowed_hosts: Sequence[str] | None = LOOPBACK_HOSTS) -> None:
  """Serves ``explorer`` on the bound ``sock`` (see bind) until interrupted
  (Ctrl-C: KeyboardInterrupt once the server has shut down); prints its
  address first."""
  stdout = stdout or sys.stdout
  server = make_server(create_app(explorer, allowed_hosts))
  print(f"Capsule explorer: {url(sock)} (Ctrl-C stops it)", file=stdout,
        flush=True)
  try:
    asyncio.run(server.serve(sockets=[sock]))
  finally:
    sock.close()


def load(config, workdir: str, batch_size: int | None = None
         ) -> trained.TrainedModel:
  """The workdir's (or bundle's) model for the explorer: the model fields
  recorded with it, the command line's config.checkpoint, one image per
  device."""
  # Imported here: capsnet_jax.experiment is heavy only when it runs.
  from capsnet_jax import experiment  # pylint: disable=g-import-not-at-top
  merged = trained.with_workdir_model(config, workdir)
  merged.idx_dir = merged.tfds_data_dir = ""
  exp = experiment.resolve(merged, "explore")
  return trained.load(workdir, which=trained.which_checkpoint(exp.config),
                      config=exp, batch_size=batch_size or jax.device_count())


def run(config, workdir: str, host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT, invert: str = "auto",
        expose: bool = False) -> int:
  """--mode=explore: loads the model, compiles, serves until Ctrl-C.

  A ``host`` that is not loopback is refused (errors.ConfigError) unless
  ``expose`` (--expose): then any machine that reaches it may use the
  explorer, and any Host header is answered."""
  try:
    import starlette  # pylint: disable=g-import-not-at-top,unused-import
    import uvicorn  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise errors.ConfigError(
        f"--mode=explore needs {e.name} (a dependency of capsnet-jax): pip "
        "install -r requirements.txt") from None
  if not _loopback_host(host) and not expose:
    raise errors.ConfigError(
        f"--host={host} is not a loopback address: every machine that can "
        "reach it could use the explorer (no authentication: it runs the "
        "model on anyone's uploads and serves the model's description); "
        "pass --expose as well to do so, or leave --host out")
  sock = bind(host, port)  # before loading: a busy port refuses at once
  address = sock.getsockname()[0]
  allowed = (*LOOPBACK_HOSTS, address)
  if not _loopback(address):
    if not expose:
      sock.close()
      raise errors.ConfigError(f"--host={host} binds {address}, not "
                               "loopback: pass --expose as well to do so")
    allowed = None
    logging.warning("explorer: --expose: listening on %s (%s); every machine "
                    "that reaches it may use the explorer, which has no "
                    "authentication", host, address)
  try:
    model = load(config, workdir)
    explorer = Explorer(model, data_dirs(config, workdir), invert=invert,
                        name=workdir)
  except BaseException:
    sock.close()
    raise
  try:
    explorer.warm_up()
    logging.info("explorer: %s (step %d); test digits from %s", workdir,
                 model.step, explorer.test_dir or "nowhere")
    serve(explorer, sock, allowed_hosts=allowed)
  except KeyboardInterrupt:
    pass
  finally:
    sock.close()
    explorer.close()
  return errors.EXIT_OK
