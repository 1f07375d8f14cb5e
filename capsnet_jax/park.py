"""Parks a training run in a folder and brings it back: move a run between
machines, or keep it through the loss of a machine.

Synopsis::

  python -m capsnet_jax.park save --workdir=runs/mnist_efficient --to=DIR
  python -m capsnet_jax.park restore --from=DIR --workdir=runs/mnist_efficient
  python main.py --config=... --workdir=runs/mnist_efficient  # resumes

``save`` copies what resuming needs: the latest complete checkpoint (the
whole training state: parameters, optimiser moments, batch statistics, step),
``config.json``, ``eval_history.jsonl`` and ``results.json`` when present,
and the TensorBoard event files, and writes ``park.json`` with the step and the sha256 of every file. It
replaces an earlier park in the same folder. The run may keep training while
it is saved: finished checkpoints do not change.

``restore`` checks every checksum, then copies the checkpoint and the files
into the workdir. The training command then resumes from that step exactly
as it would have on the first machine. It refuses a workdir that already
holds a checkpoint at or after the parked step (nothing to bring back;
``--only_if_newer`` leaves such a workdir as it is and exits 0) or a
history or config that differs from the parked one, so it cannot overwrite
a newer run.

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

from capsnet_jax import history
from capsnet_jax.bundled import sha256
from capsnet_jax.errors import WorkdirError

PARK_FILE = "park.json"
CHECKPOINTS = "checkpoints"
# Files of a workdir that travel with the checkpoint (when present), and
# the TensorBoard event files (the training curves; a resumed run adds one).
WORKDIR_FILES = ("config.json", history.HISTORY_FILE, "results.json")
EVENTS_PREFIX = "events.out.tfevents."


def _workdir_files(folder: str) -> list[str]:
  return ([n for n in WORKDIR_FILES if os.path.exists(os.path.join(folder, n))]
          + sorted(n for n in os.listdir(folder) if n.startswith(EVENTS_PREFIX)))


def _files(root: str) -> dict[str, str]:
  """{path relative to root: sha256} of every file under root."""
  out = {}
  for dirpath, _, filenames in os.walk(root):
    for name in filenames:
      full = os.path.join(dirpath, name)
      out[os.path.relpath(full, root)] = sha256(full)
  return out


def complete_steps(workdir: str) -> list[int]:
  """The steps of the workdir's finished checkpoints, ascending."""
  root = os.path.join(workdir, CHECKPOINTS)
  if not os.path.isdir(root):
    return []
  # orbax writes a step into a temporary folder and renames it to the bare
  # step number when it is complete; _CHECKPOINT_METADATA is written before.
  return sorted(int(n) for n in os.listdir(root) if n.isdigit() and
                os.path.exists(os.path.join(root, n, "_CHECKPOINT_METADATA")))


def save(workdir: str, to: str) -> dict[str, Any]:
  """Parks the latest checkpoint of ``workdir`` in ``to``; returns park.json."""
  steps = complete_steps(workdir)
  if not steps:
    raise WorkdirError(f"{workdir!r} has no finished checkpoint to park")
  step = steps[-1]
  if os.path.abspath(to) == os.path.abspath(workdir):
    raise WorkdirError("park into another folder than the workdir")
  if (os.path.isdir(to) and os.listdir(to)
      and not os.path.exists(os.path.join(to, PARK_FILE))):
    raise WorkdirError(f"{to!r} is not empty and holds no parked run: park "
                       "into a new or empty folder (an earlier park is "
                       "replaced)")
  staging = to.rstrip(os.sep) + ".partial"
  shutil.rmtree(staging, ignore_errors=True)
  os.makedirs(os.path.join(staging, CHECKPOINTS))
  src = os.path.join(workdir, CHECKPOINTS, str(step))
  try:
    shutil.copytree(src, os.path.join(staging, CHECKPOINTS, str(step)))
  except FileNotFoundError as e:  # deleted by the run's retention meanwhile
    shutil.rmtree(staging, ignore_errors=True)
    raise WorkdirError(f"checkpoint {step} disappeared while it was copied "
                       f"({e}); park again") from e
  for name in _workdir_files(workdir):
    shutil.copy2(os.path.join(workdir, name), staging)
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
  with open(os.path.join(staging, PARK_FILE), "w") as f:
    json.dump(meta, f, indent=2, sort_keys=True)
    f.write("\n")
  shutil.rmtree(to, ignore_errors=True)
  os.replace(staging, to)
  return meta


def read(folder: str) -> dict[str, Any]:
  """park.json of ``folder`` after checking every file's sha256."""
  meta_path = os.path.join(folder, PARK_FILE)
  if not os.path.exists(meta_path):
    raise WorkdirError(f"{folder!r} holds no parked run (no {PARK_FILE})")
  with open(meta_path) as f:
    meta = json.load(f)
  actual = _files(folder)
  actual.pop(PARK_FILE)
  for name, digest in meta["files"].items():
    if name not in actual:
      raise WorkdirError(f"parked run {folder!r} lacks {name}")
    if actual[name] != digest:
      raise WorkdirError(f"parked run {folder!r}: {name} has sha256 "
                         f"{actual[name]}, park.json records {digest}; the "
                         "file is damaged or was replaced")
  extra = sorted(set(actual) - set(meta["files"]))
  if extra:
    raise WorkdirError(f"parked run {folder!r} has files park.json does not "
                       f"list: {', '.join(extra[:5])}")
  return meta


def _same_prefix(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
  n = min(len(a), len(b))
  return a[:n] == b[:n]


def restore(folder: str, workdir: str, only_if_newer: bool = False
            ) -> dict[str, Any] | None:
  """Copies the parked run in ``folder`` into ``workdir``; returns park.json.

  With ``only_if_newer``, a workdir already at or after the parked step is
  left as it is and None is returned (instead of an error)."""
  meta = read(folder)
  step = int(meta["step"])
  have = complete_steps(workdir)
  if have and have[-1] >= step:
    if only_if_newer:
      return None
    raise WorkdirError(f"{workdir!r} already has a checkpoint at step "
                       f"{have[-1]} >= the parked step {step}: nothing to "
                       "restore")
  parked_config = os.path.join(folder, "config.json")
  config = os.path.join(workdir, "config.json")
  if os.path.exists(config) and os.path.exists(parked_config):
    with open(config) as f, open(parked_config) as g:
      if json.load(f) != json.load(g):
        raise WorkdirError(f"{config} differs from the parked run's "
                           "config.json: restore into another workdir")
  if not _same_prefix(history.read(workdir), history.read(folder)):
    raise WorkdirError(f"{history.path(workdir)} differs from the parked "
                       "run's history: restore into another workdir")
  os.makedirs(os.path.join(workdir, CHECKPOINTS), exist_ok=True)
  target = os.path.join(workdir, CHECKPOINTS, str(step))
  staging = target + ".restoring"
  shutil.rmtree(staging, ignore_errors=True)
  shutil.copytree(os.path.join(folder, CHECKPOINTS, str(step)), staging)
  shutil.rmtree(target, ignore_errors=True)  # an unfinished one (not in have)
  os.replace(staging, target)
  for name in _workdir_files(folder):
    if name != PARK_FILE:
      shutil.copy2(os.path.join(folder, name), workdir)
  return meta


def main(argv: list[str]) -> int:
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(
      prog="python -m capsnet_jax.park",
      description="Park a training run's latest checkpoint in a folder, or "
      "restore it into a workdir to resume there.")
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("save", help="park WORKDIR's latest checkpoint in TO")
  p.add_argument("--workdir", required=True)
  p.add_argument("--to", required=True)
  r = sub.add_parser("restore", help="copy a parked run into WORKDIR")
  r.add_argument("--from", dest="source", required=True)
  r.add_argument("--workdir", required=True)
  r.add_argument("--only_if_newer", action="store_true",
                 help="leave a workdir already at or after the parked step "
                 "as it is (exit 0) instead of failing")
  args = parser.parse_args(argv)
  try:
    if args.command == "save":
      meta = save(args.workdir, args.to)
      verb = f"parked step {meta['step']} of {args.workdir} in {args.to}"
    else:
      meta = restore(args.source, args.workdir, args.only_if_newer)
      if meta is None:
        print(f"{args.workdir} is at or after the parked step: left as it is")
        return 0
      verb = (f"restored step {meta['step']} into {args.workdir}; the "
              "training command resumes from it")
  except WorkdirError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  size = sum(os.path.getsize(os.path.join(dp, n))
             for dp, _, ns in os.walk(args.to if args.command == "save"
                                      else args.source) for n in ns)
  print(f"{verb} ({size / 1e6:.1f} MB; best test accuracy "
        f"{meta['best_test_accuracy']} at step {meta['best_step']})")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
