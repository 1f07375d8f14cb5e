"""The command line: --config paths, flags into the config and on to the
model (compute_dtype), and the dispatch's own errors. (The modes' behaviour
through main.py: test_reliability, test_summary, test_ensemble,
test_predict, test_multidevice.)"""

import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from capsnet_jax import cli
from capsnet_jax import errors
from capsnet_jax import experiment
from capsnet_jax.training import mesh as mesh_lib
from capsnet_jax.model import models
from capsnet_jax.model import precision
from capsnet_jax.training import state as state_lib
from capsnet_jax.training import steps as steps_lib
from conftest import ROOT


def test_config_paths_resolve_against_the_cwd_then_the_bundle(tmp_path,
                                                             monkeypatch):
  monkeypatch.chdir(tmp_path)
  bundled = cli.bundled_config_dir()
  assert os.path.isfile(os.path.join(bundled, "default.py"))
  mnist = os.path.join(bundled, "mnist.py")
  assert cli.resolve_config("configs/mnist.py") == mnist
  assert cli.resolve_config("mnist") == mnist
  assert cli.resolve_config("mnist.py:smoke") == mnist + ":smoke"
  for value in ("elsewhere/mnist.py", "nonexistent", "configs/nonexistent.py"):
    assert cli.resolve_config(value) == value  # ml_collections reports it
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "mnist.py").write_text("")
  assert cli.resolve_config("configs/mnist.py") == "configs/mnist.py"


@pytest.fixture(name="flags_config", scope="module")
def fixture_flags_config():
  """The config main.py would run with for
  ``--config=configs/mnist.py --config.model=tiny --config.compute_dtype=bfloat16``,
  parsed by cli's own flag parser. Once per process: absl defines a flag
  per --config.NAME override, and ml_collections reads them from sys.argv."""
  argv = ["main.py", f"--config={ROOT}/configs/mnist.py", "--config.model=tiny",
          "--config.compute_dtype=bfloat16"]
  saved = sys.argv
  sys.argv = argv
  try:
    cli._parse_flags(argv)  # pylint: disable=protected-access
  finally:
    sys.argv = saved
  return cli.FLAGS.config


def _train_step_text(config) -> tuple[models.CapsNet, str]:
  """The model main.py would build, and its train step lowered (traced, not
  compiled) for a batch of 8."""
  exp = experiment.resolve(config)
  model = exp.model
  mesh = mesh_lib.make_mesh()
  state = state_lib.abstract(exp, mesh)
  batch = {"image": jax.ShapeDtypeStruct((8, 28, 28, 1), jnp.uint8,
                                         sharding=mesh_lib.batch_sharded(mesh)),
           "label": jax.ShapeDtypeStruct((8,), jnp.int32,
                                         sharding=mesh_lib.batch_sharded(mesh))}
  steps = steps_lib.Steps(exp, mesh)
  return model, steps.train.lower(state, batch).as_text()


def test_compute_dtype_from_the_command_line_reaches_the_train_step(
    flags_config):
  assert flags_config.compute_dtype == "bfloat16"
  assert flags_config.model == "tiny" and flags_config.data_setup == "paper"
  model, text = _train_step_text(flags_config)
  assert model.dtype == jnp.bfloat16
  assert "bf16" in text
  # Parameters stay float32.
  state = state_lib.abstract(experiment.resolve(flags_config),
                             mesh_lib.make_mesh())
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {
      np.dtype(np.float32)}


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU's choice")
def test_compute_dtype_auto_is_float32_on_cpu(flags_config):
  assert precision.resolve_compute_dtype("auto")[0] == "float32"
  config = ml_collections.ConfigDict(flags_config.to_dict())
  config.compute_dtype = "auto"
  model, text = _train_step_text(config)
  assert model.dtype == jnp.float32
  assert "bf16" not in text


def test_modes_that_need_a_workdir_or_images(flags_config, tmp_path):
  config = flags_config
  for mode in ("train", "eval", "visualize", "ensemble", "predict"):
    with pytest.raises(errors.ConfigError, match=f"--mode={mode} needs --workdir"):
      cli.run(mode, config, None)
  with pytest.raises(errors.ConfigError,
                     match=r"--mode=predict needs --images=PATH\[,PATH...\]"):
    cli.run("predict", config, str(tmp_path), images=[])


def test_ctrl_c_is_one_line_and_status_130(flags_config, monkeypatch, capsys):
  """Ctrl-C outside a training loop (loading data, compiling, predicting):
  no traceback, exit status 130."""
  del flags_config  # the flags parsed
  monkeypatch.setattr(cli, "_initialize_distributed", lambda: None)
  monkeypatch.setattr(cli.progress, "configure_logging", lambda verbosity: None)

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt
  monkeypatch.setattr(cli, "run", interrupted)
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["main.py"])
  assert exit_info.value.code == errors.EXIT_INTERRUPTED == 130
  assert capsys.readouterr().err == "interrupted (Ctrl-C)\n"
