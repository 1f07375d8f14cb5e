"""Transparent huge pages for host memory on Linux: restarts the command once
with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``.

Synopsis (first thing in a program, before heavy imports)::

  from capsnet_jax import hostmem
  hostmem.use_huge_pages()   # may replace the process (same pid, same argv)

XLA on CPU allocates the large temporary buffers of every step with malloc,
and glibc serves allocations above 32 MB with a fresh mmap that it unmaps on
free, so every step faults its buffers in again, 4 KB at a time: about 250 MB
per CapsNet inference step at batch 128, a fifth of the CPU time spent in the
kernel. Where the kernel's transparent huge pages are in ``madvise`` mode
(the common default), glibc >= 2.35 advises its mappings as huge pages when
that tunable is set, so the same memory faults in 2 MB at a time. Measured on
a 2-core AMD EPYC without AVX-512 (docs/performance.md): CapsNet inference
227-237 -> 301-309 images/s, CapsNet training 81-87 -> 105-113,
Efficient-CapsNet training at batch 16 144-154 -> 214-217. The tunable is read only when a process starts,
hence the restart; it is inherited by subprocesses.

Set ``CAPSNET_JAX_HUGE_PAGES=0`` to leave the process as it is.

The restart happens at most once: before it, the environment gets a marker
of our own (``CAPSNET_JAX_HUGE_PAGES_RESTARTED``), and a process that has
the marker never restarts, even where a wrapper between the two starts
dropped ``GLIBC_TUNABLES`` (which would otherwise restart forever). Nor does
a program that cannot be started again as it was: one read from standard
input (``python - < main.py``, whose input is consumed) or from ``-c``,
whose ``sys.argv[0]`` is not a file.
"""

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "CAPSNET_JAX_HUGE_PAGES"
# Set in the environment of the restarted process: never restart again.
RESTARTED = "CAPSNET_JAX_HUGE_PAGES_RESTARTED"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode(path: str = THP_MODE_FILE) -> str | None:
  """The kernel's transparent-huge-page mode ("always", "madvise", "never"),
  None where it cannot be read."""
  try:
    with open(path, encoding="ascii") as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else None


def tunables_env(env, system: str, libc: tuple[str, str],
                 mode: str | None) -> dict[str, str] | None:
  """The environment to restart with, or None where a restart would change
  nothing: not Linux with glibc >= 2.35, huge pages not in ``madvise`` mode
  (``always`` has them already, ``never`` refuses them), the tunable already
  set, the process restarted once already (RESTARTED) or the user opted
  out. The new environment carries the RESTARTED marker."""
  name, version = libc
  if system != "Linux" or name != "glibc" or mode != "madvise":
    return None
  if env.get(RESTARTED):
    return None
  try:
    major, minor = (int(v) for v in version.split(".")[:2])
  except ValueError:
    return None
  if (major, minor) < (2, 35) or env.get(OPT_OUT, "1") == "0":
    return None
  current = env.get("GLIBC_TUNABLES", "")
  if "glibc.malloc.hugetlb=" in current:
    return None
  new = dict(env)
  new["GLIBC_TUNABLES"] = f"{current}:{TUNABLE}" if current else TUNABLE
  new[RESTARTED] = "1"
  return new


def can_restart(argv0: str, orig_argv: list[str]) -> bool:
  """Whether the program can be started again as it was: the interpreter
  with a script file or ``-m MODULE``, not a program read from standard
  input (``python -`` or ``python < file``: the input is consumed) or given
  with ``-c``.

  Args:
    argv0: sys.argv[0]: the script's path, the module's file under -m; "-"
      for standard input, "-c", or "" for an interactive interpreter.
    orig_argv: sys.orig_argv, the interpreter's own command line.
  """
  if not argv0 or argv0 == "-" or not os.path.isfile(argv0):
    return False
  args = list(orig_argv[1:])
  while args:
    arg = args.pop(0)
    if arg == "-" or not arg.startswith("-"):
      return arg != "-" and os.path.isfile(arg)  # the script
    if arg.startswith("--"):  # --check-hash-based-pycs MODE, --help...
      if arg == "--check-hash-based-pycs" and args:
        args.pop(0)
      continue
    for k, letter in enumerate(arg[1:], 1):  # -u, -uB, -Werror, -X dev, -m
      if letter == "c":
        return False
      if letter == "m":
        return True
      if letter in "WX":
        if k == len(arg) - 1 and args:
          args.pop(0)  # its value is the next argument
        break
  return False  # no script: standard input or interactive


def _libc() -> tuple[str, str]:
  """("glibc", "2.36") as the running C library reports it; ("", "") if not
  glibc."""
  try:
    name, _, version = os.confstr("CS_GNU_LIBC_VERSION").partition(" ")
  except (AttributeError, ValueError, OSError):
    return "", ""
  return name, version


def use_huge_pages() -> None:
  """Restarts this process with the tunable where it helps (see module doc);
  returns where it does not, or where the restart fails (with a line on
  stderr). Call it only from a program's entry point."""
  env = tunables_env(os.environ, platform.system(), _libc(), thp_mode())
  if env is None or not sys.executable:
    return
  if not can_restart(sys.argv[0] if sys.argv else "",
                     list(getattr(sys, "orig_argv", []))):
    return
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
  except OSError as e:  # e.g. the interpreter cannot be executed again
    print(f"capsnet_jax: running without huge pages ({e})", file=sys.stderr)


def enabled() -> bool:
  """Whether this process runs with huge pages for malloc (reported by the
  benchmarks)."""
  return (thp_mode() == "always"
          or (thp_mode() == "madvise"
              and "glibc.malloc.hugetlb=1" in os.environ.get("GLIBC_TUNABLES", "")))
