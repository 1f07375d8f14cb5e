"""The evaluation history (capsnet_jax.workdir.history) through stops and
resumes: partial lines, the lines a resume drops and those it keeps, a
history without checkpoints, records that are not records. (The records of
a run and --mode=eval's: tests/test_loop.py; preemption:
tests/test_reliability.py.)"""

import json

import pytest

from capsnet_jax.errors import WorkdirError
from capsnet_jax.training import loop
from capsnet_jax.workdir import history
from conftest import tiny_config


def _lines(workdir):
  return [json.loads(l)
          for l in (workdir / "eval_history.jsonl").read_text().splitlines()]


def test_append_read_truncate_and_partial_lines(tmp_path):
  (tmp_path / "checkpoints").mkdir()
  for step, acc in ((10, 0.5), (20, 0.7), (30, 0.6)):
    history.append(str(tmp_path), {"step": step, "test_accuracy": acc})
  assert history.best(history.read(str(tmp_path))) == (0.7, 20)
  # A crash mid-write leaves a cut line: reading skips it, the next append
  # starts on a new line, truncation drops it.
  with open(tmp_path / "eval_history.jsonl", "a") as f:
    f.write('{"step": 40, "test_acc')
  assert [r["step"] for r in history.read(str(tmp_path))] == [10, 20, 30]
  history.append(str(tmp_path), {"step": 40, "test_accuracy": 0.9})
  assert [r["step"] for r in history.read(str(tmp_path))] == [10, 20, 30, 40]
  assert history.truncate_after(str(tmp_path), 20) == 2
  text = (tmp_path / "eval_history.jsonl").read_text()
  assert [json.loads(l)["step"] for l in text.splitlines()] == [10, 20]


def test_truncate_keeps_the_records_of_eval_mode(tmp_path):
  """--mode=eval's lines evaluate a complete checkpoint: a resume from an
  earlier one drops only training lines, as the docstring says."""
  (tmp_path / "checkpoints").mkdir()
  for step, source in ((10, "train"), (20, "train"), (20, "eval"),
                       (30, "train"), (30, "eval")):
    history.append(str(tmp_path), {"step": step, "source": source})
  assert history.truncate_after(str(tmp_path), 10) == 2
  assert [(r["step"], r["source"]) for r in _lines(tmp_path)] == [
      (10, "train"), (20, "eval"), (30, "eval")]


def test_a_history_without_checkpoints_is_refused_not_wiped(idx_dir,
                                                            tmp_path):
  """A resume from step 0 would drop every line: training refuses, before
  writing anything, and says why."""
  workdir = tmp_path / "w"
  workdir.mkdir()
  for step in (7, 8):
    history.append(str(workdir), {"step": step, "source": "train",
                                  "test_accuracy": 0.9})
  before = (workdir / "eval_history.jsonl").read_bytes()
  message = (r"holds 2 training evaluation\(s\) up to step 8, but .* has no "
             r"checkpoints/ folder")
  with pytest.raises(WorkdirError, match=message):
    history.truncate_after(str(workdir), 0)
  with pytest.raises(WorkdirError, match=message):
    loop.train_and_evaluate(tiny_config(idx_dir), str(workdir))
  assert (workdir / "eval_history.jsonl").read_bytes() == before
  assert sorted(p.name for p in workdir.iterdir()) == ["eval_history.jsonl"]
  # Lines of --mode=eval only (no training to lose): nothing to refuse.
  (workdir / "eval_history.jsonl").write_text(
      json.dumps({"step": 8, "source": "eval"}) + "\n")
  history.check_resumable(str(workdir))


@pytest.mark.parametrize("line,why", [
    ("[1, 2]", "is not an evaluation record .a JSON object, got list."),
    ('"step"', "is not an evaluation record .a JSON object, got str."),
    ('{"step": "8"}', "has no integer \"step\" .got '8'."),
    ('{"step": 8.0}', "has no integer \"step\" .got 8.0."),
    ('{"step": true}', "has no integer \"step\" .got True."),
    ('{"test_accuracy": 0.9}', "has no integer \"step\" .got None."),
])
def test_a_record_that_is_not_a_record_names_its_file_and_line(
    tmp_path, line, why):
  (tmp_path / "eval_history.jsonl").write_text(
      json.dumps({"step": 4}) + "\n\n" + line + "\n")
  path = tmp_path / "eval_history.jsonl"
  with pytest.raises(WorkdirError, match=f"{path}:3 {why}"):
    history.read(str(tmp_path))
  with pytest.raises(WorkdirError, match=f"{path}:3 "):
    history.truncate_after(str(tmp_path), 4)


def test_clock_continues_and_excludes_evaluation():
  """loop.Clock with an injected clock: wall_seconds continues from the
  previous session's last record; train_seconds restarts after each
  evaluation."""
  now = [50.0]
  clock = loop.Clock(120.0, start=40.0, now=lambda: now[0])
  assert clock.wall_seconds() == 130.0  # 120 before + 10 since this start
  assert clock.train_seconds() == 10.0
  now[0] = 53.0  # an evaluation of 3 s, then training restarts
  clock.restart_training()
  now[0] = 60.0
  assert clock.train_seconds() == 7.0
  assert clock.wall_seconds() == 140.0


def test_resume_drops_evaluations_whose_checkpoint_never_completed(
    tiny_run, idx_dir, tmp_path):
  """A kill between an evaluation's line and its checkpoint: the resumed run
  redoes that evaluation and the history holds it once; a line of
  --mode=eval stays."""
  workdir = tiny_run.copy(tmp_path / "w")
  first = _lines(workdir)
  assert [r["step"] for r in first] == [7, 8]
  history.append(str(workdir), {"step": 12, "test_accuracy": 1.0,
                                "source": "train", "orphan": True})
  history.append(str(workdir), {"step": 8, "test_accuracy": 0.5,
                                "source": "eval"})
  results = loop.train_and_evaluate(
      tiny_config(idx_dir, num_train_steps=12, eval_every_steps=4),
      str(workdir))
  records = _lines(workdir)
  assert [(r["step"], r["source"]) for r in records] == [
      (7, "train"), (8, "train"), (8, "eval"), (12, "train")]
  assert records[:2] == first  # the earlier lines untouched
  assert not any(r.get("orphan") for r in records)
  assert results["best_test_accuracy"] == max(r["test_accuracy"]
                                              for r in records)
  # The wall clock continues from the last record of the earlier session
  # (test_clock_continues_and_excludes_evaluation shows how).
  assert records[3]["wall_seconds"] >= records[1]["wall_seconds"]
  assert not (workdir / ".lock").exists()  # released at the end
