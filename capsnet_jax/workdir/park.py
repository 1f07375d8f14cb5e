"""Parks a training run in a folder and brings it back: move a run between
machines, or keep it through the loss of a machine.

Synopsis::

  python -m capsnet_jax.workdir.park save --workdir=runs/mnist_efficient --to=DIR
  python -m capsnet_jax.workdir.park restore --from=DIR --workdir=runs/mnist_efficient
  python main.py --config=... --workdir=runs/mnist_efficient  # resumes

``save`` copies what resuming needs: the latest complete checkpoint (the
whole training state: parameters, optimiser moments, batch statistics, step),
``config.json``, ``eval_history.jsonl`` and ``results.json`` when present,
and the TensorBoard event files, and writes ``park.json`` with the step and
the sha256 of every file. It replaces an earlier park in the same folder:
the new park is written beside it and fsynced, swapped in by a rename, and
only then is the earlier one deleted. ``save`` takes the workdir's lock
(capsnet_jax.workdir.lock), so it refuses a workdir in use; ``--live``
parks a run that keeps training meanwhile (finished checkpoints do not
change, and a checkpoint deleted while it is copied is refused).

``restore`` checks every checksum, then copies the checkpoint and the files
into the workdir. The training command then resumes from that step exactly
as it would have on the first machine. It refuses a workdir that already
holds a checkpoint at or after the parked step (nothing to bring back;
``--only_if_newer`` leaves such a workdir as it is and exits 0) or a
history or config that differs from the parked one, so it cannot overwrite
a newer run. It takes the workdir's lock: it refuses a workdir in use, and
a run started meanwhile refuses it.

Parks hold plain files and folders: ``read`` and ``restore`` refuse one
with a symbolic link anywhere (it would copy what the link points to
unchecked), and ``save`` refuses a checkpoint that holds one (orbax writes
none) or a destination that is one.

Only the latest checkpoint travels: the best one by test accuracy, if older,
stays behind; ``eval_history.jsonl`` keeps every evaluation, so the best
accuracy and the tables are unchanged. Figures, summaries and logs stay
behind too.
"""

import datetime
import json
import os
import shutil
import sys
from typing import Any

from capsnet_jax import errors
from capsnet_jax.errors import WorkdirError
from capsnet_jax.workdir import files as file_lib
from capsnet_jax.workdir import history
from capsnet_jax.workdir import lock
from capsnet_jax.workdir import record

PARK_FILE = "park.json"
CHECKPOINTS = "checkpoints"
# Files of a workdir that travel with the checkpoint (when present), and
# the TensorBoard event files (the training curves; a resumed run adds one).
WORKDIR_FILES = ("config.json", history.HISTORY_FILE, "results.json")
EVENTS_PREFIX = "events.out.tfevents."


def _workdir_files(folder: str) -> list[str]:
  return ([n for n in WORKDIR_FILES if os.path.exists(os.path.join(folder, n))]
          + sorted(n for n in os.listdir(folder) if n.startswith(EVENTS_PREFIX)))


def _each_file(root: str, measure) -> dict[str, Any]:
  """{path relative to root: measure(full path)} of every file under root."""
  return {os.path.relpath(os.path.join(d, n), root): measure(os.path.join(d, n))
          for d, _, names in os.walk(root) for n in names}


def _files(root: str) -> dict[str, str]:
  return _each_file(root, file_lib.sha256)


def _refuse_links(root: str, what: str) -> None:
  """WorkdirError if ``root`` is, or holds anywhere, a symbolic link."""
  if os.path.islink(root):
    raise WorkdirError(f"{what} {root!r} is a symbolic link: give the "
                       "folder itself")
  for folder, dirs, names in os.walk(root):
    for name in dirs + names:
      if os.path.islink(os.path.join(folder, name)):
        raise WorkdirError(
            f"{what} {root!r} holds a symbolic link, "
            f"{os.path.relpath(os.path.join(folder, name), root)}: parks "
            "hold plain files and folders only")


def _step_folders(workdir: str, finished: bool) -> list[int]:
  root = os.path.join(workdir, CHECKPOINTS)
  if not os.path.isdir(root):
    return []
  return sorted(int(n) for n in os.listdir(root) if n.isdigit() and (
      not finished or
      os.path.exists(os.path.join(root, n, "_CHECKPOINT_METADATA"))))


def complete_steps(workdir: str) -> list[int]:
  """The steps of the workdir's finished checkpoints, ascending."""
  # orbax writes a step into a temporary folder and renames it to the bare
  # step number when it is complete; _CHECKPOINT_METADATA is written before.
  return _step_folders(workdir, finished=True)


def _sizes(root: str) -> dict[str, int]:
  return _each_file(root, os.path.getsize)


def _is_park(folder: str) -> bool:
  """Whether folder holds park.json and exactly the files it lists."""
  try:
    with open(os.path.join(folder, PARK_FILE)) as f:
      listed = set(json.load(f)["files"])
  except (OSError, ValueError, KeyError, TypeError):
    return False
  return set(_sizes(folder)) == listed | {PARK_FILE}


def _inside(path: str, folder: str) -> bool:
  path, folder = os.path.abspath(path), os.path.abspath(folder)
  return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def save(workdir: str, to: str, live: bool = False) -> dict[str, Any]:
  """Parks the latest checkpoint of ``workdir`` in ``to``; returns park.json.

  ``to`` must be new, empty or an earlier park (exactly park.json and the
  files it lists), which is then replaced as a whole. Holds the workdir's
  lock meanwhile, unless ``live`` (a run trains in it meanwhile)."""
  if not os.path.isdir(workdir):
    raise WorkdirError(f"{workdir!r} has no finished checkpoint to park "
                       "(no such folder)")
  if live:
    return _save(workdir, to)
  with lock.hold(workdir, "park save", create=False):
    return _save(workdir, to)


def _save(workdir: str, to: str) -> dict[str, Any]:
  steps = complete_steps(workdir)
  if not steps:
    raise WorkdirError(f"{workdir!r} has no finished checkpoint to park")
  step = steps[-1]
  if _inside(workdir, to) or _inside(to, os.path.join(workdir, CHECKPOINTS)):
    raise WorkdirError(f"park {workdir!r} into a folder outside it and its "
                       "checkpoints, not above it")
  if os.path.islink(to):
    raise WorkdirError(f"{to!r} is a symbolic link: park into a folder")
  if os.path.exists(to) and not (
      os.path.isdir(to) and (not os.listdir(to) or _is_park(to))):
    raise WorkdirError(f"{to!r} is neither empty nor an earlier park (only "
                       f"{PARK_FILE} and the files it lists): park into a "
                       "new or empty folder")
  with file_lib.staged_folder(to) as staging:
    src = os.path.join(workdir, CHECKPOINTS, str(step))
    dst = os.path.join(staging, CHECKPOINTS, str(step))
    _refuse_links(src, "checkpoint")
    before = _sizes(src)
    try:
      shutil.copytree(src, dst)
    except OSError as e:  # deleted by the run's retention meanwhile
      raise WorkdirError(f"checkpoint {step} changed while it was copied "
                         f"({e}); park again") from e
    # A step being deleted loses files before its folder: compare.
    if not before or not before == _sizes(src) == _sizes(dst):
      raise WorkdirError(f"checkpoint {step} changed while it was copied; "
                         "park again")
    for name in _workdir_files(workdir):
      file_lib.copy_file(os.path.join(workdir, name),
                         os.path.join(staging, name))
    # The history may hold an evaluation after the checkpoint (written just
    # before the next checkpoint): resuming would drop it, so drop it here.
    if os.path.exists(os.path.join(staging, history.HISTORY_FILE)):
      history.truncate_after(staging, step)
    records = history.read(staging)
    last = history.last(records)
    best_acc, best_step = history.best(history.training_records(records))
    meta = dict(
        step=step, source_workdir=os.path.abspath(workdir),
        epoch=last.get("epoch") if last else None,
        last_test_accuracy=last.get("test_accuracy") if last else None,
        best_test_accuracy=best_acc, best_step=best_step,
        parked=datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
        files=_files(staging))
    file_lib.atomic_write_json(os.path.join(staging, PARK_FILE), meta)
  return meta


def read(folder: str) -> dict[str, Any]:
  """park.json of ``folder`` after checking every file's sha256."""
  meta_path = os.path.join(folder, PARK_FILE)
  if not os.path.exists(meta_path):
    raise WorkdirError(f"{folder!r} holds no parked run (no {PARK_FILE})")
  _refuse_links(folder, "parked run")
  try:
    with open(meta_path) as f:
      meta = json.load(f)
    int(meta["step"])
    files = dict(meta["files"])
  except (ValueError, KeyError, TypeError) as e:
    raise WorkdirError(f"{meta_path} is damaged ({type(e).__name__}: {e})"
                       ) from e
  actual = _files(folder)
  actual.pop(PARK_FILE)
  for name, digest in files.items():
    if name not in actual:
      raise WorkdirError(f"parked run {folder!r} lacks {name}")
    if actual[name] != digest:
      raise WorkdirError(f"parked run {folder!r}: {name} has sha256 "
                         f"{actual[name]}, park.json records {digest}; the "
                         "file is damaged or was replaced")
  extra = sorted(set(actual) - set(files))
  if extra:
    raise WorkdirError(f"parked run {folder!r} has files park.json does not "
                       f"list: {', '.join(extra[:5])}")
  return meta


# Fields of an evaluation record that differ between two machines running
# the same evaluation.
TIMING_FIELDS = ("time", "wall_seconds", "train_seconds")


def _evaluations(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
  return [{k: v for k, v in r.items() if k not in TIMING_FIELDS}
          for r in records]


def _copy_in(src: str, workdir: str) -> None:
  """Copies a file into workdir atomically (a unique temporary name,
  fsynced, renamed)."""
  file_lib.copy_file(src, os.path.join(workdir, os.path.basename(src)))


def restore(folder: str, workdir: str, only_if_newer: bool = False
            ) -> dict[str, Any] | None:
  """Copies the parked run in ``folder`` into ``workdir``; returns park.json.

  With ``only_if_newer``, a workdir already at or after the parked step is
  left as it is and None is returned (instead of an error). The files come
  first and the checkpoint last, so a restore that stops midway is redone
  by the next one. Holds the workdir's lock meanwhile."""
  meta = read(folder)
  with lock.hold(workdir, "park restore"):
    return _restore(folder, workdir, meta, only_if_newer)


def _restore(folder: str, workdir: str, meta: dict[str, Any],
             only_if_newer: bool) -> dict[str, Any] | None:
  step = int(meta["step"])
  have = _step_folders(workdir, finished=False)  # what orbax would restore
  if have and have[-1] >= step:
    if only_if_newer:
      return None
    raise WorkdirError(f"{workdir!r} already has a checkpoint at step "
                       f"{have[-1]} >= the parked step {step}: nothing to "
                       "restore")
  parked = record.read_config(folder)
  if parked is not None:
    record.check_compatible(workdir, {k: parked.get(k)
                                      for k in record.IDENTITY_FIELDS})
  # The workdir's evaluations up to its latest checkpoint (a resume drops
  # the later ones) must be the parked run's first ones.
  finished = complete_steps(workdir)
  mine = [r for r in history.read(workdir)
          if finished and r["step"] <= finished[-1]]
  parked = history.read(folder)
  if _evaluations(mine) != _evaluations(parked[:len(mine)]):
    raise WorkdirError(f"{history.path(workdir)} differs from the parked "
                       "run's history: restore into another workdir")
  os.makedirs(os.path.join(workdir, CHECKPOINTS), exist_ok=True)
  for name in _workdir_files(folder):
    src, dst = os.path.join(folder, name), os.path.join(workdir, name)
    if (name.startswith(EVENTS_PREFIX) and os.path.exists(dst)
        and os.path.getsize(dst) >= os.path.getsize(src)):
      continue  # this machine's copy ran at least as far
    _copy_in(src, workdir)
  # A step folder left unfinished by a crash (not in ``finished``) is
  # replaced whole.
  with file_lib.staged_folder(
      os.path.join(workdir, CHECKPOINTS, str(step))) as staging:
    shutil.copytree(os.path.join(folder, CHECKPOINTS, str(step)), staging,
                    dirs_exist_ok=True)
  return meta


def main(argv: list[str]) -> int:
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(
      prog="python -m capsnet_jax.workdir.park",
      description="Park a training run's latest checkpoint in a folder, or "
      "restore it into a workdir to resume there.")
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("save", help="park WORKDIR's latest checkpoint in TO")
  p.add_argument("--workdir", required=True)
  p.add_argument("--to", required=True)
  p.add_argument("--live", action="store_true",
                 help="park a run that keeps training in WORKDIR meanwhile "
                 "(without the workdir's lock)")
  r = sub.add_parser("restore", help="copy a parked run into WORKDIR")
  r.add_argument("--from", dest="source", required=True)
  r.add_argument("--workdir", required=True)
  r.add_argument("--only_if_newer", action="store_true",
                 help="leave a workdir already at or after the parked step "
                 "as it is (exit 0) instead of failing")
  args = parser.parse_args(argv)
  try:
    if args.command == "save":
      meta = save(args.workdir, args.to, args.live)
      verb = f"parked step {meta['step']} of {args.workdir} in {args.to}"
    else:
      meta = restore(args.source, args.workdir, args.only_if_newer)
      if meta is None:
        print(f"{args.workdir} is at or after the parked step: left as it is")
        return errors.EXIT_OK
      verb = (f"restored step {meta['step']} into {args.workdir}; the "
              "training command resumes from it")
  except (WorkdirError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return errors.EXIT_USER_ERROR
  size = sum(_sizes(args.to if args.command == "save" else args.source
                    ).values())
  print(f"{verb} ({size / 1e6:.1f} MB; best test accuracy "
        f"{meta['best_test_accuracy']} at step {meta['best_step']})")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
