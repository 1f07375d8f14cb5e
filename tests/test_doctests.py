"""The docstring examples of the Python API run as doctests (issue 40): the
package synopsis (capsnet_jax/__init__.py) and capsnet_jax.inference.trained's
(the module's synopsis, load, predict, decode), on the bundled weights and
the real MNIST test images (../shared), from the checkout's root as a reader
runs them. One test per docstring; run them alone with

  .venv/bin/python -m pytest -q tests/test_doctests.py
"""

import doctest
import importlib

import pytest

from conftest import ROOT, shared_mnist

MODULES = ("capsnet_jax", "capsnet_jax.inference.trained")
OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
# Every docstring with examples: one that loses them fails here.
EXPECTED = (
    "capsnet_jax",
    "capsnet_jax.inference.trained",
    "capsnet_jax.inference.trained.TrainedModel.decode",
    "capsnet_jax.inference.trained.TrainedModel.predict",
    "capsnet_jax.inference.trained.load",
)


def _doctests() -> dict[str, doctest.DocTest]:
  """The docstrings of MODULES that hold examples, by qualified name."""
  finder = doctest.DocTestFinder()
  return {test.name: test for name in MODULES
          for test in finder.find(importlib.import_module(name), name)
          if test.examples}


def test_every_docstring_with_examples_is_run():
  assert tuple(sorted(_doctests())) == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_docstring_examples(name, monkeypatch):
  shared_mnist()  # the examples read ../shared/data/mnist
  monkeypatch.chdir(ROOT)  # and docs/examples, relative to the checkout
  test = _doctests()[name]
  report = []
  runner = doctest.DocTestRunner(optionflags=OPTIONS)
  result = runner.run(test, out=report.append)
  assert result.attempted == len(test.examples) > 0
  assert result.failed == 0, "".join(report)
