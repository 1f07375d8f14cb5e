"""curves.read_scalars on event files written by hand with tensorboard's
EventFileWriter (both ways scalars are stored), and the plot command."""

import os

import numpy as np
import pytest
from PIL import Image
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tensorboard.util import tensor_util

from capsnet_jax.analysis import curves
from capsnet_jax.errors import WorkdirError


def _tensor(tag, value):
  """As TensorFlow's summary writer (clu's writer) stores a scalar."""
  return summary_pb2.Summary.Value(
      tag=tag, tensor=tensor_util.make_tensor_proto(value),
      metadata=summary_pb2.SummaryMetadata(
          plugin_data=summary_pb2.SummaryMetadata.PluginData(
              plugin_name="scalars")))


def _simple(tag, value):
  """As tensorboardX-style writers (metric_logging.EventWriter) store one."""
  return summary_pb2.Summary.Value(tag=tag, simple_value=value)


def _write(logdir, suffix, mtime, events):
  writer = EventFileWriter(str(logdir), filename_suffix=suffix)
  for step, values in events:
    writer.add_event(event_pb2.Event(wall_time=1.0, step=step,
                                     summary=summary_pb2.Summary(value=values)))
  writer.close()
  (path,) = [p for p in logdir.glob("events.out.tfevents.*")
             if p.name.endswith(suffix)]
  os.utime(path, (mtime, mtime))


@pytest.fixture(name="workdir")
def fixture_workdir(tmp_path):
  # The first session (older file) logged steps 10-30 as tensors; a resumed
  # session (newer file) re-logged step 30 and went on, as simple values.
  _write(tmp_path, ".a", 1_000, [
      (10, [_tensor("train_loss", np.float32(0.5)),
            _tensor("note", np.array("text")),                   # not a number
            _tensor("pair", np.array([1.0, 2.0], np.float32))]),  # not a scalar
      (20, [_tensor("train_loss", np.float32(0.25))]),
      (30, [_tensor("train_loss", np.float32(9.0)),
            _tensor("test_accuracy", np.float64(0.75))]),
  ])
  _write(tmp_path, ".b", 2_000, [
      (40, [_simple("train_loss", 0.0625), _simple("test_accuracy", 0.875)]),
      (30, [_simple("train_loss", 0.125)]),  # written last: wins over 9.0
  ])
  return tmp_path


def test_read_scalars_both_formats_sorted_last_write_wins(workdir):
  scalars = curves.read_scalars(str(workdir))
  assert sorted(scalars) == ["test_accuracy", "train_loss"]
  steps, values = scalars["train_loss"]
  assert steps.dtype == np.int64 and values.dtype == np.float64
  np.testing.assert_array_equal(steps, [10, 20, 30, 40])
  np.testing.assert_array_equal(values, [0.5, 0.25, 0.125, 0.0625])
  steps, values = scalars["test_accuracy"]
  np.testing.assert_array_equal(steps, [30, 40])
  np.testing.assert_array_equal(values, [0.75, 0.875])


def test_no_event_files_is_a_workdir_error(tmp_path):
  with pytest.raises(WorkdirError, match="no TensorBoard event files in"):
    curves.read_scalars(str(tmp_path))


def test_plot_and_command_line(workdir, tmp_path, capsys):
  out = tmp_path / "plots"
  out.mkdir()
  data = curves.plot_curves({"a": str(workdir), "b": str(workdir)},
                            str(out / "epochs.png"), steps_per_epoch=10)
  np.testing.assert_array_equal(data["a"]["train_loss"][0], [10, 20, 30, 40])
  with Image.open(out / "epochs.png") as im:
    assert im.format == "PNG" and im.size[0] > 500  # 4 panels side by side
  assert curves.main([f"run={workdir}", f"--out={out / 'cli.png'}"]) == 0
  assert (out / "cli.png").exists()
  assert f"wrote {out / 'cli.png'}" in capsys.readouterr().out
  assert curves.main([str(out), f"--out={out / 'none.png'}"]) == 1
  assert "error: no TensorBoard event files" in capsys.readouterr().err
  assert not (out / "none.png").exists()
