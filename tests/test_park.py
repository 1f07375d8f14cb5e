"""capsnet_jax.workdir.park on a workdir of tiny checkpoints: what travels, the
checksums, the refusals that keep a newer run from being overwritten, the
workdir's lock, symbolic links, and a new park on disk before the old one
goes. (tests/test_reliability.py resumes a parked real run and compares it
with an uninterrupted one.)"""

import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from capsnet_jax import errors
from capsnet_jax.errors import WorkdirError
from capsnet_jax.workdir import checkpoints
from capsnet_jax.workdir import history
from capsnet_jax.workdir import lock
from capsnet_jax.workdir import park
from configs import default

# As training writes it: primary_types holds the number (tiny: 4).
CONFIG = default.get_config().to_dict() | {"model": "tiny", "primary_types": 4}


def _tree(step):
  return {"w": jnp.full((2, 3), float(step)), "step": jnp.array(step, jnp.int32)}


def _workdir(path, steps=(5, 10), evaluated=(5, 10, 15)):
  """A workdir with checkpoints at ``steps`` and evaluations at ``evaluated``
  (test accuracies 0.90, 0.95, 0.97)."""
  path.mkdir()
  ckpt = checkpoints.Checkpointer(str(path), keep=3)
  for step in steps:
    assert ckpt.save(step, _tree(step), {"test_accuracy": 0.5})
    ckpt.wait()
  ckpt.close()
  with open(path / "config.json", "w") as f:
    json.dump(CONFIG, f)
  (path / "events.out.tfevents.123.host.1.v2").write_bytes(b"curves")
  (path / "train.log").write_text("stays behind")
  for i, step in enumerate(evaluated):
    history.append(str(path), {"step": step, "epoch": float(i + 1),
                               "test_accuracy": (0.90, 0.95, 0.97)[i],
                               "source": "train"})
  return path


def test_save_then_restore_brings_back_the_latest_checkpoint(tmp_path):
  src = _workdir(tmp_path / "run")
  meta = park.save(str(src), str(tmp_path / "parked"))
  assert meta["step"] == 10
  # The evaluation at step 15 has no checkpoint: resuming would redo it.
  assert [r["step"] for r in history.read(str(tmp_path / "parked"))] == [5, 10]
  assert meta["best_test_accuracy"] == pytest.approx(0.95)
  assert meta["best_step"] == 10 and meta["epoch"] == 2.0
  assert sorted(os.listdir(tmp_path / "parked" / "checkpoints")) == ["10"]
  assert "config.json" in meta["files"]

  dst = tmp_path / "moved"
  park.restore(str(tmp_path / "parked"), str(dst))
  ckpt = checkpoints.Checkpointer(str(dst), create=False)
  assert ckpt.all_steps() == [10]
  restored = ckpt.restore(_tree(0))
  ckpt.close()
  np.testing.assert_array_equal(restored["w"], np.full((2, 3), 10.0))
  assert int(restored["step"]) == 10
  with open(dst / "config.json") as f:
    assert json.load(f) == CONFIG
  assert [r["step"] for r in history.read(str(dst))] == [5, 10]
  assert sorted(os.listdir(dst)) == ["checkpoints", "config.json",
                                     "eval_history.jsonl",
                                     "events.out.tfevents.123.host.1.v2"]
  assert (dst / "events.out.tfevents.123.host.1.v2").read_bytes() == b"curves"


def test_a_second_save_replaces_the_first(tmp_path):
  src = _workdir(tmp_path / "run", steps=(5,), evaluated=(5,))
  park.save(str(src), str(tmp_path / "parked"))
  ckpt = checkpoints.Checkpointer(str(src), keep=3)
  assert ckpt.save(20, _tree(20))
  ckpt.close()
  assert park.save(str(src), str(tmp_path / "parked"))["step"] == 20
  assert os.listdir(tmp_path / "parked" / "checkpoints") == ["20"]
  assert not (tmp_path / "parked.partial").exists()


def test_save_never_replaces_a_folder_that_is_not_a_park(tmp_path):
  src = _workdir(tmp_path / "run")
  (tmp_path / "notes").mkdir()
  (tmp_path / "notes" / "keep.txt").write_text("mine")
  with pytest.raises(WorkdirError, match="neither empty nor an earlier park"):
    park.save(str(src), str(tmp_path / "notes"))
  assert os.listdir(tmp_path / "notes") == ["keep.txt"]
  (tmp_path / "empty").mkdir()
  assert park.save(str(src), str(tmp_path / "empty"))["step"] == 10
  # A file added beside an earlier park makes it not a park any more.
  (tmp_path / "empty" / "NOTES.md").write_text("mine")
  with pytest.raises(WorkdirError, match="neither empty nor an earlier park"):
    park.save(str(src), str(tmp_path / "empty"))
  assert (tmp_path / "empty" / "NOTES.md").read_text() == "mine"
  # Nor above the workdir, nor inside its checkpoints.
  with pytest.raises(WorkdirError, match="outside it"):
    park.save(str(src), str(tmp_path))
  with pytest.raises(WorkdirError, match="outside it"):
    park.save(str(src), str(src / "checkpoints" / "p"))
  assert not [n for n in os.listdir(tmp_path) if n.startswith(".park")]


def test_a_changed_file_is_named(tmp_path):
  park.save(str(_workdir(tmp_path / "run")), str(tmp_path / "parked"))
  with open(tmp_path / "parked" / "config.json", "a") as f:
    f.write(" ")
  with pytest.raises(WorkdirError, match="config.json has sha256"):
    park.restore(str(tmp_path / "parked"), str(tmp_path / "moved"))
  assert not (tmp_path / "moved").exists()


def test_restore_refuses_a_workdir_that_is_not_behind(tmp_path):
  src = _workdir(tmp_path / "run")
  park.save(str(src), str(tmp_path / "parked"))
  with pytest.raises(WorkdirError, match="already has a checkpoint at step 10"):
    park.restore(str(tmp_path / "parked"), str(src))
  assert park.restore(str(tmp_path / "parked"), str(src),
                      only_if_newer=True) is None
  assert checkpoints.Checkpointer(str(src), create=False).all_steps() == [5, 10]
  other = tmp_path / "other"
  other.mkdir()
  with open(other / "config.json", "w") as f:
    json.dump(CONFIG | {"model": "capsnet"}, f)
  with pytest.raises(WorkdirError, match="a different configuration"):
    park.restore(str(tmp_path / "parked"), str(other))
  assert os.listdir(other) == ["config.json"]
  # Training-only fields may differ, as when training resumes.
  with open(other / "config.json", "w") as f:
    json.dump(CONFIG | {"idx_dir": "/elsewhere", "num_epochs": 3}, f)
  assert park.restore(str(tmp_path / "parked"), str(other))["step"] == 10


def test_restore_checks_the_history_up_to_the_workdir_checkpoint(tmp_path):
  park.save(str(_workdir(tmp_path / "run")), str(tmp_path / "parked"))
  # Behind (checkpoint at 5), the same evaluations at other times, and one
  # after its checkpoint that a resume drops anyway: restored.
  behind = _workdir(tmp_path / "behind", steps=(5,), evaluated=(5, 10, 15))
  records = history.read(str(behind))
  with open(behind / "eval_history.jsonl", "w") as f:
    for r in records:
      f.write(json.dumps(r | {"time": 1.0, "wall_seconds": 2.0}) + "\n")
  assert park.restore(str(tmp_path / "parked"), str(behind))["step"] == 10
  assert checkpoints.Checkpointer(str(behind), create=False).all_steps() == [5, 10]
  # A different evaluation before its checkpoint: another run.
  other = _workdir(tmp_path / "other", steps=(5,), evaluated=())
  history.append(str(other), {"step": 5, "epoch": 1.0, "test_accuracy": 0.5,
                              "source": "train"})
  with pytest.raises(WorkdirError, match="differs from the parked run's history"):
    park.restore(str(tmp_path / "parked"), str(other))


@pytest.mark.parametrize("failing", ["copytree", "_copy_in"])
def test_restore_puts_the_checkpoint_in_last(tmp_path, monkeypatch, failing):
  """A restore stopped while copying the history or the checkpoint is
  redone in full by the next one (the checkpoint marks it done)."""
  park.save(str(_workdir(tmp_path / "run")), str(tmp_path / "parked"))
  dst = tmp_path / "moved"
  real = getattr(park.shutil if failing == "copytree" else park, failing)

  def fail(src, *args, **kwargs):
    if failing == "copytree" or src.endswith(history.HISTORY_FILE):
      raise OSError("disk full")
    return real(src, *args, **kwargs)
  monkeypatch.setattr(park.shutil if failing == "copytree" else park,
                      failing, fail)
  with pytest.raises(OSError, match="disk full"):
    park.restore(str(tmp_path / "parked"), str(dst))
  monkeypatch.undo()
  assert park.complete_steps(str(dst)) == []
  assert os.listdir(dst / "checkpoints") == []
  assert park.restore(str(tmp_path / "parked"), str(dst),
                      only_if_newer=True)["step"] == 10
  assert [r["step"] for r in history.read(str(dst))] == [5, 10]


def test_command_line_errors_are_one_line(tmp_path, capsys):
  (tmp_path / "empty").mkdir()
  assert park.main(["save", f"--workdir={tmp_path / 'empty'}",
                    f"--to={tmp_path / 'p'}"]) == errors.EXIT_USER_ERROR == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "no finished checkpoint" in err
  assert err.count("\n") == 1
  assert park.main(["restore", f"--from={tmp_path / 'empty'}",
                    f"--workdir={tmp_path / 'w'}"]) == 2
  assert "holds no parked run" in capsys.readouterr().err


def _snapshot(folder) -> dict[str, bytes]:
  return {os.path.relpath(os.path.join(d, n), folder):
          open(os.path.join(d, n), "rb").read()  # pylint: disable=consider-using-with
          for d, _, names in os.walk(folder) for n in names}


def test_save_and_restore_refuse_a_workdir_in_use(tmp_path, capsys):
  src = _workdir(tmp_path / "run")
  held = lock.acquire(str(src), "training")
  try:
    with pytest.raises(WorkdirError, match=rf"in use by training \(pid "
                       rf"{os.getpid()},"):
      park.save(str(src), str(tmp_path / "parked"))
    assert not (tmp_path / "parked").exists()
    # --live parks a run that keeps training meanwhile.
    assert park.main(["save", f"--workdir={src}", f"--to={tmp_path / 'parked'}",
                      "--live"]) == 0
  finally:
    held.release()
  dst = _workdir(tmp_path / "behind", steps=(5,), evaluated=(5,))
  before = _snapshot(dst)
  held = lock.acquire(str(dst), "training")
  try:
    assert park.main(["restore", f"--from={tmp_path / 'parked'}",
                      f"--workdir={dst}"]) == 2
    assert f"in use by training (pid {os.getpid()}," in capsys.readouterr().err
    assert {k: v for k, v in _snapshot(dst).items()
            if k != lock.LOCK_FILE} == before  # nothing restored
  finally:
    held.release()
  assert park.restore(str(tmp_path / "parked"), str(dst))["step"] == 10
  # A run started during a restore is refused: the lock is held meanwhile.
  seen = []
  real = park._copy_in  # pylint: disable=protected-access

  def copy_in(src_file, workdir):
    with pytest.raises(WorkdirError, match="in use by park restore"):
      lock.acquire(workdir, "training")
    seen.append(os.path.basename(src_file))
    return real(src_file, workdir)
  other = tmp_path / "other"
  park._copy_in = copy_in  # pylint: disable=protected-access
  try:
    park.restore(str(tmp_path / "parked"), str(other))
  finally:
    park._copy_in = real  # pylint: disable=protected-access
  assert "eval_history.jsonl" in seen
  assert not (other / lock.LOCK_FILE).exists()


def test_symbolic_links_are_refused(tmp_path):
  src = _workdir(tmp_path / "run")
  park.save(str(src), str(tmp_path / "parked"))
  outside = tmp_path / "outside"
  outside.mkdir()
  (outside / "secret").write_text("not part of any run")
  # A park with a linked folder: its content would be copied unchecked.
  os.symlink(outside, tmp_path / "parked" / "checkpoints" / "10" / "more")
  with pytest.raises(WorkdirError, match="holds a symbolic link, "
                     "checkpoints/10/more: parks hold plain files"):
    park.restore(str(tmp_path / "parked"), str(tmp_path / "moved"))
  assert not (tmp_path / "moved").exists()
  os.unlink(tmp_path / "parked" / "checkpoints" / "10" / "more")
  # Nor does save copy a link inside a checkpoint, or park into a link.
  os.symlink(outside, src / "checkpoints" / "10" / "more")
  with pytest.raises(WorkdirError, match="checkpoint .* holds a symbolic "
                     "link, more"):
    park.save(str(src), str(tmp_path / "parked2"))
  os.unlink(src / "checkpoints" / "10" / "more")
  os.symlink(tmp_path / "parked", tmp_path / "link")
  with pytest.raises(WorkdirError, match="is a symbolic link: park into a "
                     "folder"):
    park.save(str(src), str(tmp_path / "link"))
  assert not [n for n in os.listdir(tmp_path) if n.startswith(".park")]


def test_the_new_park_is_on_disk_before_the_old_one_goes(tmp_path,
                                                         monkeypatch):
  src = _workdir(tmp_path / "run")
  park.save(str(src), str(tmp_path / "parked"))
  events, fsync, rmtree = [], os.fsync, shutil.rmtree
  monkeypatch.setattr(os, "fsync", lambda fd: (
      events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))), fsync(fd)))
  monkeypatch.setattr(shutil, "rmtree", lambda p, *a, **k: (
      events.append(("rmtree", str(p))), rmtree(p, *a, **k)))
  meta = park.save(str(src), str(tmp_path / "parked"))
  # The old park's removal: from the staging folder it was swapped into
  # (renameat2 exchange) or from the .parked.old.* folder it was put aside
  # in (files.staged_folder), whichever this OS does.
  gone = next(i for i, (what, p) in enumerate(events)
              if what == "rmtree" and os.path.basename(p).startswith(".parked."))
  staging = {p for what, p in events[:gone] if what == "fsync"}
  names = {os.path.basename(p) for p in staging}
  # Every file of the new park (and its folders) was synced first.
  assert {os.path.basename(n) for n in meta["files"]} | {
      park.PARK_FILE, "checkpoints", "10"} <= names
  assert any(p == str(tmp_path) for p in staging)  # the rename, too
