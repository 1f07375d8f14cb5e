"""One run per workdir (capsnet_jax.workdir.lock): a second taker is refused
at once with the holder's pid and changes nothing; the lock of a dead
process is taken over, a held flock never (whatever pid its line names);
a .lock symlink is refused; training, --mode=eval and --mode=visualize take it.
(park save/restore: tests/test_park.py; two processes and the command line:
tests/test_hostile.py.)"""

import json
import os
import subprocess
import sys
import threading

import pytest

from capsnet_jax.errors import DataError, WorkdirError
from capsnet_jax.workdir import lock
from conftest import ROOT, snapshot, subprocess_env, tiny_config

# Takes the lock of argv[1] and keeps it until its standard input closes;
# with argv[2] == "fork", forks a child that inherits the lock file, prints
# the child's pid and exits at once (the child waits on standard input).
HOLDER = """
import os, sys
from capsnet_jax.workdir import lock
held = lock.acquire(sys.argv[1], "training")
if sys.argv[2:] == ["fork"]:
  child = os.fork()
  if child == 0:
    sys.stdin.read()
    os._exit(0)
  print(child, flush=True)
  os._exit(0)
print("held", flush=True)
sys.stdin.read()
held.release()
"""


def _holder(workdir, *extra) -> tuple[subprocess.Popen, str]:
  proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir), *extra],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True,
                          env=subprocess_env(), cwd=ROOT)
  line = proc.stdout.readline().strip()
  assert line, proc.stderr.read()[-3000:]
  return proc, line



def _refused_at_once(call):
  """The WorkdirError ``call`` raises, run in a thread: a taker that waited
  for the lock instead would still be running after a minute."""
  caught = []

  def target():
    try:
      call()
    except Exception as e:  # pylint: disable=broad-except
      caught.append(e)
  thread = threading.Thread(target=target, daemon=True)
  thread.start()
  thread.join(60)
  assert not thread.is_alive(), "the second taker waited for the lock"
  assert len(caught) == 1 and isinstance(caught[0], WorkdirError), caught
  return caught[0]


def test_a_second_taker_is_refused_at_once_naming_the_holder(tmp_path):
  workdir = tmp_path / "w"
  workdir.mkdir()
  (workdir / "notes.txt").write_text("mine")
  proc, _ = _holder(workdir)
  before = snapshot(workdir)
  error = _refused_at_once(lambda: lock.acquire(str(workdir), "--mode=eval"))
  assert f"is in use by training (pid {proc.pid}, since " in str(error)
  assert "\n" not in str(error)
  assert snapshot(workdir) == before  # the refused taker changed nothing
  holder = json.loads((workdir / lock.LOCK_FILE).read_text())
  assert holder["pid"] == proc.pid and holder["what"] == "training"
  proc.stdin.close()
  assert proc.wait(timeout=60) == 0
  assert os.listdir(workdir) == ["notes.txt"]  # released: the file is gone
  with lock.hold(str(workdir), "evaluation") as held:
    assert held.held
    assert json.loads((workdir / lock.LOCK_FILE).read_text())["pid"] == (
        os.getpid())
  assert os.listdir(workdir) == ["notes.txt"]


def test_the_lock_does_not_nest_within_a_process(tmp_path):
  with lock.hold(str(tmp_path), "training"):
    with pytest.raises(WorkdirError,
                       match=rf"in use by training \(pid {os.getpid()},"):
      lock.acquire(str(tmp_path), "again")


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path):
  proc, _ = _holder(tmp_path)
  proc.kill()
  proc.wait(timeout=60)
  # Its line stays behind; the kernel released its flock.
  assert json.loads((tmp_path / lock.LOCK_FILE).read_text())["pid"] == proc.pid
  with lock.hold(str(tmp_path), "training"):
    assert json.loads((tmp_path / lock.LOCK_FILE).read_text())["pid"] == (
        os.getpid())


def test_a_dead_holders_child_keeps_the_workdir(tmp_path):
  """The holder forked a child that inherited the locked file, then died:
  the kernel still shows the flock held, so the taker refuses; the dead pid
  only changes the message."""
  proc, child = _holder(tmp_path, "fork")
  child = int(child)
  try:
    assert proc.wait(timeout=60) == 0
    os.kill(child, 0)  # alive, and holding the file's flock
    before = snapshot(tmp_path)
    error = _refused_at_once(lambda: lock.acquire(str(tmp_path), "training"))
    assert (f"holder training (pid {proc.pid}, since " in str(error)
            and "seems gone, but the lock is still held: " in str(error))
    assert snapshot(tmp_path) == before
    assert json.loads((tmp_path / lock.LOCK_FILE).read_text())["pid"] == (
        proc.pid)
  finally:
    proc.stdin.close()  # the child reads the same pipe: it ends now
    try:
      os.kill(child, 9)
    except ProcessLookupError:
      pass


def test_a_held_lock_naming_a_pid_not_of_this_namespace_is_refused(tmp_path):
  """A holder in another pid namespace (a container sharing the folder)
  writes a pid that does not exist here: the flock it holds still wins."""
  proc, _ = _holder(tmp_path)
  try:
    missing = 4_194_304 + 17  # above the kernel's largest pid_max
    line = json.loads((tmp_path / lock.LOCK_FILE).read_text())
    (tmp_path / lock.LOCK_FILE).write_text(
        json.dumps({**line, "pid": missing}) + "\n")
    error = _refused_at_once(lambda: lock.acquire(str(tmp_path), "training"))
    assert f"holder training (pid {missing}, since " in str(error)
    assert "seems gone, but the lock is still held: " in str(error)
    assert json.loads((tmp_path / lock.LOCK_FILE).read_text())["pid"] == (
        missing)
  finally:
    proc.stdin.close()
    proc.wait(timeout=60)


def test_a_lock_symlinks_target_is_never_written(tmp_path):
  workdir = tmp_path / "w"
  workdir.mkdir()
  target = tmp_path / "precious.txt"
  target.write_text("keep me\n")
  (workdir / lock.LOCK_FILE).symlink_to(target)
  with pytest.raises(WorkdirError, match="it is a symbolic link"):
    lock.acquire(str(workdir), "training")
  assert target.read_text() == "keep me\n"
  (workdir / lock.LOCK_FILE).unlink()
  os.mkfifo(workdir / lock.LOCK_FILE)
  with pytest.raises(WorkdirError, match="is not a regular file"):
    lock.acquire(str(workdir), "training")


def test_a_folder_made_for_the_lock_goes_when_nothing_was_written(tmp_path):
  held = lock.acquire(str(tmp_path / "new"), "training")
  held.release()
  assert not (tmp_path / "new").exists()
  with pytest.raises(WorkdirError, match="does not exist"):
    lock.acquire(str(tmp_path / "new"), "eval", create=False)
  # A training refused for missing data leaves no workdir behind.
  (tmp_path / "no_data").mkdir()
  with pytest.raises(DataError, match="has no train-images-idx3-ubyte"):
    from capsnet_jax.training import loop  # pylint: disable=g-import-not-at-top
    loop.train_and_evaluate(tiny_config(tmp_path / "no_data"),
                            str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_training_eval_and_visualize_refuse_a_workdir_in_use(idx_dir, tmp_path):
  """Each refuses at once, naming the holder, before writing anything."""
  from capsnet_jax.analysis import visualize  # pylint: disable=g-import-not-at-top
  from capsnet_jax.training import loop  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "w"
  workdir.mkdir()
  config = tiny_config(idx_dir)
  (workdir / "eval_history.jsonl").write_text(
      json.dumps({"step": 7, "source": "train", "test_accuracy": 0.5}) + "\n")
  (workdir / "checkpoints").mkdir()
  before = snapshot(workdir)
  held = lock.acquire(str(workdir), "park restore")
  try:
    for call in (lambda: loop.train_and_evaluate(config, str(workdir)),
                 lambda: loop.evaluate_checkpoint(config, str(workdir)),
                 lambda: visualize.visualize(config, str(workdir))):
      error = _refused_at_once(call)
      assert f"in use by park restore (pid {os.getpid()}," in str(error)
    assert snapshot(workdir) == {**before, lock.LOCK_FILE: snapshot(
        workdir)[lock.LOCK_FILE]}
  finally:
    held.release()
  assert snapshot(workdir) == before
