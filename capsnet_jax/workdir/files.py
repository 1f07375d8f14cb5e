"""Files written whole or not at all, and their checksums.

Synopsis::

  files.atomic_write_json(path, {"step": 10})
  files.atomic_write_bytes(path, data)
  files.sha256(path)

An atomic write goes to a temporary file of a unique name in the same
folder, is flushed and fsynced, then renamed over ``path`` and the folder
fsynced: a reader sees the old file or the new one, never a part, and two
writers never share a temporary file.
"""

import contextlib
import hashlib
import json
import os
import tempfile
from typing import Any, Iterator


def fsync_dir(folder: str) -> None:
  """Makes a rename or creation in ``folder`` durable (where the platform
  allows opening folders)."""
  try:
    fd = os.open(folder or ".", os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w") -> Iterator[Any]:
  """A file object whose content replaces ``path`` when the block ends
  without an exception (and is discarded otherwise)."""
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.",
                             suffix=".tmp")
  try:
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    raise
  fsync_dir(folder)


def atomic_write_bytes(path: str, data: bytes) -> None:
  with atomic_open(path, "wb") as f:
    f.write(data)


def atomic_write_text(path: str, text: str) -> None:
  with atomic_open(path, "w") as f:
    f.write(text)


def atomic_write_json(path: str, obj: Any) -> None:
  """``obj`` as indented JSON with sorted keys and a final newline."""
  atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def sha256(path: str) -> str:
  """The file's SHA-256 as hex."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()
