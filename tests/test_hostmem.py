"""Transparent huge pages for malloc: when the restart happens, and that it
keeps the process (pid, argv) and sets the tunable once."""

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
    assert new == {**env, "GLIBC_TUNABLES": expected}


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
  out = subprocess.run([sys.executable, "-u", str(script), "a", "--b=c"],
                       env=env, cwd=ROOT, capture_output=True, text=True,
                       check=True).stdout.splitlines()
  start = out[0].split(" ", 1)[1]
  pid = start.split()[0]
  # Printed once before the restart, once after it, then the program runs.
  assert out == [f"start {pid} ['a', '--b=c'] None",
                 f"start {pid} ['a', '--b=c'] glibc.malloc.hugetlb=1",
                 f"run {pid} ['a', '--b=c'] glibc.malloc.hugetlb=1 True"]
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
  result = subprocess.run(
      [sys.executable, *command, "--config=configs/mnist.py:smoke",
       "--mode=summary"], env=env, cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-2000:]
  assert '"total_params": 234896' in result.stdout.splitlines()[-1]
  assert (tmp_path / "starts").read_text().splitlines() == [
      "None", "glibc.malloc.hugetlb=1"]


def test_a_failed_restart_leaves_the_process_running(monkeypatch, capsys):
  calls = []

  def failing_execve(*args):
    calls.append(args)
    raise PermissionError("not executable")

  monkeypatch.setattr(hostmem, "tunables_env", lambda *a: {"X": "1"})
  monkeypatch.setattr(os, "execve", failing_execve)
  hostmem.use_huge_pages()
  assert len(calls) == 1 and calls[0][2] == {"X": "1"}
  assert "running without huge pages (not executable)" in capsys.readouterr().err
