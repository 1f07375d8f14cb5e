"""One run at a time per workdir: an exclusive lock on WORKDIR/.lock.

Synopsis::

  with lock.hold(workdir, "training"):   # WorkdirError at once if in use
    ...                                   # write into workdir

The lock is ``fcntl.flock`` on WORKDIR/.lock, a file holding one JSON line
about its holder (pid, host, what it does, since when). A second taker
never waits: it raises errors.WorkdirError naming the holder's pid, having
changed nothing in the workdir. The kernel decides: the kernel releases a
flock when its process ends, however it ends (SIGKILL included), so the
lock of a dead process is taken over by the next run; but a flock that is
still held is never taken, whatever the holder line says. A recorded pid
that looks dead here (a child it forked still holds the file, or the holder
runs in another pid namespace: another container on a shared folder) only
changes the refusal's message. The file is opened without following a
symbolic link and must be a regular file, so a planted ``.lock`` link never
gets its target written. The file is removed when the lock is released.

flock does not cover a folder on NFS mounted without working locks
(``nolock``, or a server without lockd): there every taker gets the lock.

Taken by training and --mode=eval (capsnet_jax.training.loop),
--mode=visualize on a training workdir (capsnet_jax.analysis.visualize),
``park save`` and ``park restore`` (capsnet_jax.workdir.park); reading a
workdir (predict, summary, report, curves) takes none. With several JAX
processes only process 0 takes it, and the others learn the outcome from it
through the distributed key-value store, waiting at most
``LEAD_TIMEOUT_S``.

The lock does not nest: a process that holds it and asks again is refused
like any other.
"""

import contextlib
import datetime
import errno
import fcntl
import itertools
import json
import os
import socket
import stat
import sys
import time
from typing import Any, Callable, Iterator

from capsnet_jax.errors import WorkdirError

LOCK_FILE = ".lock"
# How long processes other than 0 wait to hear whether process 0 got the
# lock (it may still be starting up).
LEAD_TIMEOUT_S = 300
# A holder writes its line right after taking the lock: how long a refused
# taker waits for that line before naming an unknown holder.
_HOLDER_LINE_WAIT_S = 1.0
_shared = itertools.count()  # the key of each multi-process outcome


def path(workdir: str) -> str:
  return os.path.join(workdir, LOCK_FILE)


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # someone else's process
    return True
  return True


def _read_holder(fd: int) -> dict[str, Any] | None:
  """The holder's line, waiting briefly for a holder that has just taken
  the lock; None if none appears."""
  deadline = time.monotonic() + _HOLDER_LINE_WAIT_S
  while True:
    try:
      text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
      holder = json.loads(text) if text else None
    except (OSError, ValueError):
      holder = None
    if isinstance(holder, dict) and isinstance(holder.get("pid"), int):
      return holder
    if time.monotonic() >= deadline:
      return None
    time.sleep(0.02)


def _seems_dead(holder: dict[str, Any] | None) -> bool:
  """Whether the recorded holder looks like a process of this host that is
  gone (it may be a child's parent, or a process of another pid namespace
  with the same host name: only the message says so)."""
  return (holder is not None and holder.get("host") == socket.gethostname()
          and not _pid_alive(holder["pid"]))


def _describe(holder: dict[str, Any] | None) -> str:
  if holder is None:
    return "another process (pid unknown: its lock file holds no holder line)"
  where = "" if holder.get("host") == socket.gethostname() else (
      f" on host {holder.get('host')}")
  what = holder.get("what") or "a run"
  since = f", since {holder['since']}" if holder.get("since") else ""
  return f"{what} (pid {holder['pid']}{where}{since})"


class Lock:
  """A held workdir lock; ``release()`` (or the end of ``hold``) frees it."""

  def __init__(self, workdir: str, fd: int | None, created_folder: bool):
    self.workdir, self._fd, self._created = workdir, fd, created_folder

  @property
  def held(self) -> bool:
    return self._fd is not None

  def release(self) -> None:
    if self._fd is None:
      return
    fd, self._fd = self._fd, None
    p = path(self.workdir)
    try:
      with contextlib.suppress(OSError):
        if os.stat(p).st_ino == os.fstat(fd).st_ino:
          os.unlink(p)
    finally:
      os.close(fd)  # releases the flock
    if self._created:  # a run refused before writing anything: no trace
      with contextlib.suppress(OSError):
        os.rmdir(self.workdir)


def acquire(workdir: str, what: str = "a run", create: bool = True) -> Lock:
  """Takes the workdir's lock, or raises WorkdirError at once.

  Args:
    workdir: the folder (created when ``create``; removed again on release
      if it is still empty then).
    what: what the holder does, for the refusal's message ("training").
    create: create a missing workdir; else a missing workdir is an error.

  Raises:
    WorkdirError: another process holds the lock (naming its pid), or the
      workdir cannot be created or written.
  """
  created = False
  if not os.path.isdir(workdir):
    if not create:
      raise WorkdirError(f"workdir {workdir!r} does not exist")
    try:
      os.makedirs(workdir)
      created = True
    except FileExistsError:
      pass
    except OSError as e:
      raise WorkdirError(f"workdir {workdir!r} cannot be created "
                         f"({e.strerror or e})") from None
  p = path(workdir)
  for _ in range(10):  # a retry each time the file was replaced meanwhile
    try:
      # O_NOFOLLOW: a .lock symlink is refused (ELOOP), its target untouched;
      # O_NONBLOCK: a FIFO planted there does not hang the open.
      fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
                   | os.O_NONBLOCK, 0o644)
    except OSError as e:
      why = ("it is a symbolic link" if e.errno == errno.ELOOP
             else e.strerror or e)
      raise WorkdirError(f"workdir {workdir!r}: cannot open its lock file "
                         f"{p} ({why})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
      os.close(fd)
      raise WorkdirError(f"workdir {workdir!r}: its lock file {p} is not a "
                         "regular file; remove it")
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        os.close(fd)
        raise WorkdirError(f"workdir {workdir!r}: cannot lock {p} "
                           f"({e.strerror or e})") from None
      holder = _read_holder(fd)
      os.close(fd)
      if _seems_dead(holder):
        raise WorkdirError(
            f"workdir {workdir!r}: holder {_describe(holder)} seems gone, but "
            "the lock is still held: by a process it started, or by one in "
            "another container or pid namespace sharing this folder; end "
            "that process, or use another --workdir") from None
      raise WorkdirError(
          f"workdir {workdir!r} is in use by {_describe(holder)}: one run at "
          "a time per workdir; wait for it to end, or use another --workdir"
          ) from None
    try:
      same = os.stat(p).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:  # released and removed meanwhile
      same = False
    if not same:
      os.close(fd)
      continue
    line = json.dumps(dict(
        pid=os.getpid(), host=socket.gethostname(), what=what,
        since=datetime.datetime.now().astimezone().isoformat(
            timespec="seconds"))) + "\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, line.encode(), 0)
    os.fsync(fd)
    return Lock(workdir, fd, created)
  raise WorkdirError(f"workdir {workdir!r}: its lock file {p} kept being "
                     "replaced; is another program removing it?")


def _lead_outcome(error: str | None, timeout_s: float) -> str | None:
  """Process 0's outcome on every process, through the distributed
  key-value store: process 0 publishes ``error`` (None: it holds the lock)
  and returns it; the others wait for it at most ``timeout_s``."""
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  client = distributed.global_state.client
  key = f"capsnet_jax/workdir_lock/{next(_shared)}"
  if jax.process_index() == 0:
    client.key_value_set(key, "ok" if error is None else "error:" + error)
    return error
  try:
    value = client.blocking_key_value_get(key, int(timeout_s * 1000))
  except Exception as e:  # pylint: disable=broad-except  # XlaRuntimeError
    raise WorkdirError(f"process 0 did not say within {timeout_s:.0f} s "
                       f"whether it holds the workdir lock ({e})") from None
  return None if value == "ok" else value[len("error:"):]


def _take(workdir: str, what: str, create: bool,
          check: Callable[[str], None] | None) -> Lock:
  """acquire, then ``check(workdir)`` under the lock (released if it
  raises)."""
  taken = acquire(workdir, what, create)
  try:
    if check is not None:
      check(workdir)
  except BaseException:
    taken.release()
    raise
  return taken


@contextlib.contextmanager
def hold(workdir: str, what: str = "a run", create: bool = True,
         check: Callable[[str], None] | None = None,
         timeout_s: float = LEAD_TIMEOUT_S) -> Iterator[Lock]:
  """``acquire`` for the length of a ``with`` block, for a run of one or
  several JAX processes: only process 0 takes the lock (and runs
  ``check``); every process raises the same WorkdirError when it is
  refused.

  Args:
    workdir, what, create: as for ``acquire``.
    check: called with the workdir under the lock, by process 0 only; a
      WorkdirError it raises is raised on every process.
    timeout_s: how long processes other than 0 wait for process 0's outcome.
  """
  count = 1
  jax = sys.modules.get("jax")
  if jax is not None and jax.distributed.is_initialized():
    count = jax.process_count()
  if count == 1:
    lock = _take(workdir, what, create, check)
  else:
    lock = Lock(workdir, None, False)
    if jax.process_index() == 0:
      try:
        lock = _take(workdir, what, create, check)
      except Exception as e:
        _lead_outcome(str(e) or type(e).__name__, timeout_s)
        raise
      _lead_outcome(None, timeout_s)
    else:
      error = _lead_outcome(None, timeout_s)
      if error is not None:
        raise WorkdirError(error)
  try:
    yield lock
  finally:
    lock.release()
