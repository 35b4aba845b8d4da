"""lrjax's import graphs have no cycle: neither between its parts (in particular
`latent/` and `rollout/` do not import each other) nor between any two of its modules.
Generic code does not import `lrjax.methods` and names no method's parts.

Read from the source with `ast` (no module is imported): every `import` and
`from ... import`, at module level or inside a function, counts. In the package
graph, an import of a module of `lrjax.<part>` by a module of another part adds
the arrow part -> part; a part is a subpackage (`lrjax.latent`) or a top-level
module (`lrjax.metrics`). In the module graph, every import adds the arrow
module -> imported module (`from pkg import name` imports `pkg.name` where that is
a module, else the package `pkg`, i.e. its `__init__`).
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


def _from_base(node: ast.ImportFrom, module: str, is_package: bool) -> str:
  """The dotted module a `from ... import` reads from (relative forms resolved
  against the importing module's package)."""
  base = node.module or ""
  if node.level:
    package = module.split(".") if is_package else module.split(".")[:-1]
    package = package[:len(package) - (node.level - 1)]
    base = ".".join(package + ([base] if base else []))
  return base


def _imported(tree: ast.AST, module: str, is_package: bool) -> Iterable[str]:
  """Dotted names of the modules (or package members) a source file imports."""
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = _from_base(node, module, is_package)
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


def module_graph(package_dir: pathlib.Path = LRJAX) -> dict[str, set[str]]:
  """module -> the other lrjax modules it imports (a package stands for its __init__)."""
  root = package_dir.parent
  sources = {}
  for path in sorted(package_dir.rglob("*.py")):
    module, is_package = _module_name(path, root)
    sources[module] = (path, is_package)

  def known(name: str) -> str | None:  # the module itself, or the package holding the name
    while name and name not in sources:
      name = name.rpartition(".")[0]
    return name or None

  graph: dict[str, set[str]] = {}
  for module, (path, is_package) in sources.items():
    tree = ast.parse(path.read_text(), str(path))
    targets = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom):
        base = _from_base(node, module, is_package)
        targets.update(known(f"{base}.{a.name}") for a in node.names)
      elif isinstance(node, ast.Import):
        targets.update(known(a.name) for a in node.names)
    graph[module] = {t for t in targets if t is not None and t != module}
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


def test_module_graph_has_no_cycle():
  """No two modules import each other, even lazily inside a function (a circle that
  only works because one side imports late)."""
  graph = module_graph()
  assert "lrjax.phases.rl" in graph and "lrjax.phases.rl_context" in graph["lrjax.phases.rl"]
  cycle = find_cycle(graph)
  assert cycle is None, "import cycle between lrjax's modules: " + " -> ".join(cycle)


def test_the_module_check_sees_a_cycle_inside_one_part(tmp_path):
  """Two modules of one subpackage that import each other (one of them lazily, one
  relatively, one through `from pkg import module`) make a cycle."""
  pkg = tmp_path / "lrjax"
  (pkg / "a").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "a" / "__init__.py").write_text("X = 1\n")
  (pkg / "a" / "m.py").write_text("from . import n\n")
  (pkg / "a" / "n.py").write_text("def f():\n  from lrjax.a import m\n  from lrjax.a import X\n")
  graph = module_graph(pkg)
  assert graph == {"lrjax": set(), "lrjax.a": set(), "lrjax.a.m": {"lrjax.a.n"},
                   "lrjax.a.n": {"lrjax.a.m", "lrjax.a"}}
  assert find_cycle(graph) == ["lrjax.a.m", "lrjax.a.n", "lrjax.a.m"]
  assert package_graph(pkg)["lrjax.a"] == set()  # invisible to the package graph


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


# --- generic code names no method ---------------------------------------------------

# the parts every method builds on; each paper's parts live in lrjax/methods/
GENERIC = ("lrjax.rl", "lrjax.rollout", "lrjax.phases", "lrjax.model", "lrjax.data",
           "lrjax.latent", "lrjax.validate")


def _generic_sources(package_dir: pathlib.Path = LRJAX) -> dict[str, pathlib.Path]:
  root = package_dir.parent
  out = {}
  for path in sorted(package_dir.rglob("*.py")):
    module, _ = _module_name(path, root)
    if any(module == g or module.startswith(g + ".") for g in GENERIC):
      out[module] = path
  return out


def test_generic_modules_do_not_import_the_methods():
  """Only entry points (lrjax.main, lrjax.compare, configs, tests) import lrjax.methods;
  generic code reads the registries the methods fill."""
  graph = module_graph()
  sources = _generic_sources()
  assert "lrjax.phases.rl" in sources and "lrjax.latent.base" in sources
  bad = {m: sorted(t for t in graph[m] if t == "lrjax.methods" or t.startswith("lrjax.methods."))
         for m in sources}
  bad = {m: t for m, t in bad.items() if t}
  assert not bad, f"generic modules import lrjax.methods: {bad}"


def method_names() -> dict[str, str]:
  """{name: 'method/part'} of every name a registered method owns (its rules, objectives,
  policy and auxiliary losses, SFT methods, phases and heads), read from the records."""
  import lrjax.methods  # noqa: F401,PLC0415  (registers them)
  from lrjax.method import METHODS  # noqa: PLC0415
  owned = {}
  for m in METHODS.names():
    for part, names in METHODS.get(m).names().items():
      owned.update({n: f"{m}/{part}" for n in names})
  return owned


def string_literals(path: pathlib.Path) -> Iterable[tuple[int, str]]:
  """(line, value) of every string constant in the source (docstrings included)."""
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
      yield node.lineno, node.value


def test_generic_modules_name_no_method():
  """No generic module holds a method's registered name as a string literal: what a
  method needs from generic code, it declares in its `Method` record."""
  owned = method_names()
  assert {"hybrid", "gumbel_soft", "topk_gumbel", "hidden", "dlr", "latent_value", "value_bce",
          "gspo_clip", "dlr_chain_kl", "coconut", "value", "latent_sft"} <= set(owned)
  assert "token" not in owned  # the generic rule belongs to no method
  from lrjax.data.prompts import PROMPTS  # noqa: PLC0415
  # prompt formats stay data: lrjax.data.prompts registers each paper's prompt by name
  prompts = LRJAX / "data" / "prompts.py"
  found = [f"{path.relative_to(LRJAX.parent)}:{line}: {value!r} ({owned[value]})"
           for module, path in _generic_sources().items()
           for line, value in string_literals(path) if value in owned
           and not (path == prompts and value in PROMPTS)]
  assert not found, "generic modules name a method's parts:\n" + "\n".join(found)


def test_the_name_check_sees_a_literal(tmp_path):
  (tmp_path / "m.py").write_text('"""doc naming hybrid"""\nX = {"hybrid": 1}\nY = f"a{X}"\n')
  assert [v for _, v in string_literals(tmp_path / "m.py") if v == "hybrid"] == ["hybrid"]
