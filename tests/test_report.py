"""capsnet_jax.analysis.report: tables and curves generated from evaluation
histories and visualize summaries, README blocks, exit statuses (0; 1 for a
stale README block; 2 for a user's error, one line)."""

import json

import pytest

from capsnet_jax import errors
from capsnet_jax.analysis import report
from conftest import ROOT


def _workdir(path, records):
  path.mkdir()
  with open(path / "eval_history.jsonl", "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
  return str(path)


def _record(step, acc, epoch, source="train"):
  return {"step": step, "epoch": epoch, "test_accuracy": acc,
          "test_margin_loss": 0.01 * step, "test_reconstruction_loss": 30.0 / step,
          "learning_rate": 1e-3, "wall_seconds": 60.0 * step, "source": source}


@pytest.fixture(name="runs")
def fixture_runs(tmp_path):
  a = _workdir(tmp_path / "a", [_record(1, 0.98, 1.0), _record(2, 0.995, 2.0),
                                _record(3, 0.99, 3.0), _record(3, 0.5, 3.0, "eval")])
  b = _workdir(tmp_path / "b", [_record(1, 0.97, 0.5)])
  return a, b


def test_summary_table_values(runs):
  a, b = runs
  table = report.summary_table({"fc": a, "other": b})
  rows = table.splitlines()
  assert rows[2] == ("| fc | 3 | 99.50% (2) | 99.00% | 2 | 10.00 | 0.0300 | - | "
                     "3.0 min |")
  assert rows[3] == ("| other | 0.50 | 97.00% (0.50) | 97.00% | - | 30.00 | "
                     "0.0100 | - | 60 s |")


def test_summary_shows_the_sse_of_l1_runs(tmp_path):
  """An L1 run's reconstruction loss is a sum of absolute errors; the table's
  SSE column shows the SSE it records beside it."""
  record = dict(_record(2, 0.99, 1.0), test_reconstruction_loss=55.0,
                test_reconstruction_sse=21.5)
  l1 = _workdir(tmp_path / "l1", [record])
  row = report.summary_table({"l1": l1})
  assert row.splitlines()[2].startswith("| l1 | 1 | 99.00% (1) | 99.00% | - | 21.50 |")
  # So do the epochs and decoder tables.
  assert report.epochs_table(l1).splitlines()[2].startswith(
      "| 1 (2) | **99.00%** | 0.0200 | 21.50 |")
  assert report.decoders_table({"l1": l1}).splitlines()[2].startswith(
      "| l1 | 1 | 21.50 |")


def test_epochs_and_decoder_tables(runs):
  a, _ = runs
  rows = report.epochs_table(a).splitlines()
  assert rows[3] == "| 2 (2) | **99.50%** | 0.0200 | 15.00 | 0.001 | 2.0 min |"
  assert len(rows) == 5
  rows = report.decoders_table({"deconv_bn": a}).splitlines()
  assert rows[2].endswith("| 9.52 / 0.0044 / 99.55% |")
  assert rows[2].startswith("| deconv_bn | 3 | 10.00 | 0.0300 | 99.00% | 99.50% (2) |")


def test_agreement_table_finds_the_first_difference(runs, tmp_path):
  a, b = runs
  same = _workdir(tmp_path / "same", [_record(1, 0.98, 1.0), _record(2, 0.995, 2.0)])
  late = _workdir(tmp_path / "late", [
      _record(1, 0.98, 1.0), dict(_record(2, 0.995, 2.0), test_margin_loss=0.03),
      _record(3, 0.9925, 3.0)])
  rows = report.agreement_table({"a": a, "same": same, "late": late,
                                 "b": b}).splitlines()
  assert rows[2] == "| same | 2 (epochs 1-2) | 2 of 2 | - | 0.00 points |"
  assert rows[3] == ("| late | 3 (epochs 1-3) | 1 of 3 | epoch 2: "
                     "test_margin_loss 0.02 vs 0.03 | 0.25 points |")
  assert rows[4] == ("| b | 1 (epoch 1) | 0 of 1 | epoch 1: test_accuracy "
                     "0.98 vs 0.97 | 1.00 points |")
  with pytest.raises(errors.WorkdirError, match="two or more runs"):
    report.agreement_table({"a": a})
  # A value one run lacks is a difference, named; NaN agrees with NaN.
  nan = [dict(_record(1, 0.98, 1.0), test_margin_loss=float("nan"))]
  rows = report.agreement_table({
      "nan": _workdir(tmp_path / "nan", nan),
      "nan again": _workdir(tmp_path / "nan2", nan),
      "no rate": _workdir(tmp_path / "norate", [
          {k: v for k, v in nan[0].items() if k != "learning_rate"}]),
  }).splitlines()
  assert rows[2] == "| nan again | 1 (epoch 1) | 1 of 1 | - | 0.00 points |"
  assert rows[3] == ("| no rate | 1 (epoch 1) | 0 of 1 | epoch 1: "
                     "learning_rate 0.001 vs missing | 0.00 points |")


def test_update_regenerates_marked_blocks_only(runs, tmp_path, capsys):
  a, _ = runs
  readme = tmp_path / "README.md"
  readme.write_text("intro\n<!-- report: --table=summary fc=a -->\nstale\n"
                    "<!-- /report -->\nkept text\n")
  assert report.main([f"--update={readme}"]) == 0
  text = readme.read_text()
  assert "stale" not in text and "kept text" in text and text.startswith("intro\n")
  assert "| fc | 3 | 99.50% (2) |" in text
  report.main([f"--update={readme}"])  # idempotent
  assert readme.read_text() == text
  assert report.main([f"--check={readme}"]) == 0
  readme.write_text(text.replace("99.50% (2)", "99.60% (2)"))  # edited by hand
  capsys.readouterr()
  assert report.main([f"--check={readme}"]) == 1
  assert capsys.readouterr().err == (
      f"stale report block in {readme}: --table=summary fc=a\n")


@pytest.mark.parametrize("page", ["README.md", *(
    str(p.relative_to(ROOT)) for p in sorted((ROOT / "docs").glob("*.md")))])
def test_result_tables_match_the_committed_histories(page):
  """Every generated table of the docs is what its ARGS give from the files
  committed under docs/ (no table edited by hand, none left stale)."""
  # docs/results.md holds every block; a page that loses one (a marker
  # reworded or deleted) fails here.
  assert len(report.blocks(str(ROOT / page))) == (
      18 if page == "docs/results.md" else 0)
  assert report.stale_blocks(str(ROOT / page)) == []


def test_every_must_be_at_least_one(runs, capsys):
  a, _ = runs
  for every in ("0", "-2", "x"):
    with pytest.raises(SystemExit) as exit_info:
      report.main([a, "--table=epochs", f"--every={every}"])
    assert exit_info.value.code == errors.EXIT_USER_ERROR
    assert capsys.readouterr().err.endswith(
        f"error: argument --every: must be a whole number >= 1, got "
        f"'{every}'\n")


def test_curves_png_and_errors(runs, tmp_path, capsys):
  a, b = runs
  out = tmp_path / "c.png"
  assert report.main([f"x={a}", f"y={b}", f"--curves={out}"]) == 0
  assert out.stat().st_size > 1000
  capsys.readouterr()
  missing = tmp_path / "missing"
  assert report.main([str(missing)]) == errors.EXIT_USER_ERROR == 2
  assert capsys.readouterr().err == (
      f"error: no evaluation history in {missing} (eval_history.jsonl)\n")
  assert report.main([]) == 2
  assert capsys.readouterr().err == "error: give workdirs or --update=FILE\n"


def _visualize_summary(path, step, accuracies, examples=2000):
  """A --mode=visualize summary.json with a 45-degree rotation sweep."""
  angles = [-180.0, -135.0, -90.0, -45.0, 0.0, 45.0, 90.0, 135.0, 180.0]
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({
      "checkpoint_step": step, "test_accuracy": accuracies[4],
      "rotation_angles": angles, "rotation_accuracy": accuracies,
      "rotation_examples": examples}))
  return str(path)


def test_rotation_table_and_curves(tmp_path, capsys):
  a = _visualize_summary(tmp_path / "a" / "figures" / "summary.json", 936,
                         [0.4, 0.3, 0.15, 0.5, 0.991, 0.52, 0.16, 0.31, 0.4],
                         examples=10000)
  b = _visualize_summary(tmp_path / "b.json", 150000,
                         [0.45, 0.4, 0.17, 0.8152, 0.9966, 0.8626, 0.1916, 0.4,
                          0.45])
  # A workdir holding figures/summary.json, or the file itself.
  table = report.rotation_table({"caps": str(tmp_path / "a"), "eff": b})
  rows = table.splitlines()
  assert rows[0] == ("| run | checkpoint step | test images | -90° | -45° | "
                     "-30° | -15° | 0° | +15° | +30° | +45° | +90° | 180° |")
  # Angles the sweep skipped are "-"; 0° has two decimals like the others.
  assert rows[2] == ("| caps | 936 | 10,000 | 15.0% | 50.0% | - | - | 99.10% "
                     "| - | - | 52.0% | 16.0% | 40.0% |")
  assert rows[3] == ("| eff | 150,000 | 2,000 | 17.0% | 81.5% | - | - | "
                     "99.66% | - | - | 86.3% | 19.2% | 45.0% |")
  out = tmp_path / "rot.png"
  assert report.main(["--table=rotation", f"caps={a}", f"eff={b}",
                      f"--curves={out}"]) == 0
  assert capsys.readouterr().out.splitlines()[3] == rows[3]
  assert out.stat().st_size > 1000


def test_rotation_errors(tmp_path, capsys):
  assert report.main(["--table=rotation", str(tmp_path)]) == 2
  assert capsys.readouterr().err == (
      f"error: no visualize summary.json at {tmp_path} (run "
      "--mode=visualize)\n")
  (tmp_path / "summary.json").write_text(json.dumps({"checkpoint_step": 1}))
  assert report.main(["--table=rotation", str(tmp_path)]) == 2
  assert capsys.readouterr().err == (
      f"error: {tmp_path / 'summary.json'} has no rotation sweep "
      "(rotation_accuracy)\n")


def test_plateau_table_spreads_over_the_floor(tmp_path, capsys):
  """By default the evaluations at the last learning rate (a schedule's
  floor); --from_epoch chooses where the stretch starts."""
  rates = [4e-4, 2e-4, 1e-4, 1e-4, 1e-4, 1e-4]
  accs = [0.9900, 0.9975, 0.9960, 0.9970, 0.9965, 0.9965]
  records = [dict(_record(s, a, float(s)), learning_rate=r)
             for s, (a, r) in enumerate(zip(accs, rates), start=1)]
  run = _workdir(tmp_path / "run", records)
  rows = report.plateau_table({"r": run}).splitlines()
  # Epochs 3-6: mean 0.9965, sd sqrt((25 + 25 + 0 + 0) / 4) = 3.536e-4.
  assert rows[2] == ("| r | 3-6 | 4 | 0.0001 | 99.60% / 99.65% / 99.70% | "
                     "0.035 points | 99.75% (2) | 0.0300-0.0600 | "
                     "10.00 / 5.00 |")
  # Epochs 2-6: mean 0.9967, deviations +8 -7 +3 -2 -2 (1e-4): sd sqrt(26)e-4.
  assert report.main(["--table=plateau", "--from_epoch=2", f"r={run}"]) == 0
  assert capsys.readouterr().out.splitlines()[2] == (
      "| r | 2-6 | 5 | 0.0001-0.0002 | 99.60% / 99.67% / 99.75% | 0.051 points "
      "| 99.75% (2) | 0.0200-0.0600 | 15.00 / 5.00 |")
  assert report.main(["--table=plateau", "--from_epoch=7", f"r={run}"]) == 2
  assert capsys.readouterr().err == (
      f"error: {run} has no evaluation from epoch 7 on\n")
  bare = _workdir(tmp_path / "bare", [
      {k: v for k, v in r.items() if k != "learning_rate"} for r in records])
  assert report.main(["--table=plateau", bare]) == 2
  assert capsys.readouterr().err == (
      "error: the history records no learning rate: give --from_epoch\n")


def test_the_decoder_table_says_whether_the_references_order_holds(tmp_path):
  """With all four decoders, a line under the table orders them by RLoss
  (lowest first) beside the reference's deconv_bn 9.52 < deconv 10.87 <
  fc_bn 13.12 < fc 21.62."""
  def run(name, sse):
    return _workdir(tmp_path / name, [dict(_record(1, 0.99, 1.0),
                                           test_reconstruction_loss=sse)])
  same = {"fc": run("a1", 20.0), "fc_bn": run("a2", 12.0),
          "deconv": run("a3", 10.0), "deconv_bn": run("a4", 9.0)}
  lines = report.decoders_table(same).splitlines()
  assert len(lines) == 8 and lines[6] == ""
  assert lines[7] == (
      "RLoss, lowest first: ours deconv_bn 9.00 < deconv 10.00 < fc_bn 12.00 "
      "< fc 20.00; the reference's deconv_bn 9.52 < deconv 10.87 < fc_bn "
      "13.12 < fc 21.62: the same order.")
  swapped = dict(same, deconv=run("b3", 89.34))
  assert report.decoders_table(swapped).splitlines()[7] == (
      "RLoss, lowest first: ours deconv_bn 9.00 < fc_bn 12.00 < fc 20.00 < "
      "deconv 89.34; the reference's deconv_bn 9.52 < deconv 10.87 < fc_bn "
      "13.12 < fc 21.62: a different order.")
  # Fewer than the four: no order line.
  assert len(report.decoders_table({"fc": same["fc"]}).splitlines()) == 3


def test_the_epochs_table_shows_the_authors_true_label_sse_when_recorded(
    tmp_path):
  """A history with test_reconstruction_sse_true_label gets that column
  after RLoss; an evaluation without it shows n/a."""
  first = _record(1, 0.98, 1.0)  # recorded before the field existed
  second = dict(_record(2, 0.99, 2.0), test_reconstruction_sse_true_label=14.5)
  rows = report.epochs_table(_workdir(tmp_path / "t", [first, second])
                             ).splitlines()
  assert rows[0] == ("| epoch (step) | test accuracy | test MLoss | test RLoss "
                     "(SSE) | test SSE, true label (the authors') | learning "
                     "rate | wall time since start |")
  assert rows[1] == "|---|---|---|---|---|---|---|"
  assert rows[2] == "| 1 (1) | 98.00% | 0.0100 | 30.00 | n/a | 0.001 | 60 s |"
  assert rows[3] == ("| 2 (2) | **99.00%** | 0.0200 | 15.00 | 14.50 | 0.001 | "
                     "2.0 min |")
