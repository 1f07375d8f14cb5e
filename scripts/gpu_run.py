"""The full-length experiments on one GPU machine, in resumable chunks.

One command runs them all (scripts/gpu_run.sh installs the wheels first)::

  bash scripts/gpu_run.sh --idx_dir=.data/mnist --out=$OUT --keep_running \
      [--smoke] [--bench] [--deadline_seconds=540] [--max_parallel=7]

The experiments, in priority order (each a plain `python main.py ...` that
resumes from its workdir under --runs):

  authors_full_s0, authors_full_s1, authors_full_s2
                    configs/mnist.py:authors_full (the authors' recipe at
                    their full length), --config.seed=0, 1, 2 (--seeds), each
                    to --authors_full_steps (default 300,000, their README's
                    --max_steps; 0 skips them). Their histories hold the
                    50-epoch recipe too (step 23,400): the rate depends only
                    on the step.
  mnist_paper_s0, mnist_paper_s1, mnist_paper_s2
                    configs/mnist.py (the authors' recipe), --config.seed=0,
                    1, 2 (--seeds), each to --paper_epochs (default 120, 468
                    steps each). The learning rate and the reconstruction
                    weight depend only on the step, so epoch 50 of these
                    histories is what a 50-epoch run records.
  dec_fc, dec_fc_bn, dec_deconv, dec_deconv_bn
                    configs/mnist.py:reference (the reference's init and
                    primary grouping), --decoder_epochs (default 25, 421
                    steps each): the reference's decoder study (FC / deconv
                    decoder, with and without BN)
  ref_fc_long       a copy of dec_fc once finished, continued to
                    --ref_long_epochs (default 113, the reference's length;
                    its learning rate is constant; 0 skips it)
  mnist_cnn         configs/mnist_cnn.py (the paper's baseline CNN, 35.4M
                    parameters, softmax cross-entropy, the paper's data
                    setup), to --cnn_epochs (default 10, the config's; 468
                    steps each; 0 skips it)
  mnist40           configs/mnist40.py (CapsNet, the authors' recipe on the
                    paper's 40x40 protocol: expanded MNIST, shifts of up
                    to 6 px), to --mnist40_epochs (default 50, the
                    config's; 468 steps each; 0 skips it)
  mnist40_cnn       configs/mnist40_cnn.py (the max-pooling CNN on the same
                    pipeline), to --mnist40_cnn_epochs (default 10, the
                    config's; 0 skips it). Measure both afterwards with
                    --mode=robustness (the affNIST-style set at 40x40).
  multimnist        configs/multimnist.py, to --multimnist_epochs (default
                    1,000, the config's: the paper's 60M pairs; an epoch is
                    60,000 pairs, 468 steps; 0 skips it). The lowest
                    priority: it runs for as long as the device is lent.

At most --max_parallel runs (default 7) share the device at once, taken in
the order above as earlier ones finish; a run that waits for another (e.g.
ref_fc_long for dec_fc) does not hold up later ones. Each run is its own
process with XLA_PYTHON_CLIENT_PREALLOCATE=false (unless already set), so it
takes the device memory it needs (about 1.6 GB for an MNIST run at batch
128) instead of 75% of it; seven MNIST runs shared one H100 80GB before.

Each call works until --deadline_seconds, then either SIGTERMs the runs
(they checkpoint and exit; the next call resumes them) or, with
--keep_running, leaves them running detached for the next call to find
(their pid files; they count toward --max_parallel, and queued runs start
on the next call). Finished runs are skipped. Before returning it collects
results.json, eval_history.jsonl, config.json, the TensorBoard events and
the log of every run, curves and the generated report into --out, packed
as one gpu_runs.tar.gz (the device tool brings back few files), and prints
a table of where every run stands.

--bench first runs benchmarks/throughput.py (train, eval and a 300-step
epoch through the IDX pipeline; float32 and bfloat16) alone on the device.

Changed in issue 35: mnist_paper (50 epochs) and mnist_paper_long (its copy
continued to 120) became mnist_paper_s0..s2, each to --paper_epochs, whose
default went from 50 to 120; --long_epochs is kept as an alias of
--paper_epochs; --only now refuses names that are not experiments (exit 2)
instead of running nothing; --seeds, --multimnist_epochs and --max_parallel
are new. Issue 46 added mnist40 and mnist40_cnn (--mnist40_epochs,
--mnist40_cnn_epochs).

tests/test_gpu_run.py runs this logic on CPU with a tiny model and
--decoder_epochs=1 etc.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tarfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
PID_FILE = "gpu_run.pid"
LOG_FILE = "train.log"


@dataclasses.dataclass
class Experiment:
  name: str
  config: str
  overrides: tuple[str, ...]
  epochs: int
  steps_per_epoch: int
  after: str | None = None  # continue a copy of this run once it finished
  steps: int | None = None  # a length in steps instead of epochs

  @property
  def total_steps(self) -> int:
    if self.steps is not None:
      return self.steps
    return self.epochs * self.steps_per_epoch


def experiments(args) -> list[Experiment]:
  """Every experiment, in priority order (those named by --only)."""
  # Steps per epoch as main.py counts them: training examples // batch.
  paper_spe = args.num_train // args.batch_size  # all 60,000 images
  ref_spe = (args.num_train - args.num_train // 10) // args.batch_size  # 54,000
  pairs_spe = args.num_train // args.batch_size  # one pair per digit, no hold-out
  out = []
  if args.authors_full_steps > 0:
    out += [Experiment(f"authors_full_s{seed}", "configs/mnist.py:authors_full",
                       (f"--config.seed={seed}",),
                       -(-args.authors_full_steps // paper_spe), paper_spe,
                       steps=args.authors_full_steps)
            for seed in _seeds(args.seeds)]
  out += [Experiment(f"mnist_paper_s{seed}", "configs/mnist.py",
                     (f"--config.seed={seed}",), args.paper_epochs, paper_spe)
          for seed in _seeds(args.seeds)]
  for name, decoder, bn in DECODER_STUDY:
    out.append(Experiment(name, "configs/mnist.py:reference",
                          (f"--config.decoder={decoder}",
                           f"--config.batch_norm={bn}"),
                          args.decoder_epochs, ref_spe))
  if args.ref_long_epochs > args.decoder_epochs:
    out.append(Experiment("ref_fc_long", "configs/mnist.py:reference",
                          ("--config.decoder=fc", "--config.batch_norm=False"),
                          args.ref_long_epochs, ref_spe, after="dec_fc"))
  # The baseline CNN and the 40x40 protocol: all 60,000 images an epoch.
  for name, epochs in (("mnist_cnn", args.cnn_epochs),
                       ("mnist40", args.mnist40_epochs),
                       ("mnist40_cnn", args.mnist40_cnn_epochs)):
    if epochs > 0:
      out.append(Experiment(name, f"configs/{name}.py", (), epochs, paper_spe))
  if args.multimnist_epochs > 0:
    out.append(Experiment("multimnist", "configs/multimnist.py", (),
                          args.multimnist_epochs, pairs_spe))
  only = _only(args.only)
  return [e for e in out if not only or e.name in only]


DECODER_STUDY = (("dec_fc", "fc", False), ("dec_fc_bn", "fc", True),
                 ("dec_deconv", "deconv", False),
                 ("dec_deconv_bn", "deconv", True))


def _seeds(text: str) -> list[int]:
  return [int(s) for s in text.split(",") if s.strip()]


def _only(text: str) -> set[str]:
  return {n.strip() for n in text.split(",") if n.strip()}


def _results(workdir: pathlib.Path) -> dict | None:
  try:
    return json.loads((workdir / "results.json").read_text())
  except (OSError, ValueError):
    return None


def finished(e: Experiment, runs: pathlib.Path) -> bool:
  r = _results(runs / e.name)
  return bool(r) and int(r.get("step", 0)) >= e.total_steps


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except OSError:
    return False
  try:  # A zombie child of this process counts as finished.
    done, _ = os.waitpid(pid, os.WNOHANG)
    return done == 0
  except ChildProcessError:
    return True


def running_pid(workdir: pathlib.Path) -> int | None:
  try:
    pid = int((workdir / PID_FILE).read_text())
  except (OSError, ValueError):
    return None
  return pid if _alive(pid) else None


def _history_steps(workdir: pathlib.Path) -> int:
  try:
    lines = (workdir / "eval_history.jsonl").read_text().splitlines()
    return max(json.loads(l)["step"] for l in lines if l.strip())
  except (OSError, ValueError):
    return 0


def command(e: Experiment, workdir: pathlib.Path, args) -> list[str]:
  """The main.py command line of experiment ``e``."""
  return [sys.executable, str(ROOT / "main.py"), f"--config={e.config}",
          f"--workdir={workdir}", f"--config.idx_dir={args.idx_dir}",
          (f"--config.num_train_steps={e.steps}" if e.steps is not None
           else f"--config.num_epochs={e.epochs}"),
          *e.overrides, *args.override]


def start(e: Experiment, runs: pathlib.Path, args) -> int:
  workdir = runs / e.name
  if e.after and not workdir.exists():
    shutil.copytree(runs / e.after, workdir,
                    ignore=shutil.ignore_patterns(PID_FILE, LOG_FILE, ".lock"))
  workdir.mkdir(parents=True, exist_ok=True)
  cmd = command(e, workdir, args)
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  # Several runs share one GPU: no preallocation of most of its memory.
  env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  with open(workdir / LOG_FILE, "a") as log:
    log.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log,
                            start_new_session=True)
  (workdir / PID_FILE).write_text(str(proc.pid))
  print(f"[gpu_run] started {e.name} (pid {proc.pid}): {' '.join(cmd)}",
        flush=True)
  return proc.pid


def status_table(exps: list[Experiment], runs: pathlib.Path) -> str:
  rows = ["run | state | step | target | best test accuracy | last"]
  for e in exps:
    workdir = runs / e.name
    r = _results(workdir) or {}
    state = ("finished" if finished(e, runs) else
             "running" if running_pid(workdir) else
             f"waiting for {e.after}" if e.after and not workdir.exists() else
             "not started" if not workdir.exists() else "stopped")
    records = []
    if (workdir / "eval_history.jsonl").exists():
      records = [json.loads(l) for l in
                 (workdir / "eval_history.jsonl").read_text().splitlines() if l]
    best = max((x["test_accuracy"] for x in records), default=None)
    last = records[-1]["test_accuracy"] if records else None
    rows.append(f"{e.name} | {state} | {_history_steps(workdir)} | "
                f"{e.total_steps} | {best} | {last}")
  return "\n".join(rows)


def smoke(args, runs: pathlib.Path, out: pathlib.Path) -> bool:
  """configs/mnist.py:smoke end to end (train, checkpoint, history, eval)."""
  workdir = runs / "smoke"
  shutil.rmtree(workdir, ignore_errors=True)
  cmd = [sys.executable, str(ROOT / "main.py"), "--config=configs/mnist.py:smoke",
         f"--workdir={workdir}", f"--config.idx_dir={args.idx_dir}"]
  t = time.monotonic()
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  ok = proc.returncode == 0 and (workdir / "results.json").exists()
  print(f"[gpu_run] smoke run rc={proc.returncode} in {time.monotonic() - t:.0f} s"
        + ("" if ok else "; its log ends:\n" + proc.stderr[-4000:]), flush=True)
  if ok:
    print("[gpu_run] smoke results:", (workdir / "results.json").read_text()
          .replace("\n", " "), flush=True)
  else:
    (out / "smoke_error.txt").write_text(proc.stderr[-20000:])
  return ok


def run_bench(args, out: pathlib.Path) -> None:
  """Train and eval steps in float32 and bfloat16, and an epoch through the
  IDX pipeline, in one process alone on the device (bench.jsonl)."""
  cmd = [sys.executable, str(ROOT / "benchmarks/throughput.py"),
         "--config=configs/mnist.py", "--mode=train,eval,epoch",
         "--dtypes=float32,bfloat16", f"--config.idx_dir={args.idx_dir}",
         f"--config.num_train_steps={args.bench_epoch_steps}", *args.override]
  t = time.monotonic()
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  (out / "bench.jsonl").write_text("".join(l + "\n" for l in lines))
  if proc.returncode:
    (out / "bench_error.txt").write_text(proc.stderr[-5000:])
  print(f"[gpu_run] benchmark rc={proc.returncode} in "
        f"{time.monotonic() - t:.0f} s", flush=True)
  for line in lines:
    r = json.loads(line)
    print(f"[gpu_run] bench {r['mode']} {r['compute_dtype']}: "
          f"{r['images_per_sec']:.0f} images/s, step {r['step_seconds_median'] * 1e3:.2f} ms"
          + (f", epoch {r['epoch_seconds']:.2f} s" if "epoch_seconds" in r else ""),
          flush=True)


def collect(exps: list[Experiment], runs: pathlib.Path, out: pathlib.Path) -> None:
  """Small files of every run, curves and the report, into out/."""
  staging = out / "gpu_runs"
  staging.mkdir(parents=True, exist_ok=True)
  for e in exps:
    src, dst = runs / e.name, staging / e.name
    if not src.exists():
      continue
    dst.mkdir(exist_ok=True)
    for p in src.iterdir():
      if p.is_file() and (p.name in ("results.json", "eval_history.jsonl",
                                     "config.json", LOG_FILE)
                          or p.name.startswith("events.out.tfevents")):
        shutil.copy2(p, dst / p.name)
  done = [e.name for e in exps if (runs / e.name / "eval_history.jsonl").exists()]
  if done:
    cmd = [sys.executable, "-m", "capsnet_jax.analysis.report",
           *[f"{n}={runs / n}" for n in done], "--curves",
           str(staging / "curves.png")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    (staging / "report.md").write_text(proc.stdout + proc.stderr)
  with tarfile.open(out / "gpu_runs.tar.gz", "w:gz") as tar:
    tar.add(staging, arcname="gpu_runs")


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--idx_dir", required=True, help="MNIST IDX folder")
  p.add_argument("--runs", default="runs/gpu", help="parent of the workdirs")
  p.add_argument("--out", required=True, help="where to collect results")
  p.add_argument("--deadline_seconds", type=float, default=540)
  p.add_argument("--keep_running", action="store_true",
                 help="leave unfinished runs running at the deadline")
  p.add_argument("--max_parallel", type=int, default=7,
                 help="runs on the device at once, counting detached ones")
  p.add_argument("--bench", action="store_true")
  p.add_argument("--smoke", action="store_true",
                 help="first run configs/mnist.py:smoke; stop if it fails")
  p.add_argument("--bench_epoch_steps", type=int, default=300)
  p.add_argument("--seeds", default="0,1,2",
                 help="seeds of the authors' recipe: runs mnist_paper_s<seed>")
  p.add_argument("--authors_full_steps", type=int, default=300_000,
                 help="steps of the authors_full runs (0: none)")
  p.add_argument("--paper_epochs", type=int, default=120)
  p.add_argument("--long_epochs", type=int, default=None,
                 help="old name of --paper_epochs (it overrides it)")
  p.add_argument("--decoder_epochs", type=int, default=25)
  p.add_argument("--ref_long_epochs", type=int, default=113)
  p.add_argument("--cnn_epochs", type=int, default=10,
                 help="epochs of the baseline CNN, mnist_cnn (0: none)")
  p.add_argument("--mnist40_epochs", type=int, default=50,
                 help="epochs of CapsNet on the 40x40 protocol (0: none)")
  p.add_argument("--mnist40_cnn_epochs", type=int, default=10,
                 help="epochs of the CNN on the 40x40 protocol (0: none)")
  p.add_argument("--multimnist_epochs", type=int, default=1000,
                 help="epochs of 60,000 pairs (0: no MultiMNIST run)")
  p.add_argument("--num_train", type=int, default=60000,
                 help="training images in --idx_dir (for the step targets)")
  p.add_argument("--batch_size", type=int, default=128)
  p.add_argument("--only", default="", help="comma-separated run names")
  p.add_argument("--override", action="append", default=[],
                 help="extra --config.NAME=VALUE for every run (tests)")
  p.add_argument("--poll_seconds", type=float, default=5.0)
  args = p.parse_args(argv)
  if args.long_epochs is not None:
    args.paper_epochs = args.long_epochs
  if args.max_parallel < 1:
    p.error(f"--max_parallel must be at least 1, not {args.max_parallel}")
  try:
    _seeds(args.seeds)
  except ValueError:
    p.error(f"--seeds takes comma-separated integers, not {args.seeds!r}")
  names = [e.name for e in experiments(argparse.Namespace(
      **{**vars(args), "only": ""}))]
  unknown = sorted(_only(args.only) - set(names))
  if unknown:
    p.error(f"--only names no experiment: {', '.join(unknown)}; valid: "
            f"{', '.join(names)}")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  t0 = time.monotonic()
  runs, out = pathlib.Path(args.runs).resolve(), pathlib.Path(args.out).resolve()
  args.idx_dir = str(pathlib.Path(args.idx_dir).resolve())
  runs.mkdir(parents=True, exist_ok=True)
  out.mkdir(parents=True, exist_ok=True)
  if args.batch_size != 128:
    args.override.append(f"--config.batch_size={args.batch_size}")
  exps = experiments(args)
  if args.smoke and not all(finished(e, runs) or running_pid(runs / e.name)
                            for e in exps):
    if not smoke(args, runs, out):
      return 1
  if args.bench:
    run_bench(args, out)
  every = {e.name: e for e in experiments(argparse.Namespace(
      **{**vars(args), "only": ""}))}

  def ready(e: Experiment) -> bool:
    return not e.after or (finished(every[e.after], runs)
                           and not running_pid(runs / e.after))

  def running() -> int:  # this call's runs and detached ones of earlier calls
    return sum(1 for e in every.values() if running_pid(runs / e.name))

  print(f"[gpu_run] {len(exps)} runs, at most {args.max_parallel} at once",
        flush=True)
  procs: dict[str, int] = {}
  while time.monotonic() - t0 < args.deadline_seconds:
    slots = args.max_parallel - running()
    for e in exps:  # in priority order
      # A run that exited unfinished in this call is reported, not retried.
      if (slots <= 0 or finished(e, runs) or running_pid(runs / e.name)
          or e.name in procs or not ready(e)):
        continue
      procs[e.name] = start(e, runs, args)
      slots -= 1
    if all(finished(e, runs) for e in exps):
      break
    active = any(running_pid(runs / e.name) for e in exps)
    startable = any(not finished(e, runs) and e.name not in procs and
                    (not e.after or finished(every[e.after], runs))
                    for e in exps)
    if not active and not startable:
      break  # what is left failed, or waits for a run that failed
    time.sleep(args.poll_seconds)
  pending = [e for e in exps if running_pid(runs / e.name)]
  if pending and not args.keep_running:
    for e in pending:
      pid = running_pid(runs / e.name)
      if pid:
        os.killpg(pid, signal.SIGTERM)
    for e in pending:
      while running_pid(runs / e.name):
        time.sleep(0.5)
  collect(exps, runs, out)
  table = status_table(exps, runs)
  (out / "status.txt").write_text(table + "\n")
  for e in exps:
    log = runs / e.name / LOG_FILE
    if log.exists() and not finished(e, runs) and not running_pid(runs / e.name):
      tail = log.read_text()[-1500:]
      print(f"[gpu_run] {e.name} is stopped; its log ends:\n{tail}", flush=True)
  print(table, flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
