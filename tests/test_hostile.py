"""Issue 38's scenarios through the command line: predict on a folder of real
digits and hostile files with --out set to that folder; a second training
on a workdir in use; the exit statuses (0 success, 1 internal error with a
traceback, 2 a user's error in one line, 3 predict with failed files); two
processes that disagree on their config, and predict over two processes.
(The cases one by one, in-process: test_predict, test_lock, test_files,
test_history, test_park.)"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
from PIL import Image

from capsnet_jax import errors
from capsnet_jax.data import idx
from conftest import (ROOT, run_main, shared_mnist, snapshot, subprocess_env,
                      tiny_args)

BUNDLE = ("--config=configs/mnist_efficient.py",
          "--workdir=bundled:mnist_efficient")



def _error_lines(stderr: str) -> list[str]:
  return [l for l in stderr.splitlines() if l.startswith("error:")]


def _scans(folder, n=5):
  """``n`` real test digits as PNG files in ``folder``; their labels."""
  images, labels = idx.load_mnist_idx(str(shared_mnist()), "test")
  folder.mkdir()
  for i in range(n):
    Image.fromarray(images[i, ..., 0]).save(folder / f"digit{i}.png")
  return labels[:n]


def test_predict_on_hostile_files_beside_real_digits(tmp_path):
  """The issue's scenario: 5 real digits, a 150-megapixel PNG (18 KB on
  disk) and a float TIFF with a NaN pixel, --out the same folder."""
  folder = tmp_path / "scans"
  labels = _scans(folder)
  Image.new("1", (12248, 12248)).save(folder / "huge.png")  # 150.0 MP
  x = np.full((28, 28), 0.5, np.float32)
  x[3, 4] = np.nan
  Image.fromarray(x, mode="F").save(folder / "nan.tif")
  assert (folder / "huge.png").stat().st_size < 50_000
  before = snapshot(folder)
  proc = run_main(*BUNDLE, "--mode=predict", f"--images={folder}",
                  f"--out={folder}", expect=errors.EXIT_SOME_FAILED)
  lines = [json.loads(l) for l in proc.stdout.splitlines()]
  assert [(os.path.basename(r["image"]), r["prediction"]) for r in lines] == [
      (f"digit{i}.png", int(label)) for i, label in enumerate(labels)]
  assert _error_lines(proc.stderr) == [
      f"error: {folder / 'huge.png'}: too large: 150.0 megapixels, more than "
      "the 50 megapixels this reads "
      "(capsnet_jax.inference.predict.MAX_MEGAPIXELS)",
      f"error: {folder / 'nan.tif'}: holds NaN or infinite pixels"]
  assert "Traceback" not in proc.stderr
  after = snapshot(folder)
  assert {n: after[n] for n in before} == before  # no input changed
  assert sorted(set(after) - set(before)) == [
      f"digit{i}-2.png" for i in range(5)]
  assert [os.path.basename(r["figure"]) for r in lines] == [
      f"digit{i}-2.png" for i in range(5)]


def test_a_second_training_on_a_workdir_in_use_refuses_at_once(idx_dir,
                                                               tmp_path):
  """The first run is stopped (SIGSTOP) once it holds the workdir: a second
  that waited for it would never end. The second exits 2 naming the first's
  pid and changes nothing; the first, continued, finishes."""
  workdir = tmp_path / "w"
  log = open(tmp_path / "first.log", "w+")  # pylint: disable=consider-using-with
  first = subprocess.Popen(
      [sys.executable, str(ROOT / "main.py"), *tiny_args(idx_dir, workdir)],
      env=subprocess_env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
  try:
    while True:  # polling only; nothing asserts on time
      assert first.poll() is None, log.seek(0) or log.read()[-3000:]
      try:
        holder = json.loads((workdir / ".lock").read_text())
      except (OSError, ValueError):
        holder = None
      if holder and holder["pid"] == first.pid:
        break
      time.sleep(0.05)
    os.kill(first.pid, signal.SIGSTOP)
    try:
      before = snapshot(workdir)
      second = run_main(*tiny_args(idx_dir, workdir),
                        expect=errors.EXIT_USER_ERROR, timeout=300)
      after = snapshot(workdir)
    finally:
      os.kill(first.pid, signal.SIGCONT)
    assert after == before
    [line] = _error_lines(second.stderr)
    assert line.startswith(f"error: workdir '{workdir}' is in use by training "
                           f"(pid {first.pid}, since ")
    assert "Traceback" not in second.stderr
    assert first.wait(timeout=600) == 0, log.seek(0) or log.read()[-3000:]
  finally:
    if first.poll() is None:
      first.kill()
    log.close()
  results = json.loads((workdir / "results.json").read_text())
  assert results["step"] == 8
  assert [json.loads(l)["step"] for l in
          (workdir / "eval_history.jsonl").read_text().splitlines()] == [7, 8]
  assert not (workdir / ".lock").exists()


def test_exit_statuses_user_error_and_internal_error():
  """2 with one line for a user's mistake (also a workdir in use, above);
  1 with a traceback for a bug. (0 and 3: above.)"""
  proc = run_main("--config=configs/mnist.py", "--mode=nonsense",
                  expect=errors.EXIT_USER_ERROR)
  assert len(_error_lines(proc.stderr)) == 1
  assert "Traceback" not in proc.stderr
  bug = ("import sys\n"
         "sys.argv = ['main.py', '--config=configs/mnist.py', '--mode=summary']\n"
         "from capsnet_jax import cli\n"
         "def run(*args, **kwargs):\n"
         "  raise ZeroDivisionError('a bug')\n"
         "cli.run = run\n"
         "cli.entry_point()\n")
  proc = subprocess.run([sys.executable, "-c", bug], env=subprocess_env(),
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == errors.EXIT_INTERNAL_ERROR == 1, proc.stderr
  assert "Traceback" in proc.stderr
  assert "ZeroDivisionError: a bug" in proc.stderr


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _two_processes(*per_process_args) -> list[subprocess.CompletedProcess]:
  """main.py as processes 0 and 1 of one run (one CPU device each), with
  args[i] for process i; both waited for."""
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, str(ROOT / "main.py"), *args,
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
       f"--process_id={i}", "--distributed_timeout=120"],
      env=subprocess_env(devices=1), cwd=ROOT, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)
           for i, args in enumerate(per_process_args)]
  outs = []
  for p in procs:
    out, err = p.communicate(timeout=600)
    outs.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
  return outs


def test_two_processes_that_disagree_fail_in_one_line(idx_dir, tmp_path):
  args = tiny_args(idx_dir, tmp_path / "w")
  outs = _two_processes(args, [*args, "--config.seed=1"])
  for out in outs:
    assert out.returncode == errors.EXIT_USER_ERROR, out.stderr[-3000:]
    assert _error_lines(out.stderr) == [
        "error: process(es) 1 of 2 run another config, workdir, mode or "
        "latest checkpoint than process 0: start every process with the "
        "same flags on the same workdir"]
    assert "Traceback" not in out.stderr
  assert not (tmp_path / "w").exists()  # refused before anything was written


def test_two_processes_refuse_a_workdir_in_use_alike(idx_dir, tmp_path):
  """Process 0 alone takes the workdir's lock and tells process 1 the
  outcome: refused, both exit 2 with the same line naming the holder."""
  from capsnet_jax.workdir import lock  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "w"
  args = tiny_args(idx_dir, workdir)
  with lock.hold(str(workdir), "park restore"):
    outs = _two_processes(args, args)
  for out in outs:
    assert out.returncode == errors.EXIT_USER_ERROR, out.stderr[-3000:]
    [line] = _error_lines(out.stderr)
    assert line.startswith(f"error: workdir '{workdir}' is in use by park "
                           f"restore (pid {os.getpid()}, since ")
    assert "Traceback" not in out.stderr
  assert not workdir.exists()  # the lock's folder went with it


def test_predict_over_two_processes(tmp_path):
  """Process 0 reads the files and broadcasts them, both run the sharded
  inference, only process 0 prints; both exit 3 for the one bad file."""
  folder = tmp_path / "scans"
  labels = _scans(folder, n=3)
  (folder / "notes.png").write_text("not an image")
  args = [*BUNDLE, "--mode=predict", f"--images={folder}",
          "--config.eval_batch_size=2"]  # two batches
  lead, other = _two_processes(args, args)
  for out in (lead, other):
    assert out.returncode == errors.EXIT_SOME_FAILED, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
  lines = [json.loads(l) for l in lead.stdout.splitlines()]
  assert [(os.path.basename(r["image"]), r["prediction"]) for r in lines] == [
      (f"digit{i}.png", int(label)) for i, label in enumerate(labels)]
  assert _error_lines(lead.stderr) == [
      f"error: {folder / 'notes.png'}: not an image file of an accepted "
      "format (PNG, JPEG, BMP, GIF, TIFF, WEBP)"]
  assert other.stdout == "" and not _error_lines(other.stderr)
