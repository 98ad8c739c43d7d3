"""The package's floors: every import goes down (or sideways), never up, and no
two modules import each other, directly or around a loop. Imports inside
functions count too."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Lowest first. A module may import its own floor and the floors below it.
LAYERS = [
    ("mced_jax.runtime",),  # files, writers, checkpoints, mesh, start-up, flags
    ("data_pipelines",),  # corpora, features, prepared data, readers
    ("mced_jax.models",),  # student, teacher, soft-align, plain ops, exports
    ("mced_jax.kernels",),  # the precision policy and the CPU kernels it binds
    ("mced_jax.evaluation",),  # labelled corpora, protocols, metrics, reports, statistics
    ("mced_jax.train",),  # the kit, losses, trainers, the fine-tuning stage
    ("mced_jax.tools", "mced_jax.perf"),  # user tools; performance measurement
    ("mced_jax.main", "mced_jax.stages", "mced_jax.layout"),  # the entry point
]


def modules():
  out = {}
  for pkg in ("mced_jax", "data_pipelines"):
    for d, _, files in os.walk(os.path.join(ROOT, pkg)):
      for f in files:
        if f.endswith(".py"):
          rel = os.path.relpath(os.path.join(d, f), ROOT)[:-3].replace(os.sep, ".")
          out[rel.removesuffix(".__init__")] = os.path.join(d, f)
  return out


def layer(mod: str) -> int:
  for i, prefixes in enumerate(LAYERS):
    if any(mod == p or mod.startswith(p + ".") for p in prefixes):
      return i
  raise AssertionError(f"{mod} is on no floor: add it to LAYERS")


def imports(path: str, known) -> set:
  tree = ast.parse(open(path, encoding="utf-8").read())
  out = set()
  for node in ast.walk(tree):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
    for n in names:
      while n and n not in known:
        n = n.rpartition(".")[0]
      if n:
        out.add(n)
  return out


def test_every_import_goes_down_and_there_are_no_cycles():
  mods = modules()
  graph = {m: imports(p, mods) - {m} for m, p in mods.items()}
  upward = sorted(f"{m} (floor {layer(m)}) imports {t} (floor {layer(t)})"
                  for m, ts in graph.items() if m not in ("mced_jax", "data_pipelines")
                  for t in ts if t not in ("mced_jax", "data_pipelines") and layer(t) > layer(m))
  assert not upward, "\n".join(upward)
  # cycles: depth-first search over module imports
  state, cycles = {}, []

  def visit(m, stack):
    state[m] = "open"
    for t in sorted(graph[m]):
      if state.get(t) == "open":
        cycles.append(stack[stack.index(t):] + [t])
      elif t not in state:
        visit(t, stack + [t])
    state[m] = "done"

  for m in sorted(graph):
    if m not in state:
      visit(m, [m])
  assert not cycles, cycles


def test_the_root_holds_the_entry_point_only():
  root = [f for f in os.listdir(os.path.join(ROOT, "mced_jax"))
          if f.endswith(".py") and f != "__init__.py"]
  assert len(root) <= 8, root
  assert set(root) == {"main.py", "stages.py", "layout.py"}, root


def test_models_never_import_kernels():
  mods = modules()
  for m, p in mods.items():
    if m.startswith("mced_jax.models"):
      bad = [t for t in imports(p, mods) if t.startswith("mced_jax.kernels")]
      assert not bad, f"{m} imports {bad}"
