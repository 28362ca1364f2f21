"""The package layout explains the architecture (issues 13 and 26; docs/design.md, "Layout"): no
import cycle between minidit's modules (imports inside functions included), no package that
imports a package that imports it back, no comparison with a block design's name outside
minidit/blocks.py, modules short enough to read in one sitting, and every package listed for
installation."""
import ast
import re
import tomllib
from pathlib import Path

import pytest

from minidit.blocks import BLOCK_DESIGNS
from conftest import summary

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "minidit"
MAX_LINES = 320  # "about 300" (docs/design.md, "Layout"); a longer module says why in its docstring


def _module_name(path):
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def _imports(name, path):
    """The minidit modules `name` imports, at module level or inside functions."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "minidit")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                mod = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "minidit":
                continue
            for a in node.names:  # `from . import losses` imports a module, not a name
                found.add(f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod)
    return {m for m in found if m in MODULES and m != name}


def test_no_import_cycle():
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == "open":
                cycle = stack[stack.index(m):] + [m]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = "done"

    for n in sorted(graph):
        if n not in state:
            visit(n)
    assert graph["minidit.model"] >= {"minidit.blocks", "minidit.layers"}  # the graph is not empty


def _unit(module):
    """The unit a package-level check works on: a subpackage of minidit (minidit.training), or a
    top-level module (minidit.cli) or the root package itself."""
    parts = module.split(".")
    if len(parts) >= 2 and (PACKAGE / parts[1] / "__init__.py").exists():
        return ".".join(parts[:2])
    return module


def _package_graph(modules):
    graph = {}
    for name, path in modules.items():
        for m in _imports(name, path):
            if _unit(name) != _unit(m):
                graph.setdefault(_unit(name), set()).add(_unit(m))
    return graph


def _package_cycle(graph):
    """A list [a, b, ..., a] of units that import each other round, transitively, or None."""
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == "open":
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = "done"
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_package_imports_a_package_that_imports_it_back():
    graph = _package_graph(MODULES)
    cycle = _package_cycle(graph)
    assert cycle is None, "package cycle: " + " -> ".join(cycle)
    # the split of issue 26: the plumbing imports neither the autoencoder nor the commands built on it
    assert not graph["minidit.training"] & {"minidit.latent", "minidit.commands"}, graph["minidit.training"]
    assert graph["minidit.commands"] >= {"minidit.training", "minidit.latent"}  # the graph is not empty
    summary("layout", f"packages and top-level modules: {len(set(graph) | set().union(*graph.values()))}, "
          f"package-level import edges: {sum(map(len, graph.values()))}, cycles: 0")


def test_the_package_check_finds_a_cycle_through_a_third_package():
    graph = {"minidit.a": {"minidit.b"}, "minidit.b": {"minidit.c", "minidit.cli"}, "minidit.c": {"minidit.a"}}
    assert _package_cycle(graph) == ["minidit.a", "minidit.b", "minidit.c", "minidit.a"]
    graph["minidit.c"] = {"minidit.cli"}
    assert _package_cycle(graph) is None


def _design_name_comparisons(path):
    """(line, source) of every comparison with a block design's name as a literal string."""
    names = set(BLOCK_DESIGNS)
    tree = ast.parse(path.read_text())
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            literals = [c for o in operands for c in ([o] if isinstance(o, ast.Constant) else
                                                       getattr(o, "elts", []))]
            if any(isinstance(c, ast.Constant) and c.value in names for c in literals):
                hits.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.Match):
            hits += [(c.pattern.lineno, ast.unparse(c.pattern)) for c in node.cases
                     if any(isinstance(v, ast.Constant) and v.value in names for v in ast.walk(c.pattern))]
    return hits


def test_no_design_name_comparison_outside_blocks():
    files = [p for p in MODULES.values() if p.name != "blocks.py" or p.parent != PACKAGE]
    files += sorted((ROOT / "tests").glob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))
    found = {str(p.relative_to(ROOT)): _design_name_comparisons(p) for p in files}
    found = {k: v for k, v in found.items() if v}
    assert not found, f"compare the design's record (minidit.blocks), not its name: {found}"
    assert _design_name_comparisons(PACKAGE / "blocks.py") == []  # blocks.py reads its own records too


def test_the_check_finds_a_design_name_comparison(tmp_path):
    p = tmp_path / "m.py"
    p.write_text('if cfg.block == "adaLN-Zero":\n    pass\nok = design in ("adaLN", "in-context")\n'
                 'fine = cfg.block == name\n')
    assert [line for line, _ in _design_name_comparisons(p)] == [1, 3]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_are_short_or_say_why(name):
    path = MODULES[name]
    lines = len(path.read_text().splitlines())
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert doc, f"{name} has no docstring saying which part of the paper it implements"
    assert lines <= MAX_LINES or re.search(r"\blines\b", doc), \
        f"{name} has {lines} lines: split it, or say in its docstring why it is one module"


def test_every_package_is_installed():
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {_module_name(p.parent / "__init__.py") for p in PACKAGE.rglob("__init__.py")}
    assert set(conf["packages"]) == packages | {"minidit.shipped"}
    assert conf["package-dir"]["minidit.shipped"] == "data"
    assert list((ROOT / "data").glob("*.npz")), "data/ ships no model"
