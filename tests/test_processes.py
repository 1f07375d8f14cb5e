"""The waits between JAX processes (capsnet_jax.processes): with one process
they touch no distributed runtime; with two they exchange process 0's
values, and a process that does not come makes the waiting one fail with
one line after its timeout, not wait forever. (The config agreement check
and predict over two processes: tests/test_hostile.py.)"""

import ast
import socket
import subprocess
import sys

import numpy as np
import pytest

from capsnet_jax import processes
from conftest import ROOT, subprocess_env


def test_one_process_waits_for_nothing(monkeypatch):
  import jax  # pylint: disable=g-import-not-at-top
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  assert jax.process_count() == 1  # (the backend started before the patch)

  class NoClient:
    def __getattr__(self, name):
      raise AssertionError(f"the distributed client was used ({name})")
  monkeypatch.setattr(distributed.global_state, "client", NoClient())
  tree = {"a": np.arange(3)}
  assert processes.broadcast_one_to_all(tree, "a value") is tree
  processes.barrier("nothing")
  np.testing.assert_array_equal(
      processes.process_allgather(np.int32(7), "a count"), [7])


def test_no_module_waits_on_the_other_processes_without_a_timeout():
  """Host collectives go through capsnet_jax.processes (a barrier with a
  timeout first); the key-value waits pass their timeout."""
  direct = []
  for path in sorted((ROOT / "capsnet_jax").rglob("*.py")):
    if path.name == "processes.py":
      continue
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        names = [a.name for a in node.names] + [getattr(node, "module", "")]
        if any(n and "multihost_utils" in n for n in names):
          direct.append(str(path.relative_to(ROOT)))
      if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
          and node.func.attr in ("blocking_key_value_get", "wait_at_barrier")):
        assert len(node.args) + len(node.keywords) >= 2, (
            f"{path}:{node.lineno} waits without a timeout")
  assert direct == []


# Run as process argv[2] of 2 (coordinator at argv[1]): process 0's value to
# both, the ranks gathered, then a third meeting that process 1 skips until
# its standard input closes: process 0 times out after 2 s.
TWO = """
import sys
import numpy as np
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
pid = int(sys.argv[2])
jax.distributed.initialize(sys.argv[1], 2, pid, initialization_timeout=120)
from capsnet_jax import errors, processes
x = processes.broadcast_one_to_all(np.full(3, 10 + pid, np.int32), "a value")
print("broadcast", np.asarray(x).tolist(), flush=True)
ranks = processes.process_allgather(np.int32(pid), "the ranks")
print("gathered", np.asarray(ranks).tolist(), flush=True)
if pid == 0:
  try:
    processes.barrier("the third meeting", timeout_s=2)
    print("met", flush=True)
  except errors.UserError as e:
    print("error:", e, flush=True)
else:
  sys.stdin.read()
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_exchange_and_time_out_in_one_line():
  address = f"127.0.0.1:{_free_port()}"
  procs = [subprocess.Popen(
      [sys.executable, "-c", TWO, address, str(i)], cwd=ROOT,
      env=subprocess_env(devices=1), stdin=subprocess.PIPE,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  try:
    lead = []
    for line in procs[0].stdout:  # until process 0 has given up waiting
      if line.startswith("[Gloo]"):  # gloo's own "Rank 0 is connected"
        continue
      lead.append(line.rstrip("\n"))
      if line.startswith(("error:", "met")):
        break
    # Process 1 ends only now: communicate closes its standard input.
    outs = [p.communicate(timeout=300) for p in reversed(procs)][::-1]
    codes = [p.returncode for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert lead[:2] == ["broadcast [10, 10, 10]", "gathered [0, 1]"], (
      lead, outs[0][1][-3000:])
  assert len(lead) == 3 and lead[2].startswith(
      "error: process 0: the other processes did not reach the third "
      "meeting within 2 s (barrier 2: "), lead
  assert "\n" not in lead[2]
  assert codes == [0, 0], [err[-3000:] for _, err in outs]
  assert [l for l in outs[1][0].splitlines() if not l.startswith("[Gloo]")
          ] == ["broadcast [10, 10, 10]",
                                     "gathered [0, 1]"], outs[1][1][-3000:]


if __name__ == "__main__":
  sys.exit(pytest.main([__file__]))
