"""MNIST-format IDX files (raw or .gz), read with validation.

Synopsis::

  images, labels = idx.load_mnist_idx("data/mnist", "train")  # [N,28,28,1] uint8, [N] int32

Every problem (missing file, wrong magic number, truncated data, mismatched
counts, wrong image size, a header announcing more than MAX_DATA_BYTES)
raises errors.DataError naming the file and what was expected. A gzip file
is never decompressed past the size its header announces.
"""

import gzip
import math
import os
import struct
import zlib

import numpy as np

from capsnet_jax.errors import DataError

# (images, labels) file stems per split, as published by LeCun et al.
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABEL_MAGIC = 0x00000801  # unsigned byte, 1 dimension
MNIST_IMAGE_SIZE = (28, 28)
# The most data one IDX file may announce: MNIST's largest holds 47 MB.
MAX_DATA_BYTES = 1 << 30


def find_file(directory: str, stem: str) -> str:
  """``directory/stem`` or ``directory/stem.gz``, whichever exists."""
  for name in (stem, stem + ".gz"):
    path = os.path.join(directory, name)
    if os.path.isfile(path):
      return path
  raise DataError(f"idx_dir {directory!r} has no {stem} or {stem}.gz; it needs "
                  f"the four MNIST files: {', '.join(sum(FILES.values(), ()))}")


def read_idx(path: str, max_bytes: int = MAX_DATA_BYTES) -> np.ndarray:
  """The uint8 array stored in an IDX file (gzip-compressed if it ends in .gz).

  The header is read first and the data size computed from it with Python
  integers (no overflow on a crafted header); a header that announces more
  than ``max_bytes`` is refused before anything is decompressed, and no
  more than the announced size (plus one byte, to notice extra data) is
  ever read or decompressed.
  """
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      head = f.read(4)
      if len(head) < 4:
        raise DataError(f"{path!r} is too short ({len(head)} bytes) to be an "
                        "IDX file")
      zero, dtype_code, ndim = struct.unpack(">HBB", head)
      if zero != 0 or dtype_code != 0x08 or ndim not in (1, 3):
        raise DataError(
            f"{path!r} has magic number 0x{struct.unpack('>I', head)[0]:08x}; "
            f"expected 0x{IMAGE_MAGIC:08x} (images) or 0x{LABEL_MAGIC:08x} "
            "(labels)")
      dims = f.read(4 * ndim)
      if len(dims) < 4 * ndim:
        raise DataError(f"{path!r} is truncated inside its header")
      shape = struct.unpack(f">{ndim}I", dims)
      expected = math.prod(int(d) for d in shape)  # Python int: exact
      if expected > max_bytes:
        raise DataError(
            f"{path!r}: its header {tuple(shape)} announces {expected} data "
            f"bytes, more than the {max_bytes} this reader accepts (a "
            "corrupt or crafted file?)")
      data = f.read(expected + 1)
  except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError.
    raise DataError(f"cannot read {path!r}: {e}") from e
  if len(data) != expected:
    got = (f"{len(data)} data bytes" if len(data) < expected
           else "more data bytes than that")
    raise DataError(f"{path!r} holds {got}; its header {tuple(shape)} needs "
                    f"{expected} (truncated or corrupt)")
  return np.frombuffer(data, np.uint8).reshape(shape)


def load_mnist_idx(directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images [N, 28, 28, 1] uint8, labels [N] int32) of ``split`` (train | test)."""
  if not os.path.isdir(directory):
    raise DataError(f"idx_dir {directory!r} is not a directory")
  image_path, label_path = (find_file(directory, stem) for stem in FILES[split])
  images, labels = read_idx(image_path), read_idx(label_path)
  if images.ndim != 3:
    raise DataError(f"{image_path!r} holds labels (1-D), not images; expected "
                    f"magic 0x{IMAGE_MAGIC:08x}")
  if labels.ndim != 1:
    raise DataError(f"{label_path!r} holds images, not labels; expected magic "
                    f"0x{LABEL_MAGIC:08x}")
  if images.shape[1:] != MNIST_IMAGE_SIZE:
    raise DataError(f"{image_path!r} holds {images.shape[1]}x{images.shape[2]} "
                    f"images; MNIST needs 28x28")
  if len(images) != len(labels):
    raise DataError(f"{image_path!r} holds {len(images)} images but "
                    f"{label_path!r} holds {len(labels)} labels")
  if len(labels) == 0:
    raise DataError(f"{label_path!r} holds no examples")
  if labels.max() > 9:
    raise DataError(f"{label_path!r} has label {int(labels.max())}; MNIST labels "
                    "are 0..9")
  return images[..., None], labels.astype(np.int32)


def check_mnist_idx_dir(directory: str) -> None:
  """Raises DataError unless ``directory`` holds a readable MNIST IDX dataset."""
  for split in FILES:
    load_mnist_idx(directory, split)
