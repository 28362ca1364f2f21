"""Exercises for a course: student and teacher's editions of minidit, and their autograder.

A comment line `# exercise: <paper section>` directly above a `def` marks that function
(minidit.course.markers). `make` copies the package and notebooks from a source checkout and
replaces each marked body by a NotImplementedError naming the section (signature and docstring
stay); it leaves out everything that would give a body away (the fused GPU forms, the
repository's tests, benchmarks/ with its PyTorch DiT, docs/, notebook outputs and answer cells)
and stores the autograder's inputs and outputs as numbers. `make --teacher` writes the teacher's
edition. `grade` grades each exercise alone (minidit.course.autograder); `restore` puts reference
bodies back. The markers are the only list. This module is the command; editing a function's
body is minidit.course.bodies, writing an edition minidit.course.editions.

    python -m minidit.exercises list
    python -m minidit.exercises make --out DIR [--only NAME,...] [--teacher] [--force]
    python -m minidit.exercises grade DIR [-k NAME,...]
    python -m minidit.exercises restore DIR NAME,... | --all
"""
import ast
import os
import subprocess
import sys
from pathlib import Path

from ..cli import CommandParser, run_command
from . import autograder
# the parts, each in its own module; their public names stay importable from here
from .bodies import get_body, replace_body, stub_body  # noqa: F401
from .editions import MANIFEST, check_checkout, format_list, make, week_of  # noqa: F401
from .markers import ROOT, find_exercises, find_function, is_stub, select


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


def grade(edition, names=None, stream=None):
    """Grade the exercises of an edition (default all), each alone; prints the report and returns
    an autograder.GradeReport (exit_code 0 when every chosen exercise passes, else 1).

    The grading imports the edition's own minidit: in this process when that is the package
    running, else in one subprocess with the edition first on the path."""
    stream = sys.stdout if stream is None else stream
    edition = Path(edition).resolve()
    import minidit
    if Path(minidit.__file__).resolve().parent.parent != edition:
        cmd = [sys.executable, "-m", "minidit.exercises", "grade", str(edition)] + \
            (["-k", ",".join(names)] if names else [])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(edition)] + (
            [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])), PYTHONDONTWRITEBYTECODE="1")
        r = subprocess.run(cmd, cwd=edition, env=env, capture_output=True, text=True)
        print(r.stdout, end="", file=stream)
        if r.returncode not in (0, 1):
            raise RuntimeError(f"the autograder could not run in {edition}: "
                               f"{(r.stderr.strip().splitlines() or ['no message'])[-1]}")
        return autograder.GradeReport(_parse_verdicts(r.stdout), r.stdout, r.returncode)
    exercises = find_exercises(edition)
    chosen = select(exercises, names)
    data_file = edition / autograder.RECORD_FILE
    if data_file.exists():
        record = autograder.load_record(data_file)
    elif autograder.stubs_in(edition, exercises):
        raise ValueError(f"{edition} has no {autograder.RECORD_FILE}: generate the edition again with make")
    else:
        record = autograder.record(exercises)  # a source checkout: the reference is here
    verdicts = autograder.grade_all(exercises, {e.name for e in chosen}, record)
    text = autograder.format_report(edition, chosen, verdicts)
    print(text, file=stream)
    return autograder.GradeReport(verdicts, text, 0 if all(v.kind == "pass" for v in verdicts.values()) else 1)


def _parse_verdicts(text):
    """{name: Verdict} from a printed report (the subprocess case): the status column only."""
    out = {}
    rows = text.split("\n\n")[1].splitlines()[2:] if "\n\n" in text else []
    for line in rows:
        parts = line.split("  ")
        name, status = parts[0].strip(), line.rsplit("  ", 1)[-1].strip()
        kind = "pass" if status.startswith("passes") else "todo" if status.startswith("not implemented") else "wrong"
        out[name] = autograder.Verdict(kind, status)
    return out


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
    mk.add_argument("--force", action="store_true",
                    help="replace an edition make wrote in --out (refused if a file there is not "
                         "make's or was changed)")
    mk.add_argument("--teacher", action="store_true",
                    help="write the teacher's edition: reference bodies, the tests, notebooks with answer cells")
    mk.add_argument("--src", default=ROOT, help="source checkout to copy (default: this one)")
    gr = sub.add_parser("grade", help="run the autograder on a student edition")
    gr.add_argument("dir")
    gr.add_argument("-k", dest="only", help="comma-separated exercises or file stems to grade (default all)")
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
        chosen = make(a.out, _names(a.only), root=a.src, force=a.force, teacher=a.teacher)
        if a.teacher:
            print(f"wrote the teacher's edition to {a.out} (reference bodies, tests, answer cells)")
        else:
            print(f"wrote a student edition to {a.out} with {len(chosen)} exercises removed:"
                  f" {', '.join(e.name for e in chosen) or '(none)'}\n"
                  f"grade it with: python -m minidit.exercises grade {a.out}")
    elif a.cmd == "grade":
        _check_edition(a.dir)
        return grade(a.dir, _names(a.only)).exit_code
    else:
        if not a.names and not a.all:
            ap.error("restore needs exercise names or --all")
        _check_edition(a.dir)
        done = restore(a.dir, None if a.all else _names(a.names), root=a.src)
        print(f"restored {len(done)} reference bodies in {a.dir}: {', '.join(e.name for e in done)}")


def _check_edition(folder):
    """ValueError (one line, exit 2) unless `folder` is an edition make wrote or a source checkout."""
    p = Path(folder)
    if not p.is_dir():
        raise ValueError(f"{folder} is not a folder (give the student edition's folder)")
    if (p / MANIFEST).is_file() and (p / "minidit" / "course" / "markers.py").is_file():
        return
    if (p / "minidit" / "course" / "markers.py").is_file() and (p / "pyproject.toml").is_file():
        return  # a source checkout: graded against its own reference bodies
    raise ValueError(f"{folder} is not a student edition (no {MANIFEST} and no minidit/ package): "
                     "give the folder that `python -m minidit.exercises make` wrote")


if __name__ == "__main__":
    sys.exit(main())
