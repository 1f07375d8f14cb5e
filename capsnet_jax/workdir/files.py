"""Files written whole or not at all, and their checksums.

Synopsis::

  files.atomic_write_json(path, {"step": 10})
  files.atomic_write_bytes(path, data)
  files.copy_file(src, dst)      # an atomic copy (times kept, as shutil.copy2)
  files.write_new(folder, "a", ".png", data)  # a.png, else a-2.png...: never replaces
  files.fsync_tree(folder)       # every file and folder under it on disk
  with files.staged_folder(path) as tmp:  # fill tmp; it replaces path whole
    ...
  files.sha256(path)

An atomic write goes to a temporary file of a unique name in the same
folder, is flushed and fsynced, then renamed over ``path`` and the folder
fsynced: a reader sees the old file or the new one, never a part, and two
writers never share a temporary file. The new file keeps the permissions
of the file it replaces (a new one gets the umask's).
"""

import contextlib
import hashlib
import json
import os
import shutil
import stat
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

  The folder's tree is fsynced before the swap; the swap puts the old
  ``path`` (if any) aside, renames the new folder in, fsyncs the parent and
  only then deletes the old one, so a crash leaves the old folder or the
  new one whole at ``path`` (at worst with the old one also left in a
  hidden ``.NAME.old.*`` folder beside it). The new folder gets the umask's
  permissions, not mkdtemp's 0700."""
  path = os.path.abspath(path)
  parent, name = os.path.split(path)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=parent)
  try:
    yield staging
    os.chmod(staging, 0o777 & ~_umask())
    fsync_tree(staging)
    aside = None
    if os.path.lexists(path):
      aside = tempfile.mkdtemp(prefix=f".{name}.old.", dir=parent)
      os.replace(path, os.path.join(aside, name))
    os.replace(staging, path)
    fsync_dir(parent)
    if aside:
      shutil.rmtree(aside, ignore_errors=True)
  finally:
    shutil.rmtree(staging, ignore_errors=True)


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


def sha256(path: str) -> str:
  """The file's SHA-256 as hex."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()
