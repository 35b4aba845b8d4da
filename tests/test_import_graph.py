"""The package-level import graph of lrjax has no cycle; in particular `latent/` and
`rollout/` do not import each other.

Read from the source with `ast` (no module is imported): every `import` and
`from ... import`, at module level or inside a function, of a module of
`lrjax.<part>` by a module of another part adds the arrow part -> part. A part
is a subpackage (`lrjax.latent`) or a top-level module (`lrjax.metrics`).
"""
from __future__ import annotations

import ast
import pathlib
from collections.abc import Iterable

LRJAX = pathlib.Path(__file__).resolve().parent.parent / "lrjax"


def _module_name(path: pathlib.Path, root: pathlib.Path) -> tuple[str, bool]:
  """('lrjax.a.b', is_package) of a source file under `root` (the folder holding lrjax/)."""
  parts = path.relative_to(root).with_suffix("").parts
  if parts[-1] == "__init__":
    return ".".join(parts[:-1]), True
  return ".".join(parts), False


def _imported(tree: ast.AST, module: str, is_package: bool) -> Iterable[str]:
  """Dotted names of the modules (or package members) a source file imports."""
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: resolve against the importing module's package
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[:len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
      # `from lrjax import metrics` imports the part lrjax.metrics
      yield from ([f"{base}.{a.name}" for a in node.names] if base == "lrjax" else [base])


def _part(name: str) -> str | None:
  """'lrjax.latent.base' -> 'lrjax.latent'; None outside lrjax or for lrjax itself."""
  parts = name.split(".")
  return ".".join(parts[:2]) if parts[0] == "lrjax" and len(parts) > 1 else None


def package_graph(package_dir: pathlib.Path = LRJAX) -> dict[str, set[str]]:
  """part -> the other parts its modules import."""
  root = package_dir.parent
  graph: dict[str, set[str]] = {}
  for path in sorted(package_dir.rglob("*.py")):
    module, is_package = _module_name(path, root)
    source = _part(module) or module
    targets = graph.setdefault(source, set())
    for name in _imported(ast.parse(path.read_text(), str(path)), module, is_package):
      target = _part(name)
      if target is not None and target != source:
        targets.add(target)
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle of the graph as [a, b, ..., a], or None when it has none."""
  state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
  path: list[str] = []

  def visit(node: str) -> list[str] | None:
    state[node] = 1
    path.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 1:
        return path[path.index(nxt):] + [nxt]
      if nxt not in state and (cycle := visit(nxt)):
        return cycle
    path.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state and (cycle := visit(node)):
      return cycle
  return None


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
  seen, todo = set(), [start]
  while todo:
    node = todo.pop()
    if node == goal:
      return True
    if node not in seen:
      seen.add(node)
      todo.extend(graph.get(node, ()))
  return False


def test_latent_and_rollout_do_not_import_each_other():
  graph = package_graph()
  assert "lrjax.latent" in graph and "lrjax.rollout" in graph
  both = _reaches(graph, "lrjax.latent", "lrjax.rollout") and _reaches(
      graph, "lrjax.rollout", "lrjax.latent")
  assert not both, ("lrjax.latent and lrjax.rollout import each other: "
                    f"latent -> {sorted(graph['lrjax.latent'])}, "
                    f"rollout -> {sorted(graph['lrjax.rollout'])}")


def test_package_graph_has_no_cycle():
  cycle = find_cycle(package_graph())
  assert cycle is None, "import cycle between lrjax's parts: " + " -> ".join(cycle)


def test_the_check_sees_a_cycle(tmp_path):
  """The graph reader finds a cycle made of relative, nested and `from lrjax import` forms."""
  pkg = tmp_path / "lrjax"
  (pkg / "a").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "a" / "__init__.py").write_text("from .m import f\n")
  (pkg / "a" / "m.py").write_text("def f():\n  from lrjax import b\n")
  (pkg / "b.py").write_text("import lrjax.a.m\n")
  graph = package_graph(pkg)
  assert graph == {"lrjax": set(), "lrjax.a": {"lrjax.b"}, "lrjax.b": {"lrjax.a"}}
  assert find_cycle(graph) in (["lrjax.a", "lrjax.b", "lrjax.a"],)
  assert find_cycle({"x": {"y"}, "y": set()}) is None
