"""The package's layout: imports point one way, without cycles, counting
imports inside functions (read from the source, nothing is imported)."""

import ast
import pathlib

from conftest import ROOT

PACKAGE = ROOT / "capsnet_jax"
# Lower layers never import higher ones (docs/development.md).
LAYERS = (
    ("capsnet_jax.errors", "capsnet_jax.hostmem", "capsnet_jax.processes"),
    ("capsnet_jax.model",),
    ("capsnet_jax.data",),
    ("capsnet_jax.workdir",),
    ("capsnet_jax.recipes", "capsnet_jax.validation", "capsnet_jax.experiment"),
    ("capsnet_jax.training",),
    ("capsnet_jax.inference",),
    ("capsnet_jax.analysis",),
    ("capsnet_jax.cli", "capsnet_jax.__main__"),
)


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in PACKAGE.rglob("*.py"):
    parts = path.relative_to(ROOT).with_suffix("").parts
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    out[name] = path
  return out


def _imports(name: str, path: pathlib.Path, modules) -> set[str]:
  """The package's modules that ``name`` imports anywhere in its source."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name in modules}
    elif isinstance(node, ast.ImportFrom) and node.module:
      base = node.module
      if node.level:  # relative
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        base = ".".join(package.split(".")[:len(package.split(".")) -
                                            node.level + 1] + [node.module])
      for a in node.names:
        full = f"{base}.{a.name}"
        found.add(full if full in modules else base)
  return {m for m in found if m in modules and m not in (name, "capsnet_jax")}


def _layer(name: str) -> int:
  for rank, prefixes in enumerate(LAYERS):
    if any(name == p or name.startswith(p + ".") for p in prefixes):
      return rank
  raise AssertionError(f"{name} is in no layer of LAYERS")


GRAPH = {name: _imports(name, path, _modules())
         for name, path in _modules().items()}


def test_at_least_four_subpackages():
  subpackages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
  assert {"model", "data", "training", "workdir", "inference",
          "analysis"} <= subpackages


def test_no_import_cycles():
  state, cycles = {}, []

  def visit(v, path):
    state[v] = 1
    for w in sorted(GRAPH[v]):
      if state.get(w) == 1:
        cycles.append(path[path.index(w):] + [w])
      elif w not in state:
        visit(w, path + [w])
    state[v] = 2

  for v in sorted(GRAPH):
    if v not in state:
      visit(v, [v])
  assert not cycles, cycles


def test_imports_point_down_the_layers():
  wrong = [(m, d) for m, deps in GRAPH.items() if m != "capsnet_jax"
           for d in deps if _layer(d) > _layer(m)]
  assert not wrong, wrong


def test_the_model_imports_nothing_else_and_inference_not_the_loop():
  for m, deps in GRAPH.items():
    if m.startswith("capsnet_jax.model"):
      assert all(d.startswith("capsnet_jax.model") for d in deps), (m, deps)
    if m.startswith("capsnet_jax.inference"):
      assert not deps & {"capsnet_jax.training.loop",
                         "capsnet_jax.training.steps"}, (m, deps)


def test_the_checker_sees_imports_inside_functions():
  assert "capsnet_jax.analysis.summary" in GRAPH["capsnet_jax.cli"]
