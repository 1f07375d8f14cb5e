"""Transparent huge pages for malloc: when the restart happens, and that it
keeps the process (pid, argv) and happens once, even where a wrapper drops
GLIBC_TUNABLES, and never for a program read from standard input."""

import os
import subprocess
import sys

import pytest

from capsnet_jax import hostmem
from conftest import ROOT, subprocess_env

LINUX = ("Linux", ("glibc", "2.36"), "madvise")


@pytest.mark.parametrize("env,system,libc,mode,expected", [
    ({}, *LINUX, "glibc.malloc.hugetlb=1"),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, *LINUX,
     "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, *LINUX, None),
    ({"CAPSNET_JAX_HUGE_PAGES": "0"}, *LINUX, None),
    ({"CAPSNET_JAX_HUGE_PAGES": "1"}, *LINUX, "glibc.malloc.hugetlb=1"),
    ({}, "Linux", ("glibc", "2.35"), "madvise", "glibc.malloc.hugetlb=1"),
    ({}, "Linux", ("glibc", "2.34"), "madvise", None),
    ({}, "Linux", ("", ""), "madvise", None),  # musl: no glibc tunables
    ({}, "Linux", ("glibc", "2.36"), "always", None),  # huge pages already
    ({}, "Linux", ("glibc", "2.36"), "never", None),
    ({}, "Linux", ("glibc", "2.36"), None, None),
    ({}, "Darwin", ("", ""), None, None),
])
def test_when_to_restart(env, system, libc, mode, expected):
  new = hostmem.tunables_env(env, system, libc, mode)
  if expected is None:
    assert new is None
  else:
    assert new == {**env, "GLIBC_TUNABLES": expected,
                   "CAPSNET_JAX_HUGE_PAGES_RESTARTED": "1"}


def test_never_twice_even_without_the_tunable():
  """Our own marker, not GLIBC_TUNABLES surviving execve, ends the
  restarts."""
  once = hostmem.tunables_env({}, *LINUX)
  assert once["CAPSNET_JAX_HUGE_PAGES_RESTARTED"] == "1"
  stripped = {k: v for k, v in once.items() if k != "GLIBC_TUNABLES"}
  assert hostmem.tunables_env(stripped, *LINUX) is None


@pytest.mark.parametrize("argv0,orig_argv,expected", [
    ("main.py", ["python", "main.py", "--mode=summary"], True),
    ("main.py", ["python", "-u", "-X", "dev", "main.py"], True),
    ("capsnet_jax/__main__.py", ["python", "-m", "capsnet_jax"], True),
    ("capsnet_jax/__main__.py", ["python", "-Wignore", "-m", "capsnet_jax"],
     True),
    ("-", ["python", "-", "--mode=summary"], False),  # python - < main.py
    ("", ["python"], False),  # python < main.py
    ("-c", ["python", "-c", "import capsnet_jax"], False),
    ("-c", ["python", "-uc", "import capsnet_jax"], False),
    ("gone.py", ["python", "gone.py"], False),  # not a file (any more)
])
def test_what_can_be_started_again(argv0, orig_argv, expected):
  argv0 = str(ROOT / argv0) if argv0.endswith(".py") else argv0
  orig_argv = [str(ROOT / a) if a.endswith(".py") else a for a in orig_argv]
  assert hostmem.can_restart(argv0, orig_argv) is expected


@pytest.mark.parametrize("text,mode", [
    ("always [madvise] never\n", "madvise"),
    ("[always] madvise never\n", "always"),
    ("always madvise [never]\n", "never"),
    ("garbage\n", None),
])
def test_thp_mode_reads_the_bracketed_choice(tmp_path, text, mode):
  path = tmp_path / "enabled"
  path.write_text(text)
  assert hostmem.thp_mode(str(path)) == mode
  assert hostmem.thp_mode(str(tmp_path / "absent")) is None


SCRIPT = """
import os, sys
print("start", os.getpid(), sys.argv[1:], os.environ.get("GLIBC_TUNABLES"),
      flush=True)
from capsnet_jax import hostmem
hostmem.use_huge_pages()
print("run", os.getpid(), sys.argv[1:], os.environ.get("GLIBC_TUNABLES"),
      hostmem.enabled())
"""


@pytest.mark.skipif(
    hostmem.tunables_env({}, "Linux", hostmem._libc(), hostmem.thp_mode())
    is None or sys.platform != "linux",
    reason="huge pages not in madvise mode, or no glibc >= 2.35")
def test_restart_keeps_pid_and_argv_and_happens_once(tmp_path):
  script = tmp_path / "prog.py"
  script.write_text(SCRIPT)
  env = subprocess_env()
  env.pop("GLIBC_TUNABLES", None)
  env.pop("CAPSNET_JAX_HUGE_PAGES", None)
  env.pop("CAPSNET_JAX_HUGE_PAGES_RESTARTED", None)
  out = subprocess.run([sys.executable, "-u", str(script), "a", "--b=c"],
                       env=env, cwd=ROOT, capture_output=True, text=True,
                       check=True).stdout.splitlines()
  start = out[0].split(" ", 1)[1]
  pid = start.split()[0]
  # Printed once before the restart, once after it, then the program runs.
  assert out == [f"start {pid} ['a', '--b=c'] None",
                 f"start {pid} ['a', '--b=c'] glibc.malloc.hugetlb=1",
                 f"run {pid} ['a', '--b=c'] glibc.malloc.hugetlb=1 True"]
  # Read from standard input, the program is not started again: its input
  # is consumed.
  with open(script) as stdin:
    out = subprocess.run([sys.executable, "-", "a"], env=env, cwd=ROOT,
                         stdin=stdin, capture_output=True, text=True,
                         check=True).stdout.splitlines()
  assert [line.split(" ", 2)[2] for line in out] == ["['a'] None",
                                                     "['a'] None False"]
  env["CAPSNET_JAX_HUGE_PAGES"] = "0"
  out = subprocess.run([sys.executable, str(script)], env=env, cwd=ROOT,
                       capture_output=True, text=True,
                       check=True).stdout.splitlines()
  assert [line.split(" ", 2)[2] for line in out] == ["[] None", "[] None False"]


@pytest.mark.skipif(
    hostmem.tunables_env({}, "Linux", hostmem._libc(), hostmem.thp_mode())
    is None, reason="huge pages not in madvise mode, or no glibc >= 2.35")
@pytest.mark.parametrize("command", [["main.py"], ["-m", "capsnet_jax"]])
def test_the_command_restarts_once_and_keeps_its_flags(tmp_path, command):
  # A sitecustomize records GLIBC_TUNABLES at every interpreter start.
  (tmp_path / "sitecustomize.py").write_text(
      "import os\n"
      f"with open({str(tmp_path / 'starts')!r}, 'a') as f:\n"
      "  f.write(str(os.environ.get('GLIBC_TUNABLES')) + '\\n')\n")
  env = subprocess_env(pythonpath=f"{tmp_path}{os.pathsep}{ROOT}")
  env.pop("GLIBC_TUNABLES", None)
  env.pop("CAPSNET_JAX_HUGE_PAGES", None)
  env.pop("CAPSNET_JAX_HUGE_PAGES_RESTARTED", None)
  result = subprocess.run(
      [sys.executable, *command, "--config=configs/mnist.py:smoke",
       "--mode=summary"], env=env, cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-2000:]
  assert '"total_params": 234896' in result.stdout.splitlines()[-1]
  assert (tmp_path / "starts").read_text().splitlines() == [
      "None", "glibc.malloc.hugetlb=1"]


@pytest.mark.skipif(
    hostmem.tunables_env({}, "Linux", hostmem._libc(), hostmem.thp_mode())
    is None, reason="huge pages not in madvise mode, or no glibc >= 2.35")
def test_a_wrapper_that_drops_the_tunable_restarts_once(tmp_path):
  """A sitecustomize drops GLIBC_TUNABLES at every start, as a wrapper
  between execve and Python could: one restart, not a loop (it stops the
  loop itself at the fifth start)."""
  (tmp_path / "sitecustomize.py").write_text(
      "import os\n"
      f"with open({str(tmp_path / 'starts')!r}, 'a') as f:\n"
      "  f.write('start\\n')\n"
      f"if open({str(tmp_path / 'starts')!r}).read().count('start') > 4:\n"
      "  os._exit(99)\n"
      "os.environ.pop('GLIBC_TUNABLES', None)\n")
  script = tmp_path / "prog.py"
  script.write_text(SCRIPT)
  env = subprocess_env(pythonpath=f"{tmp_path}{os.pathsep}{ROOT}")
  env.pop("GLIBC_TUNABLES", None)
  env.pop("CAPSNET_JAX_HUGE_PAGES", None)
  env.pop("CAPSNET_JAX_HUGE_PAGES_RESTARTED", None)
  result = subprocess.run([sys.executable, str(script)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert (tmp_path / "starts").read_text().count("start") == 2
  assert result.stdout.splitlines()[-1].startswith("run ")


def test_a_failed_restart_leaves_the_process_running(monkeypatch, capsys):
  calls = []

  def failing_execve(*args):
    calls.append(args)
    raise PermissionError("not executable")

  monkeypatch.setattr(hostmem, "tunables_env", lambda *a: {"X": "1"})
  monkeypatch.setattr(hostmem, "can_restart", lambda *a: True)
  monkeypatch.setattr(os, "execve", failing_execve)
  hostmem.use_huge_pages()
  assert len(calls) == 1 and calls[0][2] == {"X": "1"}
  assert "running without huge pages (not executable)" in capsys.readouterr().err
