"""MNIST-format IDX files: parsing of hand-written bytes, raw and gzip files,
and the one-line DataError for each kind of damage."""

import gzip
import struct

import numpy as np
import pytest

from capsnet_jax.data import idx
from capsnet_jax.errors import DataError
from conftest import make_idx_dir, write_idx


def test_read_idx_parses_a_hand_written_header(tmp_path):
  # Magic 0x00000803 (uint8, 3 dims), then 2 x 3 x 2, then 12 data bytes.
  data = bytes(range(12))
  path = tmp_path / "images"
  path.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">III", 2, 3, 2) + data)
  array = idx.read_idx(str(path))
  assert array.dtype == np.uint8 and array.shape == (2, 3, 2)
  assert array[1, 2, 1] == 11 and array[0, 1, 0] == 2
  labels = tmp_path / "labels.gz"
  with gzip.open(labels, "wb") as f:
    f.write(b"\x00\x00\x08\x01" + struct.pack(">I", 3) + bytes([7, 0, 9]))
  assert idx.read_idx(str(labels)).tolist() == [7, 0, 9]


def test_idx_raw_and_gzip_agree(tmp_path):
  images = np.random.default_rng(0).integers(0, 256, (5, 28, 28))
  write_idx(tmp_path / "a", images, compress=False)
  write_idx(tmp_path / "b", images, compress=True)
  np.testing.assert_array_equal(idx.read_idx(str(tmp_path / "a")),
                                idx.read_idx(str(tmp_path / "b.gz")))


def test_load_mnist_idx_shapes_and_dtypes(tmp_path):
  d = make_idx_dir(tmp_path / "d", n_train=8, n_test=6)
  images, labels = idx.load_mnist_idx(str(d), "test")
  assert images.shape == (6, 28, 28, 1) and images.dtype == np.uint8
  assert labels.shape == (6,) and labels.dtype == np.int32


@pytest.mark.parametrize("damage,message", [
    ("magic", "magic number"),
    ("truncate", "truncated"),
    ("count", "labels"),
    ("size", "28x28"),
    ("missing", "has no t10k-labels-idx1-ubyte"),
    ("label", "has label 10"),
    ("empty", "holds no examples"),
    ("swapped", "holds labels .1-D., not images"),
    ("short", "too short"),
])
def test_idx_errors_name_the_problem(tmp_path, damage, message):
  d = make_idx_dir(tmp_path / "d", n_train=8, n_test=6)
  images = np.zeros((6, 28, 28), np.uint8)
  raw = d / "t10k-images-idx3-ubyte"
  if damage in ("magic", "truncate"):
    (d / "t10k-images-idx3-ubyte.gz").unlink()
    write_idx(raw, images, compress=False)
    data = bytearray(raw.read_bytes())
    if damage == "magic":
      data[2] = 0x09
    else:
      data = data[:-10]
    raw.write_bytes(bytes(data))
  elif damage == "count":
    write_idx(raw, np.zeros((5, 28, 28)))
  elif damage == "size":
    write_idx(raw, np.zeros((6, 32, 32)))
  elif damage == "missing":
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
  elif damage == "label":
    write_idx(d / "t10k-labels-idx1-ubyte", np.array([0, 1, 2, 3, 4, 10]))
  elif damage == "empty":
    write_idx(raw, np.zeros((0, 28, 28)))
    write_idx(d / "t10k-labels-idx1-ubyte", np.zeros((0,)))
  elif damage == "swapped":
    write_idx(raw, np.zeros((6,)))
  else:
    (d / "t10k-images-idx3-ubyte.gz").unlink()
    raw.write_bytes(b"\x00\x00")
  with pytest.raises(DataError, match=message):
    idx.check_mnist_idx_dir(str(d))


def test_a_missing_folder_is_named(tmp_path):
  with pytest.raises(DataError, match="is not a directory"):
    idx.load_mnist_idx(str(tmp_path / "nowhere"), "train")


def test_a_header_whose_size_overflows_int64_is_refused(tmp_path):
  """2^31 x 2^31 x 4 bytes is 2^64: numpy's int64 product wraps to 0, which
  an empty data section would match."""
  path = tmp_path / "crafted-idx3-ubyte"
  path.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">III", 2**31, 2**31, 4))
  with pytest.raises(DataError, match=r"announces 18446744073709551616 data "
                     r"bytes, more than the 1073741824"):
    idx.read_idx(str(path))


def test_gzip_is_never_decompressed_past_the_announced_size(tmp_path):
  """A header of 10 images whose gzip data inflates to 64 MB: refused after
  reading one byte more than the 7,840 announced."""
  import tracemalloc  # pylint: disable=g-import-not-at-top
  path = tmp_path / "bomb-idx3-ubyte.gz"
  with gzip.open(path, "wb", compresslevel=9) as f:
    f.write(b"\x00\x00\x08\x03" + struct.pack(">III", 10, 28, 28))
    for _ in range(64):
      f.write(bytes(1 << 20))
  assert path.stat().st_size < 1 << 20
  tracemalloc.start()
  try:
    with pytest.raises(DataError, match="holds more data bytes than that; its "
                       r"header \(10, 28, 28\) needs 7840"):
      idx.read_idx(str(path))
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert peak < 4 << 20, peak  # not the 64 MB


def test_a_header_announcing_more_than_the_cap_reads_nothing(tmp_path):
  path = tmp_path / "big-idx3-ubyte.gz"
  with gzip.open(path, "wb") as f:
    f.write(b"\x00\x00\x08\x03" + struct.pack(">III", 100000, 200, 200))
  with pytest.raises(DataError, match="announces 4000000000 data bytes"):
    idx.read_idx(str(path))
  # With a higher cap, the same file is read and found truncated.
  with pytest.raises(DataError, match="holds 0 data bytes"):
    idx.read_idx(str(path), max_bytes=5 * 10**9)
