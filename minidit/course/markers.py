"""The exercise markers: a comment line `# exercise: <paper section>` directly above a `def` in the
library makes that function an exercise (minidit.course.exercises removes its body for students;
minidit.course.autograder grades it on its case in minidit.course.cases). This module finds the
markers, and the repository's test files that import each marked function; both tools read it.
"""
import ast
import re
from dataclasses import dataclass
from pathlib import Path

MARKER = re.compile(r"^\s*#\s*exercise:\s*(?P<section>\S.*?)\s*$")
# the folder that holds the minidit package: a source checkout, or site-packages once installed
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Exercise:
    """One marked function: its name (the qualname), file, paper section and the tests using it."""
    name: str
    file: str  # relative to the root, e.g. "minidit/layers/linear.py"
    line: int  # line of the `def`
    section: str
    tests: tuple = ()  # the test files (relative to the root) that grade it

    @property
    def module(self):
        return self.file[:-3].replace("/", ".")


def _functions(tree):
    """(qualname, node) of every function at module level or inside a (nested) class."""
    todo = [("", n) for n in tree.body]
    while todo:
        prefix, node = todo.pop(0)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node
        elif isinstance(node, ast.ClassDef):
            todo += [(prefix + node.name + ".", n) for n in node.body]


def find_function(tree, qualname):
    for name, node in _functions(tree):
        if name == qualname:
            return node
    raise KeyError(f"no function {qualname!r}")


def _first_line(node):
    """The line a marker must sit directly above: the first decorator, else the `def`."""
    return min([node.lineno] + [d.lineno for d in node.decorator_list])


def _markers_in(path, rel):
    """Exercises marked in one file; a marker that is not directly above a def is an error."""
    text = path.read_text()
    if "exercise:" not in text:
        return []
    lines = text.splitlines()
    found = {i + 1: m["section"] for i, line in enumerate(lines) if (m := MARKER.match(line))}
    out = []
    for qualname, node in _functions(ast.parse(text, str(path))):
        above = _first_line(node) - 1
        if above in found:
            out.append(Exercise(qualname, rel, node.lineno, found.pop(above)))
    if found:
        line = min(found)
        raise ValueError(f"{rel}:{line}: exercise marker is not directly above a def: {lines[line - 1].strip()!r}")
    return out


def _test_files(root, exercises):
    """For each exercise, the test files that grade it: the module's own test file
    (tests/test_linear.py for layers/linear.py) when it imports the function by name
    (`from minidit.x import f`), else every test file that does (tests/test_diffusion.py)."""
    imports = {}  # test file -> set of (module, name)
    for path in sorted((root / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text(), str(path))
        imports[f"tests/{path.name}"] = {(n.module, a.name) for n in ast.walk(tree)
                                         if isinstance(n, ast.ImportFrom) and n.module
                                         for a in n.names}
    result = []
    for ex in exercises:
        files = [f for f, names in imports.items()
                 if any(name == ex.name and ex.module.startswith(mod) for mod, name in names)]
        own = f"tests/test_{Path(ex.file).stem}.py"
        files = [own] if own in files else files
        result.append(Exercise(ex.name, ex.file, ex.line, ex.section, tuple(files)))
    return result


def find_exercises(root=ROOT):
    """Every marked function under root/minidit (layers/ first, then by file and line), with the
    tests that import it."""
    root = Path(root)
    exercises = []
    for path in sorted((root / "minidit").rglob("*.py"), key=lambda p: ("layers" not in p.parts, p)):
        if "__pycache__" not in path.parts:
            exercises += _markers_in(path, path.relative_to(root).as_posix())
    seen = {}
    for ex in exercises:
        if ex.name in seen:
            raise ValueError(f"two exercises are called {ex.name!r}: {seen[ex.name]} and {ex.file}")
        seen[ex.name] = ex.file
    return _test_files(root, exercises)


def select(exercises, names):
    """The exercises named in `names` (function names, or file stems such as "linear"); None: all."""
    if names is None:
        return list(exercises)
    chosen = []
    for token in names:
        hits = [e for e in exercises if token in (e.name, Path(e.file).stem)]
        if not hits:
            raise ValueError(f"no exercise {token!r}; the exercises are: {', '.join(e.name for e in exercises)}")
        chosen += [e for e in hits if e not in chosen]
    return [e for e in exercises if e in chosen]


def is_stub(node):
    """True when a function's body (after the docstring) is only `raise NotImplementedError(...)`."""
    rest = node.body[1:] if ast.get_docstring(node) is not None else node.body
    if len(rest) != 1 or not isinstance(rest[0], ast.Raise) or rest[0].exc is None:
        return False
    exc = rest[0].exc.func if isinstance(rest[0].exc, ast.Call) else rest[0].exc
    return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"
