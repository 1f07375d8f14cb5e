"""Files written whole or not at all, and their checksums.

Synopsis::

  files.atomic_write_json(path, {"step": 10})
  files.atomic_write_bytes(path, data)
  files.copy_file(src, dst)      # an atomic copy (times kept, as shutil.copy2)
  files.write_new(folder, "a", ".png", data)  # a.png, else a-2.png...: never replaces
  files.fsync_tree(folder)       # every file and folder under it on disk
  with files.staged_folder(path) as tmp:  # fill tmp; it replaces path whole
    ...
  files.recover_folder(path)     # the old folder back after a crash mid-swap
  files.sha256(path)
  data = files.read_verified(path, expected_sha256, what)  # one read
  print(files.printable(name))   # control characters escaped

An atomic write goes to a temporary file of a unique name in the same
folder, is flushed and fsynced, then renamed over ``path`` and the folder
fsynced: a reader sees the old file or the new one, never a part, and two
writers never share a temporary file. The new file keeps the permissions
of the file it replaces (a new one gets the umask's).
"""

import contextlib
import ctypes
import errno
import glob
import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
import unicodedata
from typing import Any, Iterator

# renameat2(2)'s flag that swaps two paths in one step (Linux 3.15+, glibc
# 2.28+; ext4, xfs, btrfs, tmpfs...), and the "current folder" descriptor.
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
# Bidirectional-text controls: they reorder what a terminal shows.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(name: str) -> str:
  """``name`` (a file name) safe to print on a terminal: control characters
  (C0, DEL, C1), bidirectional controls and undecodable bytes (surrogate
  escapes) written as ``\\xNN`` / ``\\uNNNN``, so that a name cannot move
  the cursor, clear the screen or disguise itself."""
  out = []
  for ch in name:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's stand-in for a raw byte
      out.append(f"\\x{code - 0xDC00:02x}")
    elif ch in _BIDI or unicodedata.category(ch) in ("Cc", "Cs"):
      out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    else:
      out.append(ch)
  return "".join(out)


def _libc_renameat2():
  """libc's renameat2, or None where the platform has none."""
  if not sys.platform.startswith("linux"):
    return None
  try:
    fn = ctypes.CDLL(None, use_errno=True).renameat2
  except (OSError, AttributeError):
    return None
  fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                 ctypes.c_char_p, ctypes.c_uint]
  fn.restype = ctypes.c_int
  return fn


def exchange(a: str, b: str) -> bool:
  """Swaps the paths ``a`` and ``b`` (both existing) in one atomic step with
  renameat2(RENAME_EXCHANGE): a reader finds one or the other at each
  name, never nothing. False, with nothing changed, where the OS, libc or
  file system cannot; OSError for any other failure."""
  fn = _libc_renameat2()
  if fn is None:
    return False
  if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b),
        _RENAME_EXCHANGE) == 0:
    return True
  err = ctypes.get_errno()
  if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
    return False
  raise OSError(err, os.strerror(err), a, None, b)


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


def fsync_tree(root: str) -> None:
  """fsyncs every file and folder under ``root`` (symbolic links are not
  followed): what a rename that publishes ``root`` needs on disk first."""
  for folder, _, names in os.walk(root):
    for name in names:
      p = os.path.join(folder, name)
      if os.path.islink(p):
        continue
      fd = os.open(p, os.O_RDONLY)
      try:
        os.fsync(fd)
      finally:
        os.close(fd)
    fsync_dir(folder)


@contextlib.contextmanager
def staged_folder(path: str) -> Iterator[str]:
  """A new empty folder beside ``path`` that replaces it when the block ends
  without an exception (and is removed otherwise).

  The folder's tree is fsynced before the swap. Where ``path`` is a folder
  and the OS can (``exchange``: renameat2 with RENAME_EXCHANGE), the two
  are swapped in one step, so ``path`` always holds the old folder or the
  new one, even for a reader at that instant; the old one is then deleted.
  Elsewhere the old ``path`` is put aside in a hidden ``.NAME.old.*``
  folder, the new one renamed in, the parent fsynced and only then the old
  one deleted; if renaming the new one in fails the old one is put back,
  and after a crash between the two renames ``recover_folder`` (called
  here first, and by the readers of bundles) puts it back. The new folder
  gets the umask's permissions, not mkdtemp's 0700."""
  path = os.path.abspath(path)
  parent, name = os.path.split(path)
  os.makedirs(parent, exist_ok=True)
  recover_folder(path)
  staging = tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=parent)
  try:
    yield staging
    os.chmod(staging, 0o777 & ~_umask())
    fsync_tree(staging)
    if (os.path.isdir(path) and not os.path.islink(path)
        and exchange(staging, path)):
      fsync_dir(parent)  # staging now holds the old folder: removed below
      return
    aside = None
    if os.path.lexists(path):
      aside = tempfile.mkdtemp(prefix=f".{name}.old.", dir=parent)
      os.replace(path, os.path.join(aside, name))
    try:
      os.replace(staging, path)
    except BaseException:
      if aside:  # the old folder back where it was
        os.rename(os.path.join(aside, name), path)
        os.rmdir(aside)
      raise
    fsync_dir(parent)
    if aside:
      shutil.rmtree(aside, ignore_errors=True)
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def recover_folder(path: str) -> bool:
  """Puts back the old folder that a swap without ``exchange`` left aside
  in ``.NAME.old.*/NAME`` when a crash kept the new one from ``path``;
  True if it did. Nothing happens while ``path`` exists."""
  path = os.path.abspath(path)
  parent, name = os.path.split(path)
  if os.path.lexists(path):
    return False
  pattern = os.path.join(glob.escape(parent), glob.escape(f".{name}.old.")
                         + "*", glob.escape(name))
  found = sorted(glob.glob(pattern), key=os.path.getmtime)
  if not found:
    return False
  try:
    os.rename(found[-1], path)
  except OSError:  # another process put it back first
    return False
  with contextlib.suppress(OSError):
    os.rmdir(os.path.dirname(found[-1]))
  fsync_dir(parent)
  return True


def _umask() -> int:
  umask = os.umask(0o022)
  os.umask(umask)
  return umask


def _new_file_mode(path: str) -> int:
  """The permissions for a file replacing ``path``: its own, else the
  umask's for a new file."""
  try:
    return stat.S_IMODE(os.stat(path).st_mode)
  except OSError:
    return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w") -> Iterator[Any]:
  """A file object whose content replaces ``path`` when the block ends
  without an exception (and is discarded otherwise)."""
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.",
                             suffix=".tmp")
  try:
    with contextlib.suppress(OSError):
      os.fchmod(fd, _new_file_mode(path))
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


def copy_file(src: str, dst: str) -> None:
  """Copies the file ``src`` to ``dst`` atomically (``dst`` is the old file
  or the whole copy, never a part), with its times, as shutil.copy2."""
  with open(src, "rb") as fin, atomic_open(dst, "wb") as fout:
    shutil.copyfileobj(fin, fout, 1 << 20)
  with contextlib.suppress(OSError):
    shutil.copystat(src, dst)


def write_new(folder: str, stem: str, suffix: str, data: bytes) -> str:
  """Writes ``data`` to a new file in ``folder`` and returns its path:
  ``stem + suffix``, else ``stem-2 + suffix``, ``stem-3 + suffix``, ...,
  the first name that no file has. Never replaces an existing file, even
  one created meanwhile by another process; the file appears whole (written
  and fsynced under a temporary name, then hard-linked to its name, which
  fails where the name exists)."""
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{stem}.", suffix=".tmp")
  try:
    with contextlib.suppress(OSError):
      os.fchmod(fd, _new_file_mode(os.path.join(folder, stem + suffix)))
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    for k in range(1, 1_000_000):
      path = os.path.join(folder, stem + (f"-{k}" if k > 1 else "") + suffix)
      try:
        os.link(tmp, path)
      except FileExistsError:
        continue
      except OSError:  # no hard links here: an exclusive create instead
        try:
          with open(path, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        except FileExistsError:
          continue
      fsync_dir(folder)
      return path
    raise FileExistsError(f"no free name for {stem}{suffix} in {folder}")
  finally:
    with contextlib.suppress(OSError):
      os.unlink(tmp)


def read_json_object(path: str, name: str, remedy: str) -> dict[str, Any]:
  """The JSON object in ``path``; a one-line errors.WorkdirError
  "NAME cannot be read (why); REMEDY" or "NAME is not a JSON object; REMEDY"
  otherwise."""
  from capsnet_jax.errors import WorkdirError  # pylint: disable=g-import-not-at-top
  try:
    with open(path) as f:
      value = json.load(f)
  except (OSError, ValueError) as e:
    raise WorkdirError(f"{name} cannot be read ({e}); {remedy}") from None
  if not isinstance(value, dict):
    raise WorkdirError(f"{name} is not a JSON object; {remedy}")
  return value


def read_verified(path: str, expected_sha256: str, recorded_in: str,
                  max_bytes: int | None = None) -> bytes:
  """The bytes of ``path``, read once, whose SHA-256 is ``expected_sha256``:
  the caller parses the very bytes that were checked (a file replaced
  between a check and a second read cannot slip through).

  Raises:
    errors.WorkdirError: the file cannot be read, is larger than
      ``max_bytes``, or its checksum differs from the one recorded in
      ``recorded_in``.
  """
  from capsnet_jax.errors import WorkdirError  # pylint: disable=g-import-not-at-top
  try:
    with open(path, "rb") as f:
      size = os.fstat(f.fileno()).st_size
      if max_bytes is not None and size > max_bytes:
        raise WorkdirError(f"{path}: {size} bytes, more than the {max_bytes} "
                           "expected; the file is damaged or was replaced")
      data = f.read()
  except OSError as e:
    raise WorkdirError(f"{path} cannot be read ({e.strerror or e})") from None
  actual = hashlib.sha256(data).hexdigest()
  if actual != expected_sha256:
    raise WorkdirError(f"{path}: sha256 {actual} differs from the "
                       f"{expected_sha256} recorded in {recorded_in}; the "
                       "file is damaged or was replaced")
  return data


def sha256(path: str) -> str:
  """The file's SHA-256 as hex."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()
