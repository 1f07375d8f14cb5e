"""The package: a wheel built from this checkout installs an importable
capsnet_jax (cheap to import, no TensorFlow) and the capsnet-jax command,
which work from any directory with the bundled configs."""

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, subprocess_env


def _setuptools_builds_wheels() -> bool:
  """setuptools >= 70.1 has bdist_wheel (older ones need the wheel package's,
  which newer wheel releases no longer provide)."""
  try:
    version = importlib.metadata.version("setuptools")
  except importlib.metadata.PackageNotFoundError:
    return False
  major, minor = (int(p) for p in (version.split(".") + ["0"])[:2])
  return (major, minor) >= (70, 1)


def _run(args, status=0, **kwargs):
  result = subprocess.run(args, capture_output=True, text=True, timeout=300,
                          check=False, **kwargs)
  assert result.returncode == status, (args, result.stdout[-2000:],
                                       result.stderr[-3000:])
  return result


@pytest.fixture(name="installed", scope="module")
def fixture_installed(tmp_path_factory):
  """(target folder, env, cwd): the wheel installed with --target, and a
  working directory outside the checkout."""
  if not _setuptools_builds_wheels():
    pytest.skip("needs setuptools >= 70.1 (requirements.txt pins it; rerun "
                "scripts/setup.sh)")
  tmp = tmp_path_factory.mktemp("package")
  source = tmp / "source"  # A copy, so that the build writes nothing here.
  source.mkdir()
  for name in ("capsnet_jax", "configs"):
    shutil.copytree(ROOT / name, source / name,
                    ignore=shutil.ignore_patterns("__pycache__"))
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(ROOT / name, source / name)
  pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
  _run(pip + ["wheel", "--no-deps", "--no-build-isolation", "--no-index",
              str(source), "-w", str(tmp / "wheels")])
  (wheel,) = (tmp / "wheels").glob("capsnet_jax-*.whl")
  target = tmp / "target"
  _run(pip + ["install", "--no-deps", "--no-index", "--target", str(target),
              str(wheel)])
  elsewhere = tmp / "elsewhere"
  elsewhere.mkdir()
  env = subprocess_env(pythonpath=target)
  return target, env, elsewhere


_IMPORT = """
import json, sys
import capsnet_jax
cheap = "jax" not in sys.modules
from capsnet_jax import PrimaryCapsules
from capsnet_jax import ClassCapsules
from capsnet_jax import squash
import jax.numpy as jnp
v = squash(jnp.full((1, 8), 10.0))
print(json.dumps({"file": capsnet_jax.__file__, "cheap": cheap,
                  "norm": float(jnp.linalg.norm(v)),
                  "layers": [PrimaryCapsules.__name__, ClassCapsules.__name__],
                  "tensorflow": "tensorflow" in sys.modules}))
"""


def test_import_from_elsewhere(installed):
  target, env, elsewhere = installed
  out = json.loads(_run([sys.executable, "-c", _IMPORT], cwd=elsewhere,
                        env=env).stdout.splitlines()[-1])
  assert out["file"].startswith(str(target)), out
  assert out["cheap"] and not out["tensorflow"], out
  assert 0.99 < out["norm"] < 1.0
  assert out["layers"] == ["PrimaryCapsules", "ClassCapsules"]


def test_console_command_and_module_from_elsewhere(installed):
  target, env, elsewhere = installed
  command = str(target / "bin" / "capsnet-jax")
  # absl's --help exits with status 1 (python main.py --help too).
  help_text = _run([command, "--help"], 1, cwd=elsewhere, env=env).stdout
  for flag in ("--config", "--mode", "--workdir", "--images", "--out", "--invert"):
    assert flag in help_text, flag
  assert "predict" in help_text
  # configs/mnist.py does not exist here: the bundled config is used.
  assert not (elsewhere / "configs").exists()
  for args in ([sys.executable, "-m", "capsnet_jax.cli", "--config=configs/mnist.py"],
               [command, "--config=mnist"]):
    result = _run(args + ["--mode=summary", "--config.model=tiny"], cwd=elsewhere,
                  env=env)
    counts = json.loads(result.stdout.splitlines()[-1])
    # The tiny model's 234,896 (derived in test_train.test_results_json).
    assert counts["total_params"] == 234_896 and counts["dataset"] == "mnist"
  assert not os.listdir(elsewhere)
