"""Exercises for a course: a student edition of minidit with chosen function bodies removed.

A comment line `# exercise: <paper section>` directly above a `def` marks that function
(minidit.course.markers). `make` copies the package and its tests from a source checkout and
replaces each marked body by a NotImplementedError naming the section (signature and docstring
stay); `grade` runs the tests as an autograder (minidit.course.autograder); `restore` puts
reference bodies back. The markers are the only list.

    python -m minidit.exercises list
    python -m minidit.exercises make --out DIR [--only NAME,...]
    python -m minidit.exercises grade DIR [-k NAME,...]
    python -m minidit.exercises restore DIR NAME,... | --all
"""
import ast
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from ..cli import CommandParser, run_command
from . import autograder
from .markers import ROOT, find_exercises, find_function, is_stub, select

COPIED = ("minidit", "tests", "notebooks", "benchmarks", "data", "pyproject.toml", "README.md",
          "requirements.txt", "LICENSE")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".pytest_cache")


# Editing one function's body --------------------------------------------------------------

def _body_span(node, qualname):
    """(first, last, indent): the 1-based lines after the docstring up to the end of the function."""
    body = node.body
    has_doc = isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
        and isinstance(body[0].value.value, str)
    if body[0].lineno == node.lineno:
        raise ValueError(f"{qualname}: the body must start on its own line to be made an exercise")
    first = body[0].end_lineno + 1 if has_doc else body[0].lineno
    return first, node.end_lineno, " " * body[0].col_offset


def get_body(path, qualname):
    """The source lines of a function's body after its docstring (indentation kept)."""
    lines = Path(path).read_text().splitlines(keepends=True)
    first, last, _ = _body_span(find_function(ast.parse("".join(lines)), qualname), qualname)
    return lines[first - 1:last]


def replace_body(path, qualname, body):
    """Replace a function's body after its docstring by `body`: source text at any indent, or lines.

    Signature, docstring, decorators, marker and everything outside the function are unchanged.
    """
    path = Path(path)
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    first, last, indent = _body_span(find_function(ast.parse(text), qualname), qualname)
    # a list of lines (as get_body returns) goes in verbatim; text is re-indented to the body's
    new = "".join(body) if isinstance(body, list) else textwrap.indent(textwrap.dedent(body).lstrip("\n"), indent)
    if not new.endswith("\n"):
        new += "\n"
    path.write_text("".join(lines[:first - 1]) + new + "".join(lines[last:]))


def _literal(s):
    return f'"{s}"' if '"' not in s and "\\" not in s else repr(s)


def stub_body(ex):
    """The body a student finds in place of the reference: a NotImplementedError naming the section."""
    where = f"see the docstring and the tests in {ex.tests[0]}" if ex.tests else "see the docstring"
    return (f"raise NotImplementedError(\n"
            f"    {_literal(f'exercise: implement {ex.name} ')}\n"
            f"    {_literal(f'(paper section {ex.section}); ')}\n"
            f"    {_literal(where)})\n")


# The three commands -----------------------------------------------------------------------

def _warn_if_dirty(root):
    try:
        r = subprocess.run(["git", "status", "--porcelain", "--", *COPIED], cwd=root,
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return
    if r.returncode == 0 and r.stdout.strip():
        print(f"warning: {root} has uncommitted changes; they will be in the student edition:\n"
              + textwrap.indent(r.stdout.rstrip(), "  "), file=sys.stderr)


def check_checkout(root):
    """`root` as a Path if it is a source checkout of minidit (package, tests, pyproject.toml)."""
    root = Path(root)
    if not ((root / "minidit").is_dir() and (root / "tests").is_dir() and (root / "pyproject.toml").is_file()):
        raise ValueError(f"{root} is not a source checkout of minidit (it needs minidit/, tests/ and "
                         "pyproject.toml; an installed package has no tests): clone the repository and "
                         "run the command there, or pass --src CHECKOUT")
    return root


def make(out, only=None, root=ROOT, force=False):
    """Write a student edition to `out`: the package, tests and pyproject.toml, with the bodies of
    the chosen exercises (default: all; [] gives a full solution edition) replaced by stubs.
    Returns the exercises removed."""
    root, out = check_checkout(root), Path(out)
    exercises = find_exercises(root)
    chosen = select(exercises, only)
    for ex in exercises:
        if is_stub(find_function(ast.parse((root / ex.file).read_text()), ex.name)):
            raise ValueError(f"{root} is itself a student edition ({ex.name} has no reference body); "
                             "make the edition from the teacher's checkout")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder")
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} is not empty (use --force to overwrite its copy of minidit)")
    _warn_if_dirty(root)
    out.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        src, dst = root / name, out / name
        if src.is_dir():
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst, ignore=_IGNORE)
        elif src.exists():
            shutil.copy2(src, dst)
    for ex in chosen:
        replace_body(out / ex.file, ex.name, stub_body(ex))
    (out / "EXERCISES.md").write_text(_student_sheet(chosen))
    return chosen


def restore(edition, names=None, root=ROOT):
    """Copy the reference bodies of the named exercises (None: all) from `root` into `edition`."""
    edition, root = Path(edition), Path(root)
    if edition.resolve() == root.resolve():
        raise ValueError(f"{edition} is the checkout the reference bodies come from; give the "
                         "teacher's checkout with --src")
    chosen = select(find_exercises(edition), names)
    for ex in chosen:
        ref = root / ex.file
        if is_stub(find_function(ast.parse(ref.read_text()), ex.name)):
            raise ValueError(f"{ref} has no reference body for {ex.name}: restore from the teacher's checkout")
        replace_body(edition / ex.file, ex.name, get_body(ref, ex.name))
    return chosen


def grade(edition, names=None, verbose=False, stream=None):
    """Run the autograder on an edition; see minidit.course.autograder.grade."""
    return autograder.grade(edition, names, verbose=verbose, stream=stream)


def _student_sheet(chosen):
    rows = "\n".join(f"| `{e.name}` | `{e.file}` | {e.section} | {', '.join(f'`{t}`' for t in e.tests)} |"
                     for e in chosen)
    return ("# Exercises\n\nWrite the body of each function below (its docstring says what it takes "
            "and returns), then run the autograder from this folder:\n\n"
            "```bash\npython -m minidit.exercises grade .                      # every exercise\n"
            "python -m minidit.exercises grade . -k linear_backward   # one exercise (or a file: -k linear)\n"
            "```\n\n| function | file | paper section | tests |\n|---|---|---|---|\n" + rows + "\n")


def format_list(exercises):
    w = max([8] + [len(e.name) for e in exercises])
    f = max([4] + [len(f"{e.file}:{e.line}") for e in exercises])
    s = max([13] + [len(e.section) for e in exercises])
    lines = [f"{'function':<{w}}  {'file':<{f}}  {'paper section':<{s}}  tests"]
    lines += [f"{e.name:<{w}}  {f'{e.file}:{e.line}':<{f}}  {e.section:<{s}}  {', '.join(e.tests) or '-'}"
              for e in exercises]
    return "\n".join(lines) + f"\n{len(exercises)} exercises"


def _names(s):
    return None if s is None else [n.strip() for n in s.split(",") if n.strip()]


def main(argv=None):
    ap = CommandParser(prog="python -m minidit.exercises", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="print the marked exercises (function, file, section, tests)")
    mk = sub.add_parser("make", help="write a student edition")
    mk.add_argument("--out", help="folder to write (must be empty unless --force)")
    mk.add_argument("--only", help="comma-separated exercises or file stems to remove (default all; '' none)")
    mk.add_argument("--list", action="store_true", help="print the exercises and exit")
    mk.add_argument("--force", action="store_true", help="overwrite the copy in a non-empty --out")
    mk.add_argument("--src", default=ROOT, help="source checkout to copy (default: this one)")
    gr = sub.add_parser("grade", help="run the autograder on a student edition")
    gr.add_argument("dir")
    gr.add_argument("-k", dest="only", help="comma-separated exercises or file stems to grade (default all)")
    gr.add_argument("-v", "--verbose", action="store_true", help="also print pytest's own output")
    rs = sub.add_parser("restore", help="put reference bodies back into a student edition")
    rs.add_argument("dir")
    rs.add_argument("names", nargs="?", help="comma-separated exercises or file stems")
    rs.add_argument("--all", action="store_true", help="restore every exercise")
    rs.add_argument("--src", default=ROOT, help="checkout with the reference bodies (default: this one)")
    return run_command(ap, lambda a: _run(ap, a), argv)


def _run(ap, a):
    if a.cmd == "list" or (a.cmd == "make" and a.list):
        print(format_list(select(find_exercises(getattr(a, "src", ROOT)), _names(getattr(a, "only", None)))))
    elif a.cmd == "make":
        if not a.out:
            ap.error("make needs --out DIR")
        chosen = make(a.out, _names(a.only), root=a.src, force=a.force)
        print(f"wrote a student edition to {a.out} with {len(chosen)} exercises removed:"
              f" {', '.join(e.name for e in chosen) or '(none)'}\n"
              f"grade it with: python -m minidit.exercises grade {a.out}")
    elif a.cmd == "grade":
        _check_edition(a.dir)
        return grade(a.dir, _names(a.only), verbose=a.verbose).exit_code
    else:
        if not a.names and not a.all:
            ap.error("restore needs exercise names or --all")
        _check_edition(a.dir)
        done = restore(a.dir, None if a.all else _names(a.names), root=a.src)
        print(f"restored {len(done)} reference bodies in {a.dir}: {', '.join(e.name for e in done)}")


def _check_edition(folder):
    """ValueError unless `folder` looks like an edition: a folder with minidit/ and tests/."""
    p = Path(folder)
    if not p.is_dir():
        raise ValueError(f"{folder} is not a folder (give the student edition's folder)")
    if not (p / "minidit").is_dir() or not (p / "tests").is_dir():
        raise ValueError(f"{folder} is not a student edition: it has no minidit/ and tests/ folders")


if __name__ == "__main__":
    sys.exit(main())
