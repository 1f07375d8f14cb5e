"""docs/tutorial.ipynb: committed with its outputs, and it runs from top to
bottom (nbclient, the ipykernel of this interpreter)."""

import re

import conftest
from conftest import ROOT

NOTEBOOK = ROOT / "docs" / "tutorial.ipynb"
# The smoke configuration's test accuracy after its 30 steps: 72.48%
# measured (2-core Intel Xeon, 2026-12-03).
SMOKE_ACCURACY_FLOOR = 0.69


def _read():
  nbformat = conftest.require("nbformat")
  return nbformat.read(str(NOTEBOOK), as_version=4)


def _text(cell) -> str:
  return "".join(o.get("text", "") for o in cell.get("outputs", [])
                 if o.get("output_type") == "stream")


def test_committed_with_outputs():
  """It reads on a code-hosting page: every code cell was run, in order,
  none failed, and the figures are there."""
  notebook = _read()
  code = [c for c in notebook.cells if c.cell_type == "code"]
  assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
  outputs = [o for c in code for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  figures = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(figures) >= 5


def test_runs(monkeypatch):
  mnist = conftest.shared_mnist()
  nbclient = conftest.require("nbclient")
  conftest.require("ipykernel")
  # The kernel inherits the suite's JAX set-up (CPU, compilation cache,
  # XLA's optimisation level 0).
  for key, value in conftest.subprocess_env().items():
    monkeypatch.setenv(key, value)
  monkeypatch.setenv("MNIST_IDX_DIR", str(mnist))
  notebook = _read()
  client = nbclient.NotebookClient(
      notebook, timeout=600, kernel_name="python3",
      resources={"metadata": {"path": str(NOTEBOOK.parent)}})
  client.execute()  # CellExecutionError names a failing cell
  printed = "\n".join(_text(c) for c in notebook.cells if c.cell_type == "code")
  # The bundled model reads each example file as its label.
  found = re.findall(r"mnist_test\d+_label(\d)\.png\s+-> (\d)", printed)
  assert len(found) == 3 and all(a == b for a, b in found), printed
  accuracy = float(re.search(r"step 30: test accuracy ([0-9.]+)",
                             printed).group(1))
  assert accuracy >= SMOKE_ACCURACY_FLOOR, printed
  assert "smoke model predicts" in printed

