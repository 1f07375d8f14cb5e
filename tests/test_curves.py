"""capsnet_jax.analysis.curves: a workdir's curves from its evaluation
history first, from its TensorBoard event files only where it has none
(grouped tags such as test/accuracy, and the flat tags of older files), and
the plot command with its exit statuses."""

import json
import os

import numpy as np
import pytest
from PIL import Image
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tensorboard.util import tensor_util

from capsnet_jax import errors
from capsnet_jax.analysis import curves


def _tensor(tag, value):
  """As TensorFlow's summary writer (clu's writer) stores a scalar."""
  return summary_pb2.Summary.Value(
      tag=tag, tensor=tensor_util.make_tensor_proto(value),
      metadata=summary_pb2.SummaryMetadata(
          plugin_data=summary_pb2.SummaryMetadata.PluginData(
              plugin_name="scalars")))


def _simple(tag, value):
  """As metric_logging.EventWriter (no TensorFlow) stores one."""
  return summary_pb2.Summary.Value(tag=tag, simple_value=value)


def _write(logdir, suffix, mtime, events):
  """One event file; ``mtime`` orders the files as sessions did."""
  writer = EventFileWriter(str(logdir), filename_suffix=suffix)
  for step, values in events:
    writer.add_event(event_pb2.Event(wall_time=1.0, step=step,
                                     summary=summary_pb2.Summary(value=values)))
  writer.close()
  (path,) = [p for p in logdir.glob("events.out.tfevents.*")
             if p.name.endswith(suffix)]
  os.utime(path, (mtime, mtime))


def _history(workdir, records):
  with open(workdir / "eval_history.jsonl", "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")


@pytest.fixture(name="grouped")
def fixture_grouped(tmp_path):
  """Today's tags (train/loss, test/accuracy). The first session (older
  file) logged steps 10-30 as tensors; a resumed session (newer file)
  re-logged step 30 and went on, as simple values."""
  _write(tmp_path, ".a", 1_000, [
      (10, [_tensor("train/loss", np.float32(0.5)),
            _tensor("note", np.array("text")),                   # not a number
            _tensor("pair", np.array([1.0, 2.0], np.float32))]),  # not a scalar
      (20, [_tensor("train/loss", np.float32(0.25))]),
      (30, [_tensor("train/loss", np.float32(9.0)),
            _tensor("test/accuracy", np.float64(0.75))]),
  ])
  _write(tmp_path, ".b", 2_000, [
      (40, [_simple("train/loss", 0.0625), _simple("test/accuracy", 0.875)]),
      (30, [_simple("train/loss", 0.125)]),  # written last: wins over 9.0
  ])
  return tmp_path


def test_events_grouped_tags_both_formats_sorted_last_write_wins(grouped):
  scalars = curves.from_events(str(grouped))
  assert sorted(scalars) == ["test_accuracy", "train_loss"]  # flat names
  steps, values = scalars["train_loss"]
  assert steps.dtype == np.int64 and values.dtype == np.float64
  np.testing.assert_array_equal(steps, [10, 20, 30, 40])
  np.testing.assert_array_equal(values, [0.5, 0.25, 0.125, 0.0625])
  steps, values = scalars["test_accuracy"]
  np.testing.assert_array_equal(steps, [30, 40])
  np.testing.assert_array_equal(values, [0.75, 0.875])


def test_events_of_older_runs_flat_tags_and_a_resume_across_the_change(
    tmp_path):
  """Event files written before the tags were grouped (test_accuracy) read
  as before; a run resumed after the change (test/accuracy in the newer
  file) gives one curve, the newer file winning at the step both hold."""
  _write(tmp_path, ".old", 1_000, [
      (10, [_tensor("test_accuracy", np.float32(0.5)),
            _simple("train_loss", 2.0)]),
      (20, [_tensor("test_accuracy", np.float32(0.625))]),
  ])
  flat = curves.from_events(str(tmp_path))
  assert sorted(flat) == ["test_accuracy", "train_loss"]
  np.testing.assert_array_equal(flat["test_accuracy"][0], [10, 20])
  np.testing.assert_array_equal(flat["test_accuracy"][1], [0.5, 0.625])
  _write(tmp_path, ".new", 2_000, [
      (20, [_simple("test/accuracy", 0.75)]),
      (30, [_simple("test/accuracy", 0.875), _simple("validation/accuracy",
                                                     0.8125)]),
  ])
  both = curves.from_events(str(tmp_path))
  assert sorted(both) == ["test_accuracy", "train_loss", "validation_accuracy"]
  np.testing.assert_array_equal(both["test_accuracy"][0], [10, 20, 30])
  np.testing.assert_array_equal(both["test_accuracy"][1], [0.5, 0.75, 0.875])


def test_history_first_events_only_as_a_fallback(grouped):
  """With an eval_history.jsonl, the curves are its training records
  against the epoch (not the event files' values, not --mode=eval's lines);
  without one, the event files' against the step."""
  curves_, axis = curves.read(str(grouped))
  assert axis == "step"
  np.testing.assert_array_equal(curves_["test_accuracy"][1], [0.75, 0.875])
  _history(grouped, [
      {"step": 30, "epoch": 0.5, "test_accuracy": 0.25,
       "test_margin_loss": 0.5, "train_loss": 7.0, "learning_rate": 1e-3},
      {"step": 60, "epoch": 1.0, "test_accuracy": 0.5,
       "validation_accuracy": 0.375, "test_margin_loss": 0.25,
       "note": "text", "best": True},
      {"step": 60, "epoch": 1.0, "test_accuracy": 0.0, "source": "eval"},
  ])
  curves_, axis = curves.read(str(grouped))
  assert axis == "epoch"
  # Test and validation metrics only; numbers only.
  assert sorted(curves_) == ["test_accuracy", "test_margin_loss",
                             "validation_accuracy"]
  np.testing.assert_array_equal(curves_["test_accuracy"][0], [0.5, 1.0])
  np.testing.assert_array_equal(curves_["test_accuracy"][1], [0.25, 0.5])
  np.testing.assert_array_equal(curves_["validation_accuracy"][0], [1.0])
  np.testing.assert_array_equal(curves_["validation_accuracy"][1], [0.375])
  # A history of --mode=eval lines alone holds no training curve: events.
  _history(grouped, [{"step": 60, "epoch": 1.0, "test_accuracy": 0.0,
                      "source": "eval"}])
  assert curves.read(str(grouped))[1] == "step"


def test_nothing_to_read_is_a_workdir_error(tmp_path):
  with pytest.raises(errors.WorkdirError,
                     match="no eval_history.jsonl and no TensorBoard event "
                           "files in"):
    curves.read(str(tmp_path))


def test_plot_and_command_line(grouped, tmp_path, capsys):
  out = tmp_path / "plots"
  out.mkdir()
  history_run = tmp_path / "history_run"
  history_run.mkdir()
  _history(history_run, [
      {"step": s, "epoch": s / 10, "test_accuracy": 0.9 + 0.02 * s / 10,
       "test_margin_loss": 0.1 / s, "test_reconstruction_loss": 30.0 / s}
      for s in (10, 20, 30)])
  data = curves.plot({"a": str(grouped), "b": str(history_run)},
                     str(out / "both.png"))
  # One axis for both: "a" has event files alone, so "b"'s history is
  # plotted by its steps too, not its epochs.
  np.testing.assert_array_equal(data["a"]["test_accuracy"][0], [30, 40])
  np.testing.assert_array_equal(data["b"]["test_accuracy"][0], [10, 20, 30])
  alone = curves.plot({"b": str(history_run)}, str(out / "b.png"))
  np.testing.assert_array_equal(alone["b"]["test_accuracy"][0], [1, 2, 3])
  with Image.open(out / "both.png") as im:
    assert im.format == "PNG" and im.size[0] > 700  # 3 panels side by side
  assert curves.main([f"run={history_run}", f"--out={out / 'cli.png'}"]) == 0
  assert (out / "cli.png").stat().st_size > 1000
  assert capsys.readouterr().out == f"wrote {out / 'cli.png'}\n"
  status = curves.main([str(out), f"--out={out / 'none.png'}"])
  assert status == errors.EXIT_USER_ERROR == 2
  err = capsys.readouterr().err
  assert err == (f"error: no eval_history.jsonl and no TensorBoard event "
                 f"files in {out}\n")
  assert not (out / "none.png").exists()
