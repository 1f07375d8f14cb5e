"""scripts/gpu_run.py on CPU with the tiny model: the experiment list, runs
started in priority order within --max_parallel, a chunk stopped at its
deadline and resumed from its checkpoint, a run continued from a finished
one's copy, and the collected results."""

import importlib
import json
import pathlib
import re
import sys
import tarfile
import time

import pytest

from conftest import ROOT, subprocess_env  # pylint: disable=g-import-not-at-top

sys.path.insert(0, str(ROOT / "scripts"))
import gpu_run  # pylint: disable=g-import-not-at-top,wrong-import-position

# 256 synthetic training images (conftest.make_idx_dir), batch 32.
TINY = ["--override=--config.model=tiny", "--override=--config.primary_types=4",
        "--override=--config.num_summary_images=2",
        "--override=--config.log_every_steps=4",
        "--override=--config.multimnist_test_pairs=200",
        "--batch_size=32", "--num_train=256", "--poll_seconds=0.5"]


@pytest.fixture(autouse=True)
def _compilation_cache(monkeypatch):
  """gpu_run starts main.py with this process's environment: give it the
  subprocesses' compilation cache (this process's JAX is already set up)."""
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR",
                     subprocess_env()["JAX_COMPILATION_CACHE_DIR"])


def _history(workdir):
  return [json.loads(l) for l in
          (workdir / "eval_history.jsonl").read_text().splitlines()]


def _starts(workdir):
  """How many times gpu_run started main.py in workdir (its "# DATE CMD")."""
  return len(re.findall(r"^# .*/main\.py --config=",
                        (workdir / gpu_run.LOG_FILE).read_text(), re.M))


def test_the_experiment_list():
  args = gpu_run.parse_args(["--idx_dir=mnist", "--out=out"])
  exps = gpu_run.experiments(args)
  assert [e.name for e in exps] == [
      "authors_full_s0", "authors_full_s1", "authors_full_s2",
      "mnist_paper_s0", "mnist_paper_s1", "mnist_paper_s2", "dec_fc",
      "dec_fc_bn", "dec_deconv", "dec_deconv_bn", "ref_fc_long", "mnist_cnn",
      "mnist40", "mnist40_cnn", "multimnist"]
  by_name = {e.name: e for e in exps}
  for seed in (0, 1, 2):
    e = by_name[f"authors_full_s{seed}"]
    assert (e.config, e.overrides) == ("configs/mnist.py:authors_full",
                                       (f"--config.seed={seed}",))
    assert e.total_steps == 300_000  # the authors' README's --max_steps
  assert importlib.import_module("configs.mnist").get_config(
      "authors_full").num_train_steps == 300_000
  assert gpu_run.command(by_name["authors_full_s2"], pathlib.Path("w"), args
                         )[1:] == [
      str(ROOT / "main.py"), "--config=configs/mnist.py:authors_full",
      "--workdir=w", "--config.idx_dir=mnist",
      "--config.num_train_steps=300000", "--config.seed=2"]
  for seed in (0, 1, 2):
    e = by_name[f"mnist_paper_s{seed}"]
    assert (e.config, e.overrides) == ("configs/mnist.py",
                                       (f"--config.seed={seed}",))
    assert e.total_steps == 120 * 468  # 60,000 // 128
  assert by_name["dec_deconv_bn"].config == "configs/mnist.py:reference"
  assert by_name["dec_deconv_bn"].overrides == ("--config.decoder=deconv",
                                                "--config.batch_norm=True")
  assert by_name["dec_deconv_bn"].total_steps == 25 * 421  # 54,000 // 128
  assert (by_name["ref_fc_long"].after, by_name["ref_fc_long"].total_steps) == (
      "dec_fc", 113 * 421)
  assert (by_name["mnist_cnn"].config, by_name["mnist_cnn"].total_steps) == (
      "configs/mnist_cnn.py", 10 * 468)
  assert importlib.import_module("configs.mnist_cnn").get_config(
      ).num_epochs == 10  # gpu_run's default
  # The 40x40 protocol, at its configs' lengths (60,000 digits, batch 128).
  for name, epochs in (("mnist40", 50), ("mnist40_cnn", 10)):
    assert (by_name[name].config, by_name[name].total_steps) == (
        f"configs/{name}.py", epochs * 468)
    config = importlib.import_module(f"configs.{name}").get_config()
    assert (config.num_epochs, config.data_setup) == (epochs, "expanded")
  assert by_name["multimnist"].config == "configs/multimnist.py"
  assert by_name["multimnist"].total_steps == 1000 * 468
  assert importlib.import_module("configs.multimnist").get_config(
      ).num_epochs == 1000  # the paper's 60M pairs: gpu_run's default
  assert args.max_parallel == 7  # not all 15 at once
  # main.py's command line, whose overrides name fields of the config.
  for e in exps:
    path, _, variant = e.config.partition(":")
    config = importlib.import_module(f"configs.{pathlib.Path(path).stem}"
                                     ).get_config(variant)
    for override in e.overrides:
      name = re.fullmatch(r"--config\.(\w+)=\w+", override).group(1)
      assert name in config, (e.name, override)
  assert gpu_run.command(by_name["mnist_paper_s1"], pathlib.Path("w"), args
                         )[1:] == [
      str(ROOT / "main.py"), "--config=configs/mnist.py", "--workdir=w",
      "--config.idx_dir=mnist", "--config.num_epochs=120", "--config.seed=1"]
  # The old flag, other seeds, a subset, and runs turned off.
  args = gpu_run.parse_args(["--idx_dir=mnist", "--out=out", "--long_epochs=90",
                             "--seeds=3,4", "--ref_long_epochs=0",
                             "--authors_full_steps=0",
                             "--multimnist_epochs=0", "--cnn_epochs=0",
                             "--mnist40_epochs=0", "--mnist40_cnn_epochs=0",
                             "--only=mnist_paper_s4,dec_fc"])
  assert [(e.name, e.overrides, e.epochs) for e in gpu_run.experiments(args)
          ] == [("mnist_paper_s4", ("--config.seed=4",), 90),
                ("dec_fc", ("--config.decoder=fc", "--config.batch_norm=False"),
                 25)]


@pytest.mark.parametrize("flags, message", [
    (["--only=mnist_paper,dec_fc"], "--only names no experiment: mnist_paper;"),
    (["--max_parallel=0"], "--max_parallel must be at least 1"),
    (["--seeds=0,one"], "--seeds takes comma-separated integers"),
])
def test_bad_flags_are_refused(flags, message, capsys):
  with pytest.raises(SystemExit) as exit_info:
    gpu_run.parse_args(["--idx_dir=mnist", "--out=out", *flags])
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err


def test_runs_start_in_priority_order_within_max_parallel(idx_dir, tmp_path,
                                                          monkeypatch):
  runs, out = tmp_path / "runs", tmp_path / "out"
  started = []  # (name, the state of both runs then)
  start = gpu_run.start

  def recording_start(e, runs_dir, args):
    started.append((e.name,
                    {n: ("running" if gpu_run.running_pid(runs_dir / n) else
                         "finished" if (runs_dir / n / "results.json").exists()
                         else None) for n in ("dec_fc", "multimnist")}))
    return start(e, runs_dir, args)

  monkeypatch.setattr(gpu_run, "start", recording_start)
  # dec_fc compiles what the chunk test's runs use (the cache is shared).
  rc = gpu_run.main([f"--idx_dir={idx_dir}", f"--runs={runs}", f"--out={out}",
                     "--only=multimnist,dec_fc", "--max_parallel=1",
                     "--decoder_epochs=1", "--multimnist_epochs=1", *TINY])
  assert rc == 0
  # MultiMNIST last, once the run before it has finished and exited.
  assert started == [
      ("dec_fc", {"dec_fc": None, "multimnist": None}),
      ("multimnist", {"dec_fc": "finished", "multimnist": None})]
  assert [r["step"] for r in _history(runs / "dec_fc")] == [7]  # 231 // 32
  # One pair per training digit an epoch, none held out: 256 // 32 steps.
  pairs = _history(runs / "multimnist")
  assert [r["step"] for r in pairs] == [8]
  assert pairs[0]["epoch"] == 1.0
  assert json.loads((runs / "multimnist" / "config.json").read_text())[
      "dataset"] == "multimnist"
  status = (out / "status.txt").read_text()
  assert "dec_fc | finished | 7 | 7" in status
  assert "multimnist | finished | 8 | 8" in status
  with tarfile.open(out / "gpu_runs.tar.gz") as tar:
    names = set(tar.getnames())
  for name in ("gpu_runs/multimnist/eval_history.jsonl",
               "gpu_runs/dec_fc/results.json", "gpu_runs/report.md",
               "gpu_runs/curves.png", "gpu_runs/multimnist/train.log"):
    assert name in names, (name, sorted(names))
  assert "| multimnist | 1 |" in (out / "gpu_runs" / "report.md").read_text()


def test_a_chunk_stops_at_its_deadline_resumes_and_is_continued(idx_dir,
                                                                tmp_path):
  runs, out = tmp_path / "runs", tmp_path / "out"
  common = [f"--idx_dir={idx_dir}", f"--runs={runs}", f"--out={out}",
            "--only=dec_fc,ref_fc_long", "--decoder_epochs=6",
            "--ref_long_epochs=7", *TINY]
  dec_fc, ref_long = runs / "dec_fc", runs / "ref_fc_long"
  # A chunk that leaves its run going: ref_fc_long waits for dec_fc.
  assert gpu_run.main(common + ["--deadline_seconds=1", "--keep_running"]) == 0
  assert gpu_run.running_pid(dec_fc) is not None
  assert not ref_long.exists()
  assert "ref_fc_long | waiting for dec_fc | 0 |" in (out / "status.txt"
                                                     ).read_text()
  history = dec_fc / "eval_history.jsonl"
  limit = time.monotonic() + 300
  while not (history.exists() and history.read_text().strip()):
    assert gpu_run.running_pid(dec_fc), (dec_fc / "train.log").read_text()
    assert time.monotonic() < limit, "no epoch of dec_fc within 300 s"
    time.sleep(0.2)
  # The next chunk finds it (no second start) and, at its deadline, stops it.
  assert gpu_run.main(common + ["--deadline_seconds=0"]) == 0
  assert gpu_run.running_pid(dec_fc) is None
  assert _history(dec_fc)[-1]["step"] < 42  # stopped before its end
  assert _starts(dec_fc) == 1
  # The last chunk resumes dec_fc from its checkpoint, then continues a copy.
  assert gpu_run.main(common + ["--deadline_seconds=600"]) == 0
  assert _starts(dec_fc) == 2, (dec_fc / gpu_run.LOG_FILE).read_text()
  resumed = re.findall(r"Resumed from the checkpoint at step (\d+)",
                       (dec_fc / "train.log").read_text())
  assert len(resumed) == 1 and 7 <= int(resumed[0]) < 42, resumed
  fc = _history(dec_fc)
  assert [r["step"] for r in fc] == [7, 14, 21, 28, 35, 42]  # 231 // 32 = 7
  long = _history(ref_long)
  assert long[:6] == fc  # continued from a copy of the finished run
  assert [r["step"] for r in long[6:]] == [49]
  assert _starts(ref_long) == 1
  assert json.loads((ref_long / "results.json").read_text())["step"] == 49
  status = (out / "status.txt").read_text()
  assert "dec_fc | finished | 42 | 42" in status
  assert "ref_fc_long | finished | 49 | 49" in status
  assert "| ref_fc_long | 7 |" in (out / "gpu_runs" / "report.md").read_text()


def test_the_authors_full_length_run_in_steps(idx_dir, tmp_path):
  """authors_full runs to a number of steps, not epochs: 10 steps of the
  tiny model (one 8-step epoch of the 256 digits, none held out in the
  paper setup, then 2 more) end at step 10 and count as finished."""
  runs, out = tmp_path / "runs", tmp_path / "out"
  assert gpu_run.main([f"--idx_dir={idx_dir}", f"--runs={runs}",
                       f"--out={out}", "--only=authors_full_s0",
                       "--authors_full_steps=10", *TINY]) == 0
  workdir = runs / "authors_full_s0"
  assert [r["step"] for r in _history(workdir)] == [8, 10]
  assert json.loads((workdir / "config.json").read_text())[
      "data_setup"] == "paper"
  assert "authors_full_s0 | finished | 10 | 10" in (out / "status.txt"
                                                     ).read_text()
