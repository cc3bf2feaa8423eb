"""The import rules of `docs/architecture.md`, enforced on every import (function-level too).

Each folder of `keras_unc/` imports only itself and the folders listed for it below; nothing
imports `cli/` but the entry points; the module import graph has no cycles.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "keras_unc"

# unit -> units it may import (besides itself). Units are the folders of keras_unc/ and the
# root modules; `api` is the package's own `__init__` (`import keras_unc`).
_LOW = ("config", "metrics", "layers", "runtime")
_TRAINING = (
  "config",
  "runtime",
  "reporting",
  "data",
  "layers",
  "backbones",
  "methods",
  "evaluators",
  "posthoc",
  "metrics",
)
ALLOWED = {
  **{unit: () for unit in _LOW},
  # Only for `runtime.files` (atomic writes): one implementation of temp-then-rename.
  "data": ("runtime",),
  "reporting": ("runtime",),
  "backbones": ("layers",),
  "methods": ("layers", "backbones"),
  "evaluators": ("data", "metrics", "reporting", "runtime"),
  "posthoc": ("metrics", "layers", "runtime"),
  "training": _TRAINING,
  "transfer": ("training", *_TRAINING),
  "active_learning": ("training", *_TRAINING),
}
ENTRY_POINTS = ("cli", "api", "__main__", "main")  # May import anything.


def unit_of(module):
  """`keras_unc.methods.url.losses` -> "methods"; `keras_unc` -> "api"."""
  parts = module.split(".")
  return "api" if len(parts) == 1 else parts[1]


def module_name(path):
  rel = path.relative_to(PACKAGE.parent).with_suffix("")
  parts = list(rel.parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def _resolve(name):
  """The module a dotted name refers to: itself if it is a module, else its parent."""
  parts = name.split(".")
  while parts:
    base = PACKAGE.parent.joinpath(*parts)
    if base.with_suffix(".py").exists() or (base / "__init__.py").exists():
      return ".".join(parts)
    parts.pop()
  return name


def imports_of(source, module, is_package=False):
  """Every keras_unc module `source` imports (any nesting level), resolved to modules."""
  found = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      found.update(_resolve(a.name) for a in node.names if a.name.split(".")[0] == "keras_unc")
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # Relative import: resolve against this module's package.
        anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
        base = ".".join(anchor + ([base] if base else []))
      if base.split(".")[0] != "keras_unc":
        continue
      for alias in node.names:
        found.add(_resolve(f"{base}.{alias.name}"))
  return found


def graph():
  edges = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    module = module_name(path)
    edges[module] = imports_of(path.read_text(), module, path.name == "__init__.py")
  return edges


# What data/ and reporting/ may use of runtime/: the atomic writes, nothing else.
ONLY_MODULES = {
  ("data", "runtime"): {"keras_unc.runtime", "keras_unc.runtime.files"},
  ("reporting", "runtime"): {"keras_unc.runtime", "keras_unc.runtime.files"},
}


def violations(edges):
  """`importer -> imported` pairs that break the folder rules."""
  bad = []
  for module, targets in edges.items():
    unit = unit_of(module)
    if unit in ENTRY_POINTS:
      continue
    for target in sorted(targets):
      other = unit_of(target)
      only = ONLY_MODULES.get((unit, other))
      if only is not None and target not in only:
        bad.append(
          f"{module} -> {target} ({unit} may import only {', '.join(sorted(only))} of {other})"
        )
      elif other != unit and other not in ALLOWED.get(unit, ()):
        bad.append(
          f"{module} -> {target} ({unit} may import only "
          f"{', '.join(ALLOWED.get(unit, ())) or 'itself'})"
        )
  return bad


def cycles(edges):
  """Import cycles among modules (a package's `__init__` counts as its module)."""
  found, state = [], {}

  def visit(node, stack):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(edges.get(node, ())):
      if nxt == node:
        continue
      if state.get(nxt) == "open":
        found.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
      elif nxt not in state:
        visit(nxt, stack)
    stack.pop()
    state[node] = "done"

  for node in sorted(edges):
    if node not in state:
      visit(node, [])
  return found


def test_every_folder_imports_only_the_folders_below_it():
  edges = graph()
  assert not violations(edges), "\n".join(violations(edges))


def test_no_import_cycles():
  found = cycles(graph())
  assert not found, "\n".join(found)


def test_every_unit_is_known():
  # A new folder must be given its place in the rules (and in docs/architecture.md).
  units = {unit_of(m) for m in graph()}
  assert units <= set(ALLOWED) | set(ENTRY_POINTS), units - set(ALLOWED) - set(ENTRY_POINTS)


def test_the_package_root_stays_small():
  plain = sorted(p.name for p in PACKAGE.glob("*.py"))
  assert len(plain) <= 6, plain


def test_config_imports_nothing_of_the_package():
  assert not graph()["keras_unc.config"]


@pytest.mark.parametrize(
  "module, source, expect",
  [
    ("keras_unc.metrics.ood", "from keras_unc.training import trainer", "metrics"),
    ("keras_unc.layers.x", "def f():\n  from keras_unc.methods import heads", "layers"),
    ("keras_unc.evaluators.base", "import keras_unc.training.callbacks", "evaluators"),
    ("keras_unc.methods.sngp", "from keras_unc.cli import registry", "methods"),
    ("keras_unc.data.sources", "from . import cached\nfrom ..training import trainer", "data"),
    ("keras_unc.reporting.plots", "from keras_unc.runtime import checkpoints", "reporting"),
  ],
)
def test_an_upward_import_is_reported(module, source, expect):
  bad = violations({module: imports_of(source, module)})
  assert bad and all(f"({expect} may import" in b for b in bad), bad


def test_allowed_imports_and_a_cycle_are_told_apart():
  assert not violations(
    {
      "keras_unc.training.trainer": imports_of(
        "from keras_unc.methods import get_method\nfrom keras_unc.runtime import files",
        "keras_unc.training.trainer",
      )
    }
  )
  assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a -> b -> c -> a"]
  assert not cycles({"a": {"b"}, "b": {"c"}, "c": set()})
