"""Tables and curves generated from evaluation histories."""

import json

import pytest

from capsnet_jax import report


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
  row = report.summary_table({"l1": _workdir(tmp_path / "l1", [record])})
  assert row.splitlines()[2].startswith("| l1 | 1 | 99.00% (1) | 99.00% | - | 21.50 |")


def test_epochs_and_decoder_tables(runs):
  a, _ = runs
  rows = report.epochs_table(a).splitlines()
  assert rows[3] == "| 2 (2) | **99.50%** | 0.0200 | 15.00 | 0.001 | 2.0 min |"
  assert len(rows) == 5
  rows = report.decoders_table({"deconv_bn": a}).splitlines()
  assert rows[2].endswith("| 9.52 / 0.0044 / 99.55% |")
  assert rows[2].startswith("| deconv_bn | 3 | 10.00 | 0.0300 | 99.00% | 99.50% (2) |")


def test_update_regenerates_marked_blocks_only(runs, tmp_path):
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


def test_curves_png_and_errors(runs, tmp_path, capsys):
  a, b = runs
  out = tmp_path / "c.png"
  assert report.main([f"x={a}", f"y={b}", f"--curves={out}"]) == 0
  assert out.stat().st_size > 1000
  assert report.main([str(tmp_path / "missing")]) == 1
  assert "no evaluation history" in capsys.readouterr().err
