"""Result tables and curves generated from workdirs' evaluation histories.

  python -m capsnet_jax.analysis.report paper=runs/mnist ref=runs/mnist_ref        # summary
  python -m capsnet_jax.analysis.report --table=epochs --every=5 runs/mnist        # per epoch
  python -m capsnet_jax.analysis.report --table=decoders fc=runs/dec_fc ...        # vs reference
  python -m capsnet_jax.analysis.report --table=multimnist runs/multimnist         # vs the paper
  python -m capsnet_jax.analysis.report --table=agreement a=runs/a b=runs/b        # same run?
  python -m capsnet_jax.analysis.report --table=plateau runs/a [--from_epoch=76]   # how noisy?
  python -m capsnet_jax.analysis.report runs/a runs/b --curves=curves.png          # PNG
  python -m capsnet_jax.analysis.report --table=rotation caps=runs/a/figures/summary.json \
      --curves=rotation.png                                               # rotation
  python -m capsnet_jax.analysis.report --table=robustness caps=runs/a cnn=runs/cnn \
      --curves=robustness.png                                             # affine
  python -m capsnet_jax.analysis.report --update=docs/results.md                   # regenerate
  python -m capsnet_jax.analysis.report --check=docs/results.md                    # up to date?

Every number comes from WORKDIR/eval_history.jsonl (capsnet_jax.workdir.history), or
for ``--table=rotation`` from the summary.json that ``--mode=visualize``
writes (a file, or a workdir or figures folder holding it), for
``--table=robustness`` from the robustness.json that ``--mode=robustness``
writes (likewise), so the result
tables of docs/results.md are never typed by hand. ``--update=FILE``
rewrites each block of FILE between a line ``<!-- report: ARGS -->`` and the
next ``<!-- /report -->`` with the output of ``report ARGS`` (paths relative
to FILE's folder), so each table carries the command that made it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys
from typing import Sequence

from capsnet_jax.workdir import files
from capsnet_jax.workdir import history
from capsnet_jax.errors import EXIT_USER_ERROR, WorkdirError

# ../shared/REFERENCE.md: the reference's decoder study, MNIST, 25 epochs.
REFERENCE_DECODER_STUDY = {
    "fc": (21.62, 0.0058, 99.51),
    "fc_bn": (13.12, 0.0054, 99.54),
    "deconv": (10.87, 0.0050, 99.54),
    "deconv_bn": (9.52, 0.0044, 99.55),
}


def load(workdir: str) -> list[dict]:
  """The training records of a workdir, one per step, in step order."""
  records = history.training_records(history.read(workdir))
  if not records:
    raise WorkdirError(f"no evaluation history in {workdir} "
                       f"({history.HISTORY_FILE})")
  by_step = {int(r["step"]): r for r in records}
  return [by_step[s] for s in sorted(by_step)]


def _pct(x: float | None) -> str:
  return "-" if x is None else f"{100 * x:.2f}%"


def _duration(seconds: float | None) -> str:
  if seconds is None:
    return "-"
  if seconds < 120:
    return f"{seconds:.0f} s"
  if seconds < 7200:
    return f"{seconds / 60:.1f} min"
  return f"{seconds / 3600:.2f} h"


def _epoch(r: dict) -> str:
  e = float(r["epoch"])
  return f"{e:.0f}" if abs(e - round(e)) < 1e-3 else f"{e:.2f}"


def _first_reaching(records: list[dict], accuracy: float) -> str:
  hit = next((r for r in records if r["test_accuracy"] >= accuracy), None)
  return "-" if hit is None else _epoch(hit)


def _sse(r: dict) -> float | None:
  """The test SSE (runs with an L1 reconstruction loss record it apart);
  None for a model without a decoder (the baseline CNNs)."""
  return r.get("test_reconstruction_sse", r.get("test_reconstruction_loss"))


def _loss(value: float | None, digits: int) -> str:
  """A loss to ``digits`` decimals; "n/a" where the run has none (a
  baseline CNN has no margin or reconstruction loss)."""
  return "n/a" if value is None else f"{value:.{digits}f}"


def _best(records: list[dict]) -> tuple[float, dict]:
  """The best test accuracy and the record that has it (the first, on ties)."""
  acc, step = history.best(records)
  return acc, next(r for r in records if int(r["step"]) == step)


def summary_table(runs: dict[str, str]) -> str:
  """One row per run: how far, best and last accuracy, losses, wall time."""
  lines = ["| run | epochs | best test accuracy (epoch) | last test accuracy | "
           "first epoch >= 99.5% | test RLoss (SSE) | test MLoss | "
           "validation accuracy | wall time |",
           "|---|---|---|---|---|---|---|---|---|"]
  for label, workdir in runs.items():
    records = load(workdir)
    last = records[-1]
    acc, best = _best(records)
    lines.append(
        f"| {label} | {_epoch(last)} | {_pct(acc)} ({_epoch(best)}) | "
        f"{_pct(last['test_accuracy'])} | {_first_reaching(records, 0.995)} | "
        f"{_loss(_sse(last), 2)} | "
        f"{_loss(last.get('test_margin_loss'), 4)} | "
        f"{_pct(last.get('validation_accuracy'))} | "
        f"{_duration(last.get('wall_seconds'))} |")
  return "\n".join(lines)


TRUE_LABEL_SSE = "test_reconstruction_sse_true_label"


def epochs_table(workdir: str, every: int = 1) -> str:
  """Per evaluation (every ``every``-th epoch, and the last and best)."""
  records = load(workdir)
  _, best_step = history.best(records)
  # Runs that record it also get the authors' test-time SSE (the decoder on
  # the true label's capsule; RLoss decodes the predicted class's).
  true_label = any(TRUE_LABEL_SSE in r for r in records)
  lines = ["| epoch (step) | test accuracy | test MLoss | test RLoss (SSE) | "
           + ("test SSE, true label (the authors') | " if true_label else "")
           + "learning rate | wall time since start |",
           "|---|---|---|---|---|---|" + ("---|" if true_label else "")]
  for i, r in enumerate(records):
    epoch = float(r["epoch"])
    if not (i == len(records) - 1 or int(r["step"]) == best_step
            or round(epoch) % every == 0 or i == 0):
      continue
    acc = _pct(r["test_accuracy"])
    if int(r["step"]) == best_step:
      acc = f"**{acc}**"
    lines.append(f"| {_epoch(r)} ({r['step']}) | {acc} | "
                 f"{_loss(r.get('test_margin_loss'), 4)} | "
                 f"{_loss(_sse(r), 2)} | "
                 + (f"{_loss(r.get(TRUE_LABEL_SSE), 2)} | " if true_label
                    else "")
                 + f"{r.get('learning_rate', float('nan')):.3g} | "
                 f"{_duration(r.get('wall_seconds'))} |")
  return "\n".join(lines)


def plateau_start(records: list[dict]) -> int:
  """The index of the first record of the trailing stretch at the last
  record's learning rate (where a schedule reached its floor)."""
  last = records[-1].get("learning_rate")
  if last is None:
    raise WorkdirError("the history records no learning rate: give "
                       "--from_epoch")
  i = len(records) - 1
  while i > 0 and abs(records[i - 1].get("learning_rate", -1.0) - last) <= (
      1e-6 * abs(last)):
    i -= 1
  return i


def plateau_table(runs: dict[str, str], from_epoch: float | None = None) -> str:
  """How test accuracy and losses spread over a run's late evaluations: those
  from ``from_epoch`` on, by default those at the last learning rate (a
  decayed schedule's floor), beside the best of the whole run. The spread is
  what picking the best epoch by test accuracy can gain by chance."""
  lines = ["| run | epochs | evaluations | learning rate | test accuracy "
           "min / mean / max | sd | best of the run (epoch) | test MLoss | "
           "test RLoss (SSE), first / last |",
           "|---|---|---|---|---|---|---|---|---|"]
  for label, workdir in runs.items():
    records = load(workdir)
    if from_epoch is None:
      tail = records[plateau_start(records):]
    else:
      tail = [r for r in records if float(r["epoch"]) >= from_epoch - 1e-3]
      if not tail:
        raise WorkdirError(f"{workdir} has no evaluation from epoch "
                           f"{from_epoch:g} on")
    accs = [r["test_accuracy"] for r in tail]
    mean = sum(accs) / len(accs)
    sd = (sum((a - mean) ** 2 for a in accs) / len(accs)) ** 0.5
    rates = sorted({r.get("learning_rate", float("nan")) for r in tail})
    rate = (f"{rates[0]:.3g}" if len(rates) == 1
            else f"{rates[0]:.3g}-{rates[-1]:.3g}")
    margins = [r["test_margin_loss"] for r in tail]
    acc, best = _best(records)
    epochs = (_epoch(tail[0]) if len(tail) == 1
              else f"{_epoch(tail[0])}-{_epoch(tail[-1])}")
    lines.append(
        f"| {label} | {epochs} | {len(tail)} | {rate} | {_pct(min(accs))} / "
        f"{_pct(mean)} / {_pct(max(accs))} | {100 * sd:.3f} points | "
        f"{_pct(acc)} ({_epoch(best)}) | "
        f"{min(margins):.4f}-{max(margins):.4f} | "
        f"{_sse(tail[0]):.2f} / {_sse(tail[-1]):.2f} |")
  return "\n".join(lines)


# What agreement_table compares, evaluation by evaluation.
AGREEMENT_KEYS = ("test_accuracy", "test_loss", "test_margin_loss",
                  "test_reconstruction_loss", "learning_rate")


def _same(a, b) -> bool:
  """Equal to the last digit; two NaNs are the same value here."""
  return a == b or (isinstance(a, float) and isinstance(b, float)
                    and math.isnan(a) and math.isnan(b))


def _value(v) -> str:
  return "missing" if v is None else f"{v:.6g}"


def agreement_table(runs: dict[str, str]) -> str:
  """Each run after the first against the first, at the steps both
  evaluated: whether every value of AGREEMENT_KEYS is the same to the last
  digit, and where they first differ. Runs with the same config and seed on
  the same code and CPU kind should agree at every step."""
  labels = list(runs)
  if len(labels) < 2:
    raise WorkdirError("--table=agreement compares two or more runs")
  first = {int(r["step"]): r for r in load(runs[labels[0]])}
  lines = [f"| run | evaluations in common with {labels[0]} | identical "
           "(test accuracy, losses, learning rate) | first difference | "
           "largest accuracy difference |",
           "|---|---|---|---|---|"]
  for label in labels[1:]:
    other = {int(r["step"]): r for r in load(runs[label])}
    common = sorted(set(first) & set(other))
    differ = [s for s in common
              if not all(_same(first[s].get(k), other[s].get(k))
                         for k in AGREEMENT_KEYS)]
    if not common:
      span = "none"
    elif len(common) == 1:
      span = f"1 (epoch {_epoch(first[common[0]])})"
    else:
      span = (f"{len(common)} (epochs {_epoch(first[common[0]])}-"
              f"{_epoch(first[common[-1]])})")
    if differ:
      s = differ[0]
      key = next(k for k in AGREEMENT_KEYS
                 if not _same(first[s].get(k), other[s].get(k)))
      where = (f"epoch {_epoch(first[s])}: {key} {_value(first[s].get(key))} "
               f"vs {_value(other[s].get(key))}")
    else:
      where = "-"
    gap = max((abs(first[s]["test_accuracy"] - other[s]["test_accuracy"])
               for s in common), default=0.0)
    lines.append(f"| {label} | {span} | {len(common) - len(differ)} of "
                 f"{len(common)} | {where} | {100 * gap:.2f} points |")
  return "\n".join(lines)


def decoders_table(runs: dict[str, str]) -> str:
  """The decoder study beside the reference's 25-epoch numbers; labels are
  keys of REFERENCE_DECODER_STUDY (fc, fc_bn, deconv, deconv_bn)."""
  lines = ["| decoder | epochs | RLoss (SSE) | MLoss | accuracy (last) | "
           "best accuracy (epoch) | wall time | reference, 25 epochs: "
           "RLoss / MLoss / accuracy |",
           "|---|---|---|---|---|---|---|---|"]
  for label, workdir in runs.items():
    records = load(workdir)
    last = records[-1]
    acc, best = _best(records)
    ref = REFERENCE_DECODER_STUDY.get(label)
    ref_text = (f"{ref[0]:.2f} / {ref[1]:.4f} / {ref[2]:.2f}%" if ref else "-")
    lines.append(
        f"| {label} | {_epoch(last)} | {_sse(last):.2f} | "
        f"{last['test_margin_loss']:.4f} | {_pct(last['test_accuracy'])} | "
        f"{_pct(acc)} ({_epoch(best)}) | {_duration(last.get('wall_seconds'))} "
        f"| {ref_text} |")
  if set(runs) == set(REFERENCE_DECODER_STUDY):
    lines += ["", _decoder_order({label: _sse(load(workdir)[-1])
                                  for label, workdir in runs.items()})]
  return "\n".join(lines)


def _decoder_order(sse: dict[str, float]) -> str:
  """One line: the four decoders by last-evaluation RLoss, lowest first,
  ours and the reference's, and whether the orders agree."""
  ours = sorted(sse, key=sse.get)
  theirs = sorted(REFERENCE_DECODER_STUDY,
                  key=lambda k: REFERENCE_DECODER_STUDY[k][0])
  fmt = lambda order, value: " < ".join(f"{k} {value(k):.2f}" for k in order)
  same = "the same order" if ours == theirs else "a different order"
  return (f"RLoss, lowest first: ours {fmt(ours, sse.get)}; the reference's "
          f"{fmt(theirs, lambda k: REFERENCE_DECODER_STUDY[k][0])}: {same}.")


# Sabour et al. 2017, section 6: MultiMNIST classification error (the two
# most active capsules must be the two labels).
PAPER_MULTIMNIST_ERROR = {"CapsNet": 5.2, "baseline CNN": 8.1}


# Angles shown by the rotation table (the sweep's other angles are in the curves).
ROTATION_COLUMNS = (-90, -45, -30, -15, 0, 15, 30, 45, 90, 180)


def load_rotation(path: str) -> dict:
  """A --mode=visualize summary with a rotation sweep: a summary.json file,
  or a workdir or figures folder that holds one."""
  for candidate in (path, os.path.join(path, "summary.json"),
                    os.path.join(path, "figures", "summary.json")):
    if os.path.isfile(candidate):
      with open(candidate) as f:
        summary = json.load(f)
      if "rotation_accuracy" not in summary:
        raise WorkdirError(f"{candidate} has no rotation sweep "
                           "(rotation_accuracy)")
      return summary
  raise WorkdirError(f"no visualize summary.json at {path} (run --mode=visualize)")


def rotation_table(runs: dict[str, str]) -> str:
  """Test accuracy at a few rotation angles, one row per visualize summary."""
  head = ["run", "checkpoint step", "test images"] + [
      f"{a:+d}°" if a not in (0, 180) else f"{a}°" for a in ROTATION_COLUMNS]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for label, path in runs.items():
    s = load_rotation(path)
    by_angle = {round(float(a)): acc for a, acc in
                zip(s["rotation_angles"], s["rotation_accuracy"])}
    cells = [label, f"{s['checkpoint_step']:,}", f"{s['rotation_examples']:,}"]
    for a in ROTATION_COLUMNS:
      acc = by_angle.get(a)
      cells.append("-" if acc is None else
                   _pct(acc) if a == 0 else f"{100 * acc:.1f}%")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def rotation_figure(runs: dict[str, str], path: str) -> None:
  """Test accuracy against the rotation angle, one curve per summary."""
  from capsnet_jax.analysis import plots  # pylint: disable=g-import-not-at-top
  data = {}
  for label, p in runs.items():
    s = load_rotation(p)
    data[label] = (s["rotation_angles"], s["rotation_accuracy"],
                   s["rotation_examples"])
  plots.plot_rotation_accuracy(data, path)


def load_robustness(path: str) -> list[dict]:
  """The records of a --mode=robustness robustness.json: the file, or a
  folder (a workdir, its figures folder, a result folder) that holds one."""
  from capsnet_jax.analysis import robustness  # pylint: disable=g-import-not-at-top
  for candidate in (path, os.path.join(path, robustness.RESULTS_FILE),
                    os.path.join(path, "figures", robustness.RESULTS_FILE)):
    if os.path.isfile(candidate):
      records = robustness.read(candidate)
      if not records:
        raise WorkdirError(f"{candidate} holds no settings")
      return records
  raise WorkdirError(f"no robustness.json at {path} (run --mode=robustness)")


def _setting(transform: str, value) -> str:
  if transform == "affnist":
    return "affNIST-style set"
  if transform == "rotation" and value == 0:
    return "clean test set (rotation 0°)"
  if transform == "rotation":
    return f"rotation {value:+g}°"
  if transform == "translation":
    return f"translation {value:g} px right, {value:g} px down"
  return f"{transform} {value:g}"


def robustness_table(runs: dict[str, str]) -> str:
  """Accuracy per setting of --mode=robustness, one column per run: the
  clean test set (rotation 0) first, then each sweep in its order, the
  affNIST-style set last, and the number of images of each."""
  data = {label: load_robustness(path) for label, path in runs.items()}
  order = []
  for records in data.values():
    for r in records:
      key = (r["transform"], r["value"])
      if key not in order:
        order.append(key)
  clean = ("rotation", 0)
  order.sort(key=lambda k: (k != clean, k[0] == "affnist"))
  labels = list(data)
  lines = ["| setting | " + " | ".join(labels) + " |",
           "|---|" + "---|" * len(labels)]
  for key in order:
    cells = []
    for label in labels:
      acc = next((r["accuracy"] for r in data[label]
                  if (r["transform"], r["value"]) == key), None)
      cells.append("-" if acc is None else
                   _pct(acc) if key == clean else f"{100 * acc:.1f}%")
    lines.append(f"| {_setting(*key)} | " + " | ".join(cells) + " |")
  for name, affnist in (("test images per setting", False),
                        ("affNIST-style images", True)):
    counts = [next((f"{r['n']:,}" for r in data[label]
                    if (r["transform"] == "affnist") == affnist), "-")
              for label in labels]
    lines.append(f"| {name} | " + " | ".join(counts) + " |")
  return "\n".join(lines)


def robustness_figure(runs: dict[str, str], path: str) -> None:
  """Accuracy against each transform's size, one colour per run."""
  from capsnet_jax.analysis import plots  # pylint: disable=g-import-not-at-top
  from capsnet_jax.analysis import robustness  # pylint: disable=g-import-not-at-top
  plots.plot_robustness({label: load_robustness(p) for label, p in runs.items()},
                        path, robustness.IDENTITY)


def multimnist_table(workdir: str, batch_size: int | None = None) -> str:
  """A MultiMNIST run per evaluation: its classification error by the
  paper's rule beside the paper's, the share with at least one label right,
  the losses and the wall time. Pairs seen = step x batch size (read from
  WORKDIR/config.json unless given)."""
  records = load(workdir)
  if batch_size is None:
    with open(os.path.join(workdir, "config.json")) as f:
      batch_size = int(json.load(f)["batch_size"])
  lines = ["| step (epoch) | training pairs seen | test error (both labels) | "
           "test pairs with one label right or both | test RLoss (SSE, both "
           "digits) | test MLoss | wall time since start |",
           "|---|---|---|---|---|---|---|"]
  for r in records:
    partial = r.get("test_partial_accuracy")
    lines.append(
        f"| {r['step']} ({_epoch(r)}) | {int(r['step']) * batch_size:,} | "
        f"{100 * (1 - r['test_accuracy']):.2f}% | {_pct(partial)} | "
        f"{_sse(r):.2f} | {r['test_margin_loss']:.4f} | "
        f"{_duration(r.get('wall_seconds'))} |")
  paper = ", ".join(f"{k} {v}%" for k, v in PAPER_MULTIMNIST_ERROR.items())
  lines.append(f"| paper (60M training pairs, 10M test pairs) | 60,000,000 | "
               f"{paper} | - | - | - | - |")
  return "\n".join(lines)


def curves_figure(runs: dict[str, str], path: str) -> None:
  """Test accuracy, margin and reconstruction loss against the epoch."""
  from capsnet_jax.analysis import curves  # pylint: disable=g-import-not-at-top
  curves.plot(runs, path)


def _runs(items: Sequence[str], base: str = "") -> dict[str, str]:
  runs = {}
  for item in items:
    label, _, workdir = item.rpartition("=")
    workdir = os.path.join(base, workdir) if base else workdir
    runs[label or os.path.basename(os.path.normpath(workdir))] = workdir
  return runs


def render(argv: Sequence[str], base: str = "", plots: bool = True) -> str:
  """The text that `report ARGV` prints (tables only), paths under base;
  plots=False leaves out --curves."""
  args = _parser().parse_args(argv)
  runs = _runs(args.workdirs, base)
  if args.curves and plots:
    curves = os.path.join(base, args.curves) if base else args.curves
    figure = {"rotation": rotation_figure,
              "robustness": robustness_figure}.get(args.table, curves_figure)
    figure(runs, curves)
  if args.table == "rotation":
    return rotation_table(runs)
  if args.table == "robustness":
    return robustness_table(runs)
  if args.table == "summary":
    return summary_table(runs)
  if args.table == "decoders":
    return decoders_table(runs)
  if args.table == "agreement":
    return agreement_table(runs)
  if args.table == "plateau":
    return plateau_table(runs, args.from_epoch)
  if args.table == "multimnist":
    return "\n\n".join(multimnist_table(w) for w in runs.values())
  return "\n\n".join(epochs_table(w, args.every) for w in runs.values())


_BLOCK = re.compile(r"^(<!-- report: ([^\n]*?) -->\n)(.*?)^(<!-- /report -->)",
                    re.S | re.M)


def update_file(path: str) -> int:
  """Regenerates every report block of ``path``; returns how many."""
  base = os.path.dirname(os.path.abspath(path))
  with open(path) as f:
    text = f.read()
  count = 0

  def replace(m):
    nonlocal count
    count += 1
    return m.group(1) + render(shlex.split(m.group(2)), base) + "\n" + m.group(4)

  text = _BLOCK.sub(replace, text)
  files.atomic_write_text(path, text)  # the old file or the new, never a part
  return count


def blocks(path: str) -> list[str]:
  """The ARGS of every report block of ``path``, in order."""
  with open(path) as f:
    return [m.group(2) for m in _BLOCK.finditer(f.read())]


def stale_blocks(path: str) -> list[str]:
  """The report blocks of ``path`` whose text differs from what their ARGS
  generate now (curves are not redrawn); empty when the file is current."""
  base = os.path.dirname(os.path.abspath(path))
  with open(path) as f:
    text = f.read()
  return [m.group(2) for m in _BLOCK.finditer(text)
          if m.group(3) != render(shlex.split(m.group(2)), base, plots=False) + "\n"]


def _at_least_one(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
  return value


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m capsnet_jax.analysis.report",
      description="Tables and curves from eval_history.jsonl of workdirs.")
  p.add_argument("workdirs", nargs="*",
                 help="WORKDIR or LABEL=WORKDIR (rotation: a visualize "
                 "summary.json, or the workdir that holds figures/summary.json; "
                 "robustness: a robustness.json or a folder holding one)")
  p.add_argument("--table", choices=("summary", "epochs", "decoders",
                                     "multimnist", "rotation", "agreement",
                                     "plateau", "robustness"),
                 default="summary")
  p.add_argument("--every", type=_at_least_one, default=1,
                 help="epochs table: every N-th epoch (plus first, best, last)")
  p.add_argument("--from_epoch", type=float, default=None,
                 help="plateau table: evaluations from this epoch on "
                 "(default: those at the last learning rate)")
  p.add_argument("--curves", default="",
                 help="also plot to this PNG (rotation: accuracy per angle; "
                 "robustness: accuracy per transform's size)")
  p.add_argument("--update", default="",
                 help="regenerate the report blocks of this Markdown file")
  p.add_argument("--check", default="",
                 help="exit 1 naming each report block of this Markdown file "
                 "that differs from what its ARGS generate")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:
    if args.update:
      n = update_file(args.update)
      print(f"updated {n} report block(s) in {args.update}")
      return 0
    if args.check:
      stale = stale_blocks(args.check)
      for block in stale:
        print(f"stale report block in {args.check}: {block}", file=sys.stderr)
      return 1 if stale else 0
    if not args.workdirs:
      print("error: give workdirs or --update=FILE", file=sys.stderr)
      return EXIT_USER_ERROR
    print(render(argv if argv is not None else sys.argv[1:]))
  except WorkdirError as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_USER_ERROR
  return 0


if __name__ == "__main__":
  sys.exit(main())
